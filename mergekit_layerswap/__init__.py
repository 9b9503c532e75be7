"""Layer swapping (Bandarkar et al., ICLR 2025) for mergekit, scored on MGSM.

Importing this package is cheap: torch and mergekit load only when a submodule needs them.
"""

__version__ = "0.1.0"


def versions(*libraries: str) -> dict[str, str]:
    """The installed versions of `libraries` and of this package: what result keys hold, so
    that an upgrade recomputes what it could change."""
    from importlib.metadata import version

    return {name: version(name) for name in libraries} | {"mergekit_layerswap": __version__}
