"""Imported at interpreter start-up by `mergekit_layerswap.pth`; must stay tiny.

mergekit 0.1.5 has no plugin discovery. This installs an import hook that waits for
mergekit's own modules: right after `mergekit.merge_methods` finishes importing it registers
`layer_swap`, right after `mergekit.plan` it installs the configuration check, and right
after `mergekit.merge` it makes layer_swap merges get our model card. Nothing
(not torch, not mergekit) is imported until a program imports mergekit itself.
"""

import sys


def _on_merge_methods(module) -> None:
    from mergekit_layerswap.method import register

    register()


def _on_plan(module) -> None:
    from mergekit_layerswap.method import guard_planner

    guard_planner(module)


def _on_merge(module) -> None:
    from mergekit_layerswap.method import guard_card

    guard_card(module)


_WATCHED = {
    "mergekit.merge_methods": _on_merge_methods,
    "mergekit.plan": _on_plan,
    "mergekit.merge": _on_merge,
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
