"""Global settings (verbosity, default device, plotting autoshow)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger("sctraj")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@dataclass
class _Settings:
    """Package-wide defaults.

    Attributes
    ----------
    verbosity
        ``"warning"``, ``"info"`` (default) or ``"debug"``.
    autoshow
        Whether plotting functions call ``plt.show()`` when ``show=None``.
    """

    autoshow: bool = True
    _verbosity: str = "info"

    @property
    def verbosity(self) -> str:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str) -> None:
        levels = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
        if value not in levels:
            raise ValueError(f"verbosity must be one of {sorted(levels)}, got {value!r}.")
        self._verbosity = value
        logger.setLevel(levels[value])


settings = _Settings()
