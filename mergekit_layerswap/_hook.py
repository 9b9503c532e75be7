"""Imported at interpreter start-up by `mergekit_layerswap.pth`; must stay tiny.

mergekit 0.1.5 has no plugin discovery. This installs an import hook that waits for
mergekit's own modules: right after `mergekit.merge_methods` finishes importing it imports
`mergekit_layerswap.method` (which registers `layer_swap`), and right after `mergekit.config`,
`mergekit.plan` and `mergekit.merge` it applies the matching patch of `patches`. Nothing (not
torch, not mergekit) is imported until a program imports mergekit itself.
"""

import importlib
import sys


def _patch(*names: str):
    def callback(module) -> None:
        patches = importlib.import_module("mergekit_layerswap.patches")
        for name in names:
            getattr(patches, name)(module)

    return callback


def _register(_module) -> None:
    # a no-op when our method module is itself the one importing mergekit: it registers
    # the method on its last line
    importlib.import_module("mergekit_layerswap.method")


_WATCHED = {
    "mergekit.merge_methods": _register,
    "mergekit.config": _patch("guard_config"),
    "mergekit.plan": _patch("guard_planner"),
    "mergekit.merge": _patch("guard_card", "quiet_dtype"),
}


class _AfterImport:
    """A meta path finder that runs a callback once a watched module has executed."""

    def find_spec(self, name, path=None, target=None):
        callback = _WATCHED.get(name)
        if callback is None:
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
            execute(module)
            del _WATCHED[name]
            callback(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Install the hook once, or run the callbacks now for modules already imported."""
    for name in list(_WATCHED):
        if name in sys.modules:
            _WATCHED.pop(name)(sys.modules[name])
    if _WATCHED and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


install()
