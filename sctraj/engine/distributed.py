"""Data-parallel training with :mod:`torch.distributed` (one process per device, started by ``torchrun``).

Every method trains through :func:`sctraj.engine.trainer.train`, so data parallelism lives here and in a few hooks:

* **same initial weights, different data streams**: ``fit_flow`` seeds the network from the user's seed on every
  rank and broadcasts rank 0's parameters and buffers (:func:`broadcast_module`); the pairs, times, noise, OT blocks,
  populations (Meta FM) and integration minibatches (VGFM's phase 2) come from :func:`data_rng`, which gives rank
  ``r > 0`` the stream ``SeedSequence([seed, r])`` and rank 0 the plain ``seed``, so that one rank reproduces a plain
  ``fit_flow`` call exactly;
* **gradients averaged**: after each backward pass :class:`GradientSync` all-reduces every trainable parameter's
  gradient in one flat bucket (the averaging of :class:`~torch.nn.parallel.DistributedDataParallel`, without its
  overlap of communication and backward, which buys nothing for networks of a few thousand parameters). A
  parameter without a gradient on every rank keeps none (AdamW then skips it, as on one process). The same bucket
  carries one failure flag per rank, so an exception on one rank stops every rank at the same step instead of
  leaving the others waiting in the next collective;
* **losses all-reduced**: the losses buffered between two host syncs are averaged over the ranks, so every rank
  records the same history and a non-finite loss stops every rank at the same step with the same
  ``FloatingPointError``;
* state that a method draws from data once (Metric FM's metric landmarks / centres) is broadcast from rank 0 by the
  method (:func:`broadcast_module`), and per-rank estimates used as constants are averaged (:func:`mean`).

One step of ``R`` ranks with ``batch_size = B`` sees ``R x B`` pairs per interval: the estimator of one process with
batch ``R x B``. The outputs (per-cell velocities, trajectories) and every write into the AnnData happen on rank 0
only; the other ranks return the trained model. Determinism: the same seed and world size give the same result (the
all-reduce sums in a fixed order); a different world size gives a different, equally valid, draw.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """The process group a fit runs in: this process's ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict:
        """Plain-typed description stored in ``uns[key]["params"]["distributed"]``."""
        return {"world_size": self.world_size, "backend": self.backend}


_CURRENT: ContextVar[Context | None] = ContextVar("sctraj_distributed", default=None)


def current() -> Context | None:
    """The context activated by the running ``fit_flow`` call (``None`` outside a data-parallel fit)."""
    return _CURRENT.get()


@contextlib.contextmanager
def activate(ctx: Context | None) -> Iterator[None]:
    """Make ``ctx`` the context seen by :func:`sctraj.engine.trainer.train` (and the methods' hooks) in this block."""
    token = _CURRENT.set(ctx)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group (0 when there is none)."""
    import torch.distributed as dist

    return dist.get_rank() if is_initialized() else 0


def resolve(distributed: bool | None, device: torch.device) -> Context | None:
    """The context of a fit: ``None`` (single process) or the default process group.

    ``distributed=None`` uses the process group when one is initialised; ``True`` requires one and initialises it
    from ``torchrun``'s environment when needed (backend ``nccl`` for CUDA devices, ``gloo`` otherwise); ``False``
    trains in this process alone even inside a process group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None (automatic), got {distributed!r}.")
    if distributed is False:
        return None
    if not is_initialized():
        if distributed is None:
            return None
        init_from_env(device)
    import torch.distributed as dist

    r = dist.get_rank()
    return Context(rank=r, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", r)),
                   backend=str(dist.get_backend()))


def init_from_env(device: torch.device) -> None:
    """Initialise the default process group from the variables ``torchrun`` sets (destroyed at exit)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("distributed=True but this torch build has no torch.distributed support.")
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed=True needs a torch.distributed process group, but {missing} are not set. Start the script "
            "with torchrun, e.g. `torchrun --standalone --nproc-per-node=2 examples/train_ddp.py ...`, or call "
            "torch.distributed.init_process_group(...) before fit_flow."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    atexit.register(_destroy)


def _destroy() -> None:  # pragma: no cover - runs at interpreter exit
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(ctx: Context | None, device: torch.device) -> torch.device:
    """One GPU per rank: ``cuda`` without an index becomes ``cuda:<local rank>`` (and the current device)."""
    if ctx is None or device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", ctx.local_rank % max(torch.cuda.device_count(), 1))
    torch.cuda.set_device(device)
    return device


def data_rng(seed: int, ctx: Context | None) -> np.random.Generator:
    """The generator of a rank's pairs, times, noise and OT blocks: ``seed`` on rank 0, ``(seed, rank)`` elsewhere."""
    if ctx is None or ctx.rank == 0:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(ctx.rank)]))


def _parallel(ctx: Context | None) -> bool:
    return ctx is not None and ctx.world_size > 1


def broadcast_module(module: torch.nn.Module, ctx: Context | None = None) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op outside a multi-rank fit)."""
    ctx = current() if ctx is None else ctx
    if not _parallel(ctx):
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def mean(x: torch.Tensor) -> torch.Tensor:
    """Average of ``x`` over the ranks of the current fit (``x`` itself outside a multi-rank fit)."""
    ctx = current()
    if not _parallel(ctx):
        return x
    import torch.distributed as dist

    y = x.detach().clone()
    dist.all_reduce(y)
    return y / ctx.world_size


class RankFailedError(RuntimeError):
    """Another rank raised during a training step; this rank stops at the same step."""


class GradientSync:
    """Average gradients (and flag failures) over the ranks after each backward pass; average logged losses."""

    def __init__(self, params: Sequence[torch.nn.Parameter], ctx: Context, desc: str) -> None:
        self.params = list(params)
        self.ctx = ctx
        self.desc = desc
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)

    def step(self, step: int, error: BaseException | None) -> None:
        """All-reduce this step's gradients; raise on every rank if any rank failed."""
        import torch.distributed as dist

        R, P = self.ctx.world_size, len(self.params)
        flat = torch.zeros(R + P + self.n, device=self.device, dtype=torch.float32)
        if error is not None:
            flat[self.ctx.rank] = 1.0
        else:
            pos = R + P
            for i, (p, n) in enumerate(zip(self.params, self.sizes, strict=True)):
                if p.grad is not None:
                    flat[R + i] = 1.0
                    flat[pos : pos + n] = p.grad.reshape(-1)
                pos += n
        dist.all_reduce(flat)
        if error is not None:
            raise error
        head = flat[: R + P].tolist()  # one host sync per step: every rank must know now whether to stop
        failed = [r for r in range(R) if head[r] > 0]
        if failed:
            raise RankFailedError(
                f"{self.desc}: rank(s) {failed} failed at step {step} (see their error); rank {self.ctx.rank} stops "
                "at the same step."
            )
        flat /= R
        pos = R + P
        for i, (p, n) in enumerate(zip(self.params, self.sizes, strict=True)):
            if head[R + i] > 0:
                g = flat[pos : pos + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            else:
                p.grad = None
            pos += n

    def mean_losses(self, values: torch.Tensor) -> torch.Tensor:
        """Average a (steps x quantities) tensor of logged losses over the ranks."""
        import torch.distributed as dist

        v = values.to(self.device, torch.float32).contiguous()
        dist.all_reduce(v)
        return v / self.ctx.world_size


def gradient_sync(params: Sequence[torch.nn.Parameter], desc: str) -> GradientSync | None:
    """The trainer's hook: a :class:`GradientSync` inside a multi-rank fit, ``None`` otherwise."""
    ctx = current()
    if not _parallel(ctx):
        return None
    return GradientSync(params, ctx, desc)
