"""Global settings (verbosity, plotting autoshow and figure directory, output size limits).

By default sctraj follows scanpy: messages are shown according to ``scanpy.settings.verbosity`` (0 = errors only,
1 = warnings, 2 = info, 3 = hints, 4 = debug; scanpy's default is 1), figures are shown according to
``scanpy.settings.autoshow`` and saved into ``scanpy.settings.figdir``. Set ``sctraj.settings.verbosity`` /
``autoshow`` / ``figdir`` to override them for sctraj only; set them back to ``None`` to follow scanpy again.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.INFO - 5, 4: logging.DEBUG}
_NAMES = {"error": 0, "warning": 1, "info": 2, "hint": 3, "debug": 4}


def _scanpy_settings():
    """scanpy's settings object when scanpy is already imported (sctraj never imports it just to read them)."""
    sc = sys.modules.get("scanpy")
    return getattr(sc, "settings", None) if sc is not None else None


def _as_level(value, what: str = "verbosity") -> int:
    """0-4, a name (``"error"`` ... ``"debug"``) or scanpy's ``Verbosity`` enum -> 0-4."""
    if hasattr(value, "value") and not isinstance(value, bool | int | str):  # scanpy.Verbosity enum
        value = value.value
    if isinstance(value, str) and value in _NAMES:
        return _NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4:
        return value
    raise ValueError(f"{what} must be an integer 0-4 or one of {list(_NAMES)}, got {value!r}.")


_MUTED: ContextVar[bool] = ContextVar("sctraj_muted", default=False)


@contextlib.contextmanager
def muted_info():
    """Drop info/debug messages inside the block (fits run internally, e.g. by ``leave_one_out``, whose keys are
    private); warnings still show."""
    token = _MUTED.set(True)
    try:
        yield
    finally:
        _MUTED.reset(token)


class _VerbosityFilter(logging.Filter):
    """Let a record through when the current verbosity (sctraj's or scanpy's) allows its level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _MUTED.get() and record.levelno < logging.WARNING:
            return False
        return record.levelno >= _LEVELS[settings.verbosity]


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which Jupyter and pytest replace after import)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


logger = logging.getLogger("sctraj")
if not logger.handlers:
    _h = _StderrHandler()
    _h.setFormatter(logging.Formatter("%(message)s"))
    _h.addFilter(_VerbosityFilter())
    logger.addHandler(_h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


@dataclass
class _Settings:
    """Package-wide defaults.

    Attributes
    ----------
    verbosity
        0 (errors only: nothing else is printed, no progress bars), 1 (warnings and progress bars), 2 (info: what
        each function wrote), 3 (hints) or 4 (debug), or the names ``"error"`` ... ``"debug"``. ``None`` (default)
        follows ``scanpy.settings.verbosity`` (1 when scanpy is not imported). Reading it gives the level in force.
    autoshow
        Whether plotting functions call ``plt.show()`` when ``show=None``; ``None`` (default) follows
        ``scanpy.settings.autoshow`` (``True`` without scanpy).
    figdir
        Directory of figures saved with ``save=True`` or a file-name suffix; ``None`` (default) follows
        ``scanpy.settings.figdir`` (``"./figures"`` without scanpy).
    trajectory_max_mb
        Largest ``obsm[f"{key_added}_trajectory"]`` that ``fit_flow`` writes by default (MB; float32, or float64 for
        float64 embeddings); above it trajectories are written only when ``trajectory_n_grid`` is passed.
    """

    _verbosity: int | None = None
    _autoshow: bool | None = None
    _figdir: Path | None = None
    trajectory_max_mb: float = 100.0

    @property
    def verbosity(self) -> int:
        if self._verbosity is not None:
            return self._verbosity
        sc = _scanpy_settings()
        if sc is not None:
            try:
                return _as_level(sc.verbosity)
            except (AttributeError, ValueError):
                pass
        return 1

    @verbosity.setter
    def verbosity(self, value) -> None:
        self._verbosity = None if value is None else _as_level(value)

    @property
    def autoshow(self) -> bool:
        if self._autoshow is not None:
            return self._autoshow
        sc = _scanpy_settings()
        return bool(getattr(sc, "autoshow", True)) if sc is not None else True

    @autoshow.setter
    def autoshow(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"autoshow must be True, False or None (follow scanpy), got {value!r}.")
        self._autoshow = value

    @property
    def figdir(self) -> Path:
        if self._figdir is not None:
            return self._figdir
        sc = _scanpy_settings()
        return Path(getattr(sc, "figdir", "figures")) if sc is not None else Path("figures")

    @figdir.setter
    def figdir(self, value) -> None:
        self._figdir = None if value is None else Path(value)

    def show_progress(self, progress: bool) -> bool:
        """Progress bars are drawn when asked for and the verbosity is at least 1 (warnings)."""
        return bool(progress) and self.verbosity >= 1


settings = _Settings()
