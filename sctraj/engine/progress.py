"""One progress display per fit, whatever the number of training phases, suited to where it is shown.

* In a Jupyter notebook with ipywidgets: a widget bar (``tqdm.notebook``), removed when the fit ends.
* In a terminal: a text bar on stderr (``tqdm``), removed when the fit ends.
* Anywhere else (stderr redirected to a log file, a batch job): no carriage-return bar, but at most five plain lines
  (``otcfm: 500/2000 steps (25%), loss 0.0312``), so log files stay readable.

Methods with several training phases (``metricfm``'s paths then field, ...) call the trainer several times; inside
:func:`fit_progress` every call extends the same display (its total grows and its label names the phase) instead of
opening a new bar. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar

_CURRENT: ContextVar[FitProgress | None] = ContextVar("sctraj_fit_progress", default=None)


def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:  # noqa: BLE001 - any failure means "not a kernel"
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def display_kind() -> str:
    """``"widget"``, ``"text"`` or ``"lines"`` for the current process (see the module docstring)."""
    if _in_notebook():
        return "widget" if importlib.util.find_spec("ipywidgets") is not None else "text"
    try:
        return "text" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


class FitProgress:
    """The progress of one fit; ``phase(n, desc)`` adds ``n`` steps labelled ``desc``."""

    def __init__(self, enabled: bool, kind: str | None = None) -> None:
        self.enabled = enabled
        self.kind = (kind or display_kind()) if enabled else "off"
        self.total = 0
        self.done = 0
        self.desc = ""
        self.loss: float | None = None
        self._bar = None
        self._next_line = 0.0
        self._t0 = time.perf_counter()

    def phase(self, n_steps: int, desc: str) -> FitProgress:
        self.total += int(n_steps)
        self.desc = desc
        if self.kind in ("widget", "text"):
            if self._bar is None:
                if self.kind == "widget":
                    from tqdm.notebook import tqdm
                else:
                    from tqdm.std import tqdm
                self._bar = tqdm(total=self.total, desc=desc, leave=False, mininterval=0.5, file=None
                                 if self.kind == "widget" else sys.stderr, dynamic_ncols=True)
            else:
                self._bar.total = self.total
                self._bar.set_description(desc, refresh=False)
                self._bar.refresh()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.kind == "lines" and self.total and self.done >= self._next_line * self.total:
            if self.done == self.total or self._next_line > 0:
                self._line()
            while self._next_line * self.total <= self.done and self._next_line < 1.0:
                self._next_line += 0.25

    def set_loss(self, loss: float) -> None:
        self.loss = loss
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def _line(self) -> None:
        loss = f", loss {self.loss:.4g}" if self.loss is not None else ""
        pct = 100 * self.done / max(self.total, 1)
        sys.stderr.write(f"{self.desc}: {self.done}/{self.total} steps ({pct:.0f}%){loss}, "
                         f"{time.perf_counter() - self._t0:.0f} s\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def fit_progress(enabled: bool) -> Iterator[FitProgress]:
    """One display for every training phase run inside the block."""
    prog = FitProgress(enabled)
    token = _CURRENT.set(prog)
    try:
        yield prog
    finally:
        _CURRENT.reset(token)
        prog.close()


@contextlib.contextmanager
def phase(n_steps: int, desc: str, enabled: bool) -> Iterator[FitProgress]:
    """The display of one training loop: a phase of the enclosing fit's, or its own outside :func:`fit_progress`."""
    cur = _CURRENT.get()
    if cur is not None:
        yield cur.phase(n_steps, desc) if cur.enabled and enabled else FitProgress(False)
        return
    prog = FitProgress(enabled)
    try:
        yield prog.phase(n_steps, desc) if enabled else prog
    finally:
        prog.close()
