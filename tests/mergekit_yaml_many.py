"""Run the stock `mergekit-yaml` command (its click entry point, as the executable runs it)
on several configs in one interpreter, as mergekit's imports take seconds per process.

Usage: python mergekit_yaml_many.py JOBS RESULTS. JOBS is a JSON list of [config, out,
streamed]; RESULTS gets a JSON object: out -> "ok", the refusal's lines (exit 2 from the
executable) or the exception mergekit raised.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mergekit.scripts.run_yaml import main

from mergekit_layerswap.errors import InputError
from mergekit_layerswap.stream_swap import STREAM_ENV


def run(jobs: list[list], results: Path) -> None:
    found = {}
    for config, out, streamed in jobs:
        os.environ[STREAM_ENV] = "1" if streamed else "0"
        try:
            main.main([config, out, "--no-copy-tokenizer", "--quiet"], standalone_mode=False)
            found[out] = "ok"
        except InputError as error:
            found[out] = "\n".join(error.problems)
        except Exception as error:  # mergekit's own failure: reported for its family
            found[out] = f"{type(error).__name__}: {error}"
    results.write_text(json.dumps(found))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
