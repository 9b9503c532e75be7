"""The small text files a user hands over (YAML configs, a model's JSON files), read with
bounds: at most MAX_BYTES (so `/dev/zero` is refused, not read until memory runs out) and
at most MAX_DEPTH levels of nesting (no RecursionError); YAML strictly: a key given twice in
one mapping is an error (PyYAML keeps the last one), merge keys (`<<: *defaults`) work as
in PyYAML.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

#: The most bytes a config file may hold: real ones hold kilobytes (an index of a huge
#: model a few megabytes).
MAX_BYTES = 64 << 20
#: The deepest YAML nesting read: a mergekit config or a suite is a few levels deep.
MAX_DEPTH = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: str | Path) -> str:
    """A config file's UTF-8 text, reading at most MAX_BYTES + 1 bytes; ValueError if it
    holds more (UnicodeDecodeError, a ValueError too, if it is not UTF-8), OSError if
    unreadable."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(
            f"holds more than {MAX_BYTES >> 20} MiB, too much for a config file; "
            "check that the path names the config"
        )
    return data.decode("utf-8")


def read_json(path: str | Path) -> Any:
    """A JSON file, bounded as `read_text`; ValueError if too large, not UTF-8, not JSON or
    nested too deep to read."""
    text = read_text(path)
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep to read; re-save the file") from None


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error and nesting
    deeper than MAX_DEPTH is refused. Keys a merge key (`<<`) brings in may be overridden,
    as in PyYAML."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        #: each mapping's own keys, as written: merge keys flatten others into it later
        self.own_keys: dict[yaml.MappingNode, list[yaml.Node]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels; a config is a few levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        self.own_keys[node] = [key for key, _ in node.value if key.tag != _MERGE_TAG]
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node in self.own_keys.get(node, ()):
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # PyYAML itself refuses unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """`text` read by StrictLoader; yaml.YAMLError names what is wrong and where."""
    return yaml.load(text, Loader=StrictLoader)
