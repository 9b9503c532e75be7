"""Imported at interpreter start-up by `mergekit_layerswap.pth`; must stay tiny.

mergekit 0.1.5 has no plugin discovery. This installs an import hook that waits for a
program's first import of a mergekit module to finish, with no mergekit or
mergekit_layerswap module still importing (so none is half-initialised), and then calls
`mergekit_layerswap.plugin.install()` once, which registers `layer_swap` and applies the
patches. Nothing (not torch, not mergekit)
is imported until a program imports mergekit itself, and nothing raises into that import.
"""

import sys
import threading
import warnings

_WATCHED = ("mergekit.", "mergekit_layerswap.")


class _AfterMergekit:
    """A meta path finder that calls `install()` once a top-level mergekit import is done."""

    def __init__(self) -> None:
        self.depth = threading.local()
        self.seen = False  # a mergekit module was imported

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(_WATCHED) or self not in sys.meta_path:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            depth = getattr(self.depth, "value", 0)
            self.depth.value = depth + 1
            try:
                execute(module)
            finally:
                self.depth.value = depth
            self.seen = self.seen or name.startswith("mergekit.")
            if depth == 0 and self.seen:
                # what importlib does once this returns, done first, so that install()
                # finds the module complete and bound to its parent
                module.__spec__._initializing = False
                parent, _, child = name.rpartition(".")
                setattr(sys.modules[parent], child, module)
                self.install()

        spec.loader.exec_module = exec_module
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            return
        sys.meta_path.remove(self)
        try:
            from mergekit_layerswap import plugin

            plugin.install()
        except Exception as error:  # never break an import of mergekit
            warnings.warn(f"mergekit-layerswap: not installed ({error})", stacklevel=2)


if "mergekit.merge" in sys.modules:  # imported late, after mergekit (e.g. `python -S` + site)
    from mergekit_layerswap import plugin

    plugin.install()
elif not any(isinstance(finder, _AfterMergekit) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterMergekit())
