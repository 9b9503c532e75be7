"""Imported at interpreter start-up by `mergekit_layerswap.pth`; must stay tiny.

mergekit 0.1.5 has no plugin discovery. This installs an import hook that waits for
mergekit's own modules: right after `mergekit.merge_methods` finishes importing it registers
`layer_swap`, right after `mergekit.config` and `mergekit.plan` it installs the
configuration checks (where mergekit parses a config, and where it plans one), and right
after `mergekit.merge` it makes layer_swap merges get our model card. Nothing
(not torch, not mergekit) is imported until a program imports mergekit itself.
"""

import sys

_METHOD = "mergekit_layerswap.method"
#: Callbacks that fired while our method module was still importing (it imports mergekit).
_DEFERRED: list = []


def _call(attribute: str, module) -> None:
    method = sys.modules[_METHOD]
    if attribute == "register":
        method.register()
    else:
        getattr(method, attribute)(module)


def _later(attribute: str):
    """A callback running `mergekit_layerswap.method.<attribute>`, or deferring it to the
    end of that module's own import when it is the one importing mergekit."""

    def callback(module) -> None:
        owner = sys.modules.get(_METHOD)
        if owner is not None and getattr(owner.__spec__, "_initializing", False):
            _DEFERRED.append((attribute, module))
            return
        import mergekit_layerswap.method  # noqa: F401

        _call(attribute, module)

    return callback


def run_deferred() -> None:
    """Run the callbacks deferred while mergekit_layerswap.method imported (its last line)."""
    while _DEFERRED:
        _call(*_DEFERRED.pop(0))


_WATCHED = {
    "mergekit.merge_methods": _later("register"),
    "mergekit.config": _later("guard_config"),
    "mergekit.plan": _later("guard_planner"),
    "mergekit.merge": _later("guard_card"),
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
