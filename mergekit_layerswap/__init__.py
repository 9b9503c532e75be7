"""Layer swapping (Bandarkar et al., ICLR 2025) for mergekit, scored on MGSM.

Importing this package is cheap: torch and mergekit load only when a submodule needs them.
"""

__version__ = "0.1.0"
