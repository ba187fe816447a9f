"""sctraj: flow-matching trajectory and growth inference for single-cell time courses.

``import sctraj`` is cheap: torch, POT and torchdiffeq are imported only when a model is fitted or loaded.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sctraj")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

from . import datasets, pl, pp, tl
from ._settings import settings

__all__ = ["datasets", "pl", "pp", "tl", "settings", "__version__"]


def __getattr__(name: str):
    """``sctraj.models`` on first use (it imports torch, which ``import sctraj`` does not)."""
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
