"""Couplings between two snapshots: independent, exact OT and entropic OT (via POT), and pair sampling.

When both snapshots have at most ``full_size`` cells (``block_size`` by default) the plan is the exact full-data
plan, solved once. Otherwise plans are solved on random *blocks* of ``block_size`` cells per side and a new pair of
blocks is drawn every ``refresh`` training steps: minibatch OT (Fatras et al. 2020; Tong et al. 2023) with a larger
minibatch, solved less often. Memory stays bounded by ``max(block_size, full_size)**2`` floats whatever the number
of cells; nothing builds a plan over all cells of a large snapshot. The next plan is prepared in a background thread
while the network trains (POT's network simplex releases the GIL). A plan is kept only as its non-zero entries and
their cumulative mass, so drawing pairs costs ``O(n log nnz)`` per refill, not a pass over the plan.

Plans are solved with one BLAS thread (:func:`single_blas_thread`): the background solve runs beside the training
thread, and a multi-threaded BLAS inside Sinkhorn's matrix-vector products spin-waits for cores that are already busy.
On a 2-core machine under load a 2048 x 2048 semi-relaxed Sinkhorn plan took 0.13 CPU s with one BLAS thread against
0.4-0.7 CPU s with two (``benchmarks/results/speed.md``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import ot

PlanFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


_BLAS_LOCK = threading.Lock()
_blas_state: dict = {"users": 0, "limits": None}


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread (threadpoolctl), restoring the previous setting when the last user leaves.

    The BLAS thread count is process-wide, so concurrent users (one background solver per interval) share one
    reference-counted limit: the first entry sets it, the last exit restores what was there before.
    """
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        if _blas_state["users"] == 0:
            _blas_state["limits"] = threadpool_limits(1, user_api="blas")
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["limits"].restore_original_limits()
                _blas_state["limits"] = None


def sq_cost(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Squared Euclidean cost matrix (float64)."""
    return ot.dist(np.asarray(x0, np.float64), np.asarray(x1, np.float64), metric="sqeuclidean")


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def take_chunk(samplers, offset, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Pairs for ``n`` training steps of ``batch_size`` per interval, drawn from each interval's sampler in turn.

    Returns global row indices into the concatenated snapshots (``offset[k]`` is the first row of snapshot ``k``) as
    ``(n, n_intervals * batch_size)`` arrays ``i0, i1`` (interval-major within a step), and each interval's drawn
    pairs (to read e.g. their ``row_mass``). One draw per interval per chunk of steps: the CFM family and VGFM fill
    their step buffers with it.
    """
    n_int, B = len(samplers), batch_size
    i0 = np.empty((n, n_int * B), np.int64)
    i1 = np.empty((n, n_int * B), np.int64)
    pairs = []
    for k, smp in enumerate(samplers):
        p = smp.take(n * B)
        i0[:, k * B : (k + 1) * B] = (p.i0 + offset[k]).reshape(n, B)
        i1[:, k * B : (k + 1) * B] = (p.i1 + offset[k + 1]).reshape(n, B)
        pairs.append(p)
    return i0, i1, pairs


def exact_plan(x0: np.ndarray, x1: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
    """Exact OT plan for the squared Euclidean cost (network simplex, :func:`ot.emd`)."""
    a = uniform(len(x0)) if a is None else a / a.sum()
    b = uniform(len(x1)) if b is None else b / b.sum()
    return ot.emd(a, b, sq_cost(x0, x1), numItermax=10_000_000)


def _marginal_error(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance of the plan's marginals from ``a`` and ``b`` (both sum to 1); ``inf`` for a non-finite plan."""
    if not np.isfinite(plan).all():
        return float("inf")
    return float(np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum())


def _sparse_sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float, *, tol: float, n_iter: int,
                     check_every: int, trunc: float, max_fill: float) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Sinkhorn's iterations on the kernel ``exp(-cost / reg)`` truncated to its entries above ``exp(-trunc)``, as a
    sparse matrix (Schmitzer 2019, section 3); ``cost`` holds absorbed potentials, so the kernel is at most about 1.
    Returns the scalings ``u, v`` and the iterations done, or ``None`` when the kernel is not sparse enough (more than
    ``max_fill`` of its entries kept) or a row or column would be empty. POT has no truncated-kernel solver."""
    import scipy.sparse as sp

    rows, cols = np.nonzero(cost < trunc * reg)
    if len(rows) > max_fill * cost.size or len(np.unique(rows)) < len(a) or len(np.unique(cols)) < len(b):
        return None
    K = sp.csr_matrix((np.exp(-cost[rows, cols] / reg), (rows, cols)), shape=cost.shape)
    KT = K.T.tocsr()
    u, v = np.ones(len(a)), np.ones(len(b))
    done = 0
    with np.errstate(all="ignore"):
        while done < n_iter:
            for _ in range(min(check_every, n_iter - done)):
                v = b / (KT @ u)
                u = a / (K @ v)
            done += min(check_every, n_iter - done)
            if not (np.isfinite(u).all() and np.isfinite(v).all() and (u > 0).all() and (v > 0).all()):
                return None
            if np.abs(v * (KT @ u) - b).sum() <= tol:  # rows are exact after the u update
                break
    return u, v, done


def entropic_plan(
    x0: np.ndarray,
    x1: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    *,
    reg: float = 0.02,
    tol: float = 1e-4,
    n_iter: int = 5000,
    scaling: float = 2.0,
    stage_iter: int = 100,
    check_every: int = 250,
    trunc: float = 50.0,
    max_fill: float = 0.1,
) -> np.ndarray:
    """Entropic OT plan for the squared Euclidean cost, by epsilon scaling over POT's Sinkhorn (:func:`ot.sinkhorn`).

    The cost is first reduced by its row and then its column minima (with both marginals fixed the plan is unchanged:
    the objective changes by a constant). Plain Sinkhorn at a small ``reg`` (e.g. 0.02 on standardised EB PCs, where
    costs reach 40-200) needs thousands of iterations from a cold start and its kernel ``exp(-C / reg)`` underflows;
    so the plan is solved at ``reg * scaling**k`` for ``k = K, ..., 0`` (``reg * scaling**K`` about the largest
    cost, where the kernel is nowhere small), each stage starting from the previous one's dual potentials, absorbed
    into the cost: stage ``k`` runs POT's plain Sinkhorn on ``C - f - g``, whose kernel is at most 1 (the previous
    plan's entries) and not tiny on the previous plan's support, so it neither overflows nor underflows and runs in
    single precision (double where a column's kernel could underflow in single). The intermediate stages run
    ``stage_iter`` iterations; the last one runs until the plan's marginals are within ``tol`` in L1 (the sum over
    cells of ``|plan.sum(1) - a| + |plan.sum(0) - b|``, i.e. twice the total variation between the pair law's
    marginals and ``a``, ``b``), checked every ``check_every`` iterations, or ``n_iter`` iterations. When at most
    ``max_fill`` of the last stage's absorbed kernel exceeds ``exp(-trunc)`` (small ``reg`` in several dimensions:
    0.5% of the entries on EB 50-d at reg 0.02), that stage iterates on the truncated kernel as a sparse matrix
    (Schmitzer 2019, section 3; POT has no such solver), and the plan, rebuilt densely from its potentials, must still
    meet ``tol`` (else the dense iterations continue); ``trunc=0`` turns this off.

    This is the epsilon scaling with log-absorption of Schmitzer (2019; Stabilized sparse scaling algorithms for entropy
    regularized transport problems, SIAM J. Sci. Comput. 41(3), A1443-A1481, arXiv:1610.06519), as in POT's
    ``sinkhorn_epsilon_scaling`` (part of sctraj's solver chain before), with a geometric schedule from the cost scale
    and a stop on the marginal error instead of POT's fixed minimum of 35 x 100 iterations. Deviation from the exact
    plan: the solver tolerance ``tol`` only (the returned plan is exactly of the Gibbs form
    ``exp((f_i + g_j - C_ij) / reg)``, computed in double precision from the potentials). Measured on the bundled data
    at reg 0.02 (one CPU thread; ``benchmarks/bench_sbcfm.py --part plans``, ``benchmarks/results/speed_sbcfm.md``):
    see the table there for the CPU seconds per plan against POT's epsilon scaling (4-10x less on EB) and the plans' L1
    distance to plans solved to ``tol = 1e-8`` (3e-4 to 1.4e-3; POT's epsilon scaling: 3e-5 to 2e-3).
    """
    a = uniform(len(x0)) if a is None else np.asarray(a, np.float64) / np.sum(a)
    b = uniform(len(x1)) if b is None else np.asarray(b, np.float64) / np.sum(b)
    M = sq_cost(x0, x1)
    M -= M.min(1, keepdims=True)
    M -= M.min(0, keepdims=True)
    regs = [float(reg)]
    while regs[-1] * scaling < M.max():
        regs.append(regs[-1] * scaling)
    thr = tol / np.sqrt(len(b))  # POT stops on the L2 norm of the column error; L1 <= sqrt(n) L2
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for k, r in enumerate(regs[::-1]):
        last = k == len(regs) - 1
        done = 0
        if last and trunc > 0:
            # the last stage on the truncated kernel when it is sparse (at reg 0.02 on EB 50-d, 0.5% of the entries):
            # the dense plan from its potentials is checked below, and the dense iterations continue if it misses tol
            Mk = M - f[:, None] - g[None, :]
            out = _sparse_sinkhorn(a, b, Mk, r, tol=tol, n_iter=n_iter, check_every=check_every, trunc=trunc,
                                   max_fill=max_fill)
            if out is not None:
                f += r * np.log(out[0])
                g += r * np.log(out[1])
                plan = np.exp(-(M - f[:, None] - g[None, :]) / r)
                if _marginal_error(plan, a, b) <= tol:
                    return plan
                done = out[2]
        while done < (n_iter if last else stage_iter):
            Mk = M - f[:, None] - g[None, :]
            # every column of exp(-Mk / r) has an entry >= exp(-max_j min_i Mk / r) (rows likewise): single precision
            # keeps it above its smallest normal number (~exp(-87)) when that exponent is above -60
            worst = max(Mk.min(1).max(), Mk.min(0).max()) / r
            dt = np.float32 if worst < 60 and tol >= 1e-6 else np.float64
            steps = min(check_every, n_iter - done) if last else stage_iter
            plan, log = ot.sinkhorn(a.astype(dt), b.astype(dt), Mk.astype(dt), r, method="sinkhorn", numItermax=steps,
                                    stopThr=thr, warn=False, log=True)
            u, v = np.asarray(log["u"], np.float64), np.asarray(log["v"], np.float64)
            if not (np.isfinite(u).all() and np.isfinite(v).all() and (u > 0).all() and (v > 0).all()):
                # out of floating-point range (not seen on real data): the log-domain solver from this stage's start
                return np.asarray(ot.sinkhorn(a, b, M - f[:, None] - g[None, :], reg, method="sinkhorn_log",
                                              numItermax=n_iter, stopThr=thr, warn=False), np.float64)
            f += r * np.log(u)
            g += r * np.log(v)
            done += steps
            if last and _marginal_error(np.asarray(plan, np.float64), a, b) <= tol:
                break
    # the plan in double precision from the absorbed potentials (marginals within ~1e-7 of single precision's)
    return np.exp(-(M - f[:, None] - g[None, :]) / reg)


@dataclass
class Pairs:
    """Index pairs into the two snapshots, with the relative row mass of each source cell under the plan.

    ``row_mass`` is the plan's row sum of each source cell relative to its share ``a_i / sum(a)`` of the source marginal
    (1 for balanced plans); with ``PairSampler(..., row_mass="cell")`` it is relative to one cell's uniform share
    ``1 / n`` of the block instead (``n * plan.sum(1)[i0]``): how many "cells worth" of mass the source cell sends, the
    quantity growth-aware methods regress on when ``a`` is a prior rather than a sampling weight.
    """

    i0: np.ndarray
    i1: np.ndarray
    row_mass: np.ndarray


class PlanTable:
    """The non-zero entries of a plan and their cumulative mass, for repeated pair draws."""

    def __init__(self, plan: np.ndarray) -> None:
        flat = np.asarray(plan, np.float64).ravel()
        self.nz = np.flatnonzero(flat > 0)
        if len(self.nz) == 0:
            raise ValueError("The coupling plan has no positive entry (numerical failure of the OT solver).")
        cdf = np.cumsum(flat[self.nz])
        self.cdf = cdf / cdf[-1]
        self.n_cols = plan.shape[1]
        self.rows = np.asarray(plan).sum(1)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # inverse-CDF draw, the same law as rng.choice(len(nz), p=...) without re-normalising every call
        k = np.searchsorted(self.cdf, rng.random(n), side="right")
        np.minimum(k, len(self.nz) - 1, out=k)
        return np.divmod(self.nz[k], self.n_cols)


def sample_pairs(plan: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` index pairs ``(i, j)`` with probability proportional to ``plan[i, j]``."""
    return PlanTable(plan).sample(n, rng)


class PairSampler:
    """Serve ``batch_size`` coupled pairs per step from block plans, refreshed every ``refresh`` steps.

    Parameters
    ----------
    x0, x1
        Source and target cells (arrays; only indices are returned).
    plan_fn
        ``plan_fn(x0_block, x1_block, a_block, b_block) -> plan``; ``None`` for the independent coupling.
    batch_size
        Pairs per call of :meth:`next`.
    block_size
        Maximum cells per side of one block plan.
    full_size
        Snapshots with at most this many cells per side get one full-data plan, solved once (``block_size`` when
        ``None``).
    refresh
        Steps served by one plan when the snapshots do not fit in one block.
    rng
        NumPy generator; the sampler is deterministic given its state (the background thread handles one
        request at a time, in order).
    a, b
        Optional per-cell source / target weights (e.g. prior growth).
    background
        Prepare the next plan in a worker thread.
    row_mass
        Unit of :attr:`Pairs.row_mass`: ``"share"`` (relative to the cell's share of ``a``) or ``"cell"`` (relative to a
        uniform ``1 / n`` share of the source block, so plans whose rows do not sum to ``a`` report growth).
    n_pairs
        Total number of pairs the caller will draw, if known (e.g. ``n_steps * batch_size``). The background thread
        then stops preparing plans once enough pairs are prepared, instead of solving one more plan that is never used
        (with ``None`` it always keeps the next plan ready). Drawing more pairs still works: a plan is then solved on
        demand.
    """

    def __init__(
        self,
        x0: np.ndarray,
        x1: np.ndarray,
        plan_fn: PlanFn | None,
        *,
        batch_size: int,
        block_size: int = 1024,
        refresh: int = 50,
        rng: np.random.Generator,
        a: np.ndarray | None = None,
        b: np.ndarray | None = None,
        background: bool = True,
        row_mass: str = "share",
        full_size: int | None = None,
        n_pairs: int | None = None,
    ) -> None:
        if row_mass not in ("share", "cell"):
            raise ValueError(f"row_mass must be 'share' or 'cell', got {row_mass!r}.")
        self.row_mass_unit = row_mass
        self.x0, self.x1 = x0, x1
        self.n0, self.n1 = len(x0), len(x1)
        self.a = np.ones(self.n0) if a is None else np.asarray(a, np.float64)
        self.b = np.ones(self.n1) if b is None else np.asarray(b, np.float64)
        self.plan_fn = plan_fn
        self.batch_size = batch_size
        self.block_size = block_size
        self.rng = rng
        full = block_size if full_size is None else full_size
        self.single_block = self.n0 <= full and self.n1 <= full
        # a full-data plan is fixed: draw enough pairs for many steps at once
        self.refresh = max(int(refresh), 1) if not self.single_block else 200
        self._cache: Pairs | None = None
        self._pos = 0
        self._plan_full: PlanTable | None = None
        self.n_pairs = None if n_pairs is None else int(n_pairs)
        self._prepared = 0  # pairs in the caches made or requested so far
        self._pool = ThreadPoolExecutor(1) if (background and plan_fn is not None) else None
        self._future: Future | None = None
        if self._pool is not None:
            self._submit()

    # -- internals -------------------------------------------------------------------------------------------
    def _block(self, n: int, size: int) -> np.ndarray:
        if n <= size:
            return np.arange(n)
        return np.sort(self.rng.choice(n, size=size, replace=False))

    def _make(self) -> Pairs:
        n = self.batch_size * self.refresh
        if self.plan_fn is None:
            i0 = self.rng.integers(self.n0, size=n)
            i1 = self.rng.integers(self.n1, size=n)
            return Pairs(i0, i1, np.ones(n))
        if self.single_block:
            if self._plan_full is None:
                with single_blas_thread():
                    self._plan_full = PlanTable(self.plan_fn(self.x0, self.x1, self.a, self.b))
            table, b0, b1 = self._plan_full, None, None
            a_blk = self.a
        else:
            b0, b1 = self._block(self.n0, self.block_size), self._block(self.n1, self.block_size)
            with single_blas_thread():
                table = PlanTable(self.plan_fn(self.x0[b0], self.x1[b1], self.a[b0], self.b[b1]))
            a_blk = self.a[b0]
        r, c = table.sample(n, self.rng)
        # mass sent by each source cell relative to its share a_i / sum(a) of the source marginal ("share") or to a
        # uniform 1 / n share of the block ("cell")
        share = a_blk[r] / a_blk.sum() if self.row_mass_unit == "share" else np.full(n, 1.0 / len(a_blk))
        row_mass = table.rows[r] / np.maximum(share, 1e-300)
        return Pairs(r if b0 is None else b0[r], c if b1 is None else b1[c], row_mass)

    def _submit(self) -> None:
        assert self._pool is not None
        if self.n_pairs is not None and self._prepared >= self.n_pairs:
            self._future = None  # every pair the caller asked for is prepared: no plan that would go unused
            return
        self._prepared += self.batch_size * self.refresh
        self._future = self._pool.submit(self._make)

    def _refill(self) -> None:
        if self._pool is not None:
            if self._future is None:  # drawing past n_pairs: solve on demand
                self._prepared += self.batch_size * self.refresh
                self._future = self._pool.submit(self._make)
            self._cache = self._future.result()
            self._submit()
        else:
            self._cache = self._make()
        self._pos = 0

    # -- public ----------------------------------------------------------------------------------------------
    def next(self) -> Pairs:
        """The next ``batch_size`` pairs."""
        if self._cache is None or self._pos + self.batch_size > len(self._cache.i0):
            self._refill()
        assert self._cache is not None
        s = slice(self._pos, self._pos + self.batch_size)
        self._pos += self.batch_size
        return Pairs(self._cache.i0[s], self._cache.i1[s], self._cache.row_mass[s])

    def take(self, n: int) -> Pairs:
        """The next ``n`` pairs (any number; spans plan refreshes). ``take(batch_size)`` equals :meth:`next`."""
        parts: list[Pairs] = []
        need = int(n)
        while need > 0:
            if self._cache is None or self._pos >= len(self._cache.i0):
                self._refill()
            assert self._cache is not None
            m = min(need, len(self._cache.i0) - self._pos)
            s = slice(self._pos, self._pos + m)
            parts.append(Pairs(self._cache.i0[s], self._cache.i1[s], self._cache.row_mass[s]))
            self._pos += m
            need -= m
        if len(parts) == 1:
            return parts[0]
        return Pairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("i0", "i1", "row_mass")))

    def close(self) -> None:
        if self._pool is not None:
            if self._future is not None:
                self._future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()
