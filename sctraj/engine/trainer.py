"""One training loop for every method: AdamW, one progress display per fit, NaN detection, loss history.

The loop is built for small networks trained for many cheap steps, where Python and synchronisation overhead, not
arithmetic, set the speed:

* losses stay on the device and are copied to the history every ``sync_every`` steps (one host transfer instead of
  one per step; on a GPU a per-step ``float(loss)`` would stall the queue);
* AdamW uses the fused kernel where torch provides it (one kernel for all parameters instead of one per tensor);
* on CPU, training runs with ``num_threads`` intra-op threads (``1`` for the methods' MLPs): a width-64 network on a
  few hundred cells gains nothing from threading, and on a shared or oversubscribed CPU the extra threads spin-wait
  and slow every step by 10x or more (``benchmarks/results/threads.md``). Torch's setting is restored afterwards.

Inside a data-parallel ``fit_flow`` (several ranks, :mod:`sctraj.engine.distributed`) each step's gradients are
averaged over the ranks before the optimiser step, the logged losses are averaged at each sync, and an exception on
one rank stops every rank at the same step.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

LossFn = Callable[[int], dict[str, torch.Tensor]]
LR_SCHEDULES = ("constant", "cosine")

# torch's global RNG and its intra-op thread count are process-wide. Fits running in threads (joblib
# prefer="threads", a web server) share them, so every sctraj use of either goes through the lock / the counter below.
GLOBAL_TORCH_LOCK = threading.RLock()


class SharedSetting:
    """A process-wide setting (torch's intra-op thread count) used by several threads at once, safely.

    ``with setting(n):`` runs the block with the setting at ``n`` (``None``: unchanged). Blocks running at the same
    time in several threads share one value: a block asking for another value than the one in force waits until the
    other threads' blocks are done; a nested block (its thread already holds one) never waits: it applies its value
    when its thread is alone, else runs with the value in force. The value before the first block is restored when
    the last one ends, so concurrent fits run with the setting they asked for and the caller's setting is never left
    changed (a plain save / set / restore in each thread can restore another thread's value, or change it mid-fit).
    """

    def __init__(self, name: str, apply: Callable[[int], Callable[[], None]]):
        self.name, self._apply = name, apply  # apply(n) sets n and returns the function that undoes it
        self._cv = threading.Condition()
        self._n: int | None = None
        self._holders: dict[int, int] = {}
        self._undo: Callable[[], None] | None = None

    @contextlib.contextmanager
    def __call__(self, n: int | None) -> Iterator[None]:
        if n is None:
            yield
            return
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"{self.name} must be a positive integer or None, got {n!r}.")
        n = int(n)
        me = threading.get_ident()
        undo_inner, prev = None, None
        with self._cv:
            nested = me in self._holders
            while not nested and self._n != n and self._holders:  # only outermost blocks wait: a holder never does
                self._cv.wait()
            if not self._holders:
                self._undo, self._n = self._apply(n), n
            elif self._n != n and not any(t != me for t in self._holders):
                prev, undo_inner = self._n, self._apply(n)
                self._n = n
            self._holders[me] = self._holders.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cv:
                self._holders[me] -= 1
                if not self._holders[me]:
                    del self._holders[me]
                if not self._holders:
                    self._undo()
                    self._n, self._undo = None, None
                    self._cv.notify_all()
                elif undo_inner is not None:  # a nested block of this thread: back to the outer value
                    undo_inner()
                    self._n = prev
                    self._cv.notify_all()


def _set_torch_threads(n: int) -> Callable[[], None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return lambda: torch.set_num_threads(old)



#: ``with cpu_threads(n):`` torch intra-op threads for the block (thread-safe, see :class:`SharedSetting`)
cpu_threads = SharedSetting("num_threads", _set_torch_threads)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused when every parameter is a floating tensor on a device with a fused kernel."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) and len(params) > 0
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class KeepBest:
    """Early stopping on a held-out loss, for :func:`train`'s ``stop``: the best state of ``module`` is kept.

    Every ``every`` steps ``evaluate()`` (a float) is appended to ``history[key]``. A loss below ``(1 - rel_tol)``
    times the best so far keeps a copy of ``module``'s state (and the step count, ``self.step``); after ``patience``
    evaluations in a row without one, ``__call__`` returns ``True`` and training stops (``patience=None``: never).
    ``restore()`` loads the kept state back into ``module`` and says whether there was one.
    """

    def __init__(self, module: torch.nn.Module, evaluate: Callable[[], float], *, every: int,
                 patience: int | None, history: dict[str, list[float]], key: str, rel_tol: float = 0.0) -> None:
        self.module, self.evaluate, self.every, self.patience = module, evaluate, int(every), patience
        self.history, self.key, self.rel_tol = history, key, rel_tol
        self.loss, self.state, self.bad, self.step = float("inf"), None, 0, -1

    def __call__(self, step: int) -> bool:
        if (step + 1) % self.every:
            return False
        lv = float(self.evaluate())
        self.history.setdefault(self.key, []).append(lv)
        if self.state is None or lv < self.loss * (1 - self.rel_tol):
            self.loss, self.bad, self.step = lv, 0, step + 1
            self.state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            return False
        self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def restore(self) -> bool:
        if self.state is None:
            return False
        self.module.load_state_dict(self.state)
        return True


def train(
    params: Iterable[torch.nn.Parameter],
    loss_fn: LossFn,
    n_steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    progress: bool = True,
    desc: str = "training",
    grad_clip: float | None = None,
    history: dict[str, list[float]] | None = None,
    prefix: str = "",
    sync_every: int = 50,
    num_threads: int | None = None,
    lr_schedule: str = "constant",
    stop: Callable[[int], bool] | None = None,
) -> dict[str, list[float]]:
    """Minimise ``loss_fn(step)["loss"]`` for ``n_steps`` AdamW steps.

    ``loss_fn`` returns a dict of scalar tensors; ``"loss"`` is minimised and every entry is logged (per step) in
    the returned history under ``prefix + name``. A non-finite loss stops training with a ``FloatingPointError``
    naming the first bad step (detected at most ``sync_every`` steps late). ``num_threads`` sets torch's CPU threads
    for the duration of training (``None`` keeps the current setting). ``lr_schedule="cosine"`` decays the learning
    rate along a half cosine from ``lr`` to ``lr / 100`` over the ``n_steps`` steps. ``stop(step)``, if given, is
    called after every optimiser step; training ends early when it returns ``True`` (e.g. early stopping on a
    held-out loss).
    """
    from . import distributed
    from .progress import phase

    params = [p for p in params if p.requires_grad]
    sync = distributed.gradient_sync(params, desc)  # None unless fit_flow runs data-parallel on several ranks
    if sync is not None:
        progress = progress and sync.ctx.is_main
    opt = make_optimizer(params, lr, weight_decay)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
    sched = None
    if lr_schedule == "cosine":
        n_decay = max(n_steps, 1)

        def factor(step: int) -> float:  # step = number of optimiser steps taken so far
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(step, n_decay) / n_decay))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history = {} if history is None else history
    sync_every = max(int(sync_every), 1)
    pending: list[dict[str, torch.Tensor]] = []
    last = {"loss": float("nan")}

    def flush(step: int) -> None:
        if not pending:
            return
        keys = list(pending[0])
        if sync is None:
            cols = {k: torch.stack([o[k].reshape(()) for o in pending]).float().cpu().tolist() for k in keys}
        else:  # the mean over the ranks: every rank logs the same values and stops on the same step
            vals = torch.stack([torch.stack([o[k].reshape(()).to(sync.device, torch.float32) for k in keys])
                                for o in pending])
            vals = sync.mean_losses(vals).cpu()
            cols = {k: vals[:, j].tolist() for j, k in enumerate(keys)}
        first = step - len(pending) + 1
        for i, v in enumerate(cols["loss"]):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"{desc}: the loss became {v} at step {first + i}"
                    + (f" (mean over {sync.ctx.world_size} ranks)" if sync is not None else "")
                    + f". Lower the learning rate (lr=..., now {lr}) "
                    "or check the scale of the embedding (very large values? try sctraj.pp.scale_embedding)."
                )
        for k in keys:
            history.setdefault(prefix + k, []).extend(cols[k])
        last["loss"] = cols["loss"][-1]
        pending.clear()

    with cpu_threads(num_threads), phase(n_steps, desc, progress) as bar:
        for step in range(n_steps):
            if sync is None:
                out = loss_fn(step)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
            else:
                error = None
                try:
                    out = loss_fn(step)
                    opt.zero_grad(set_to_none=True)
                    out["loss"].backward()
                except Exception as e:  # noqa: BLE001 - re-raised by sync.step after telling the other ranks
                    error = e
                sync.step(step, error)  # gradients averaged over the ranks; raises on every rank if one failed
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            pending.append({k: v.detach() for k, v in out.items()})
            halt = stop is not None and bool(stop(step))
            if len(pending) >= sync_every or step == n_steps - 1 or halt:
                flush(step)
                bar.set_loss(last["loss"])
            bar.update(1)
            if halt:
                break
    return history
