"""Method registry and networks (imports torch; ``import sctraj`` does not import this package)."""

from . import (
    cfm,  # noqa: F401  (registers icfm, otcfm, sbcfm)
    metafm,  # noqa: F401  (registers metafm)
    metricfm,  # noqa: F401  (registers metricfm)
    vgfm,  # noqa: F401  (registers vgfm)
)
from ._base import BaseMethod, FitData, MethodConfig
from ._model import TrajectoryModel, resolve_device
from ._registry import available_methods, describe, get_method, register_method

__all__ = [
    "BaseMethod",
    "FitData",
    "MethodConfig",
    "TrajectoryModel",
    "available_methods",
    "describe",
    "get_method",
    "register_method",
    "resolve_device",
]
