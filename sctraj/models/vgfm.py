"""Joint velocity-growth flow matching (VGFM) for time courses whose cell numbers change.

Wang, Jiang, Zhang, Gu, Zhou & Sun (2025). Joint Velocity-Growth Flow Matching for Single-Cell Dynamics Modeling.
NeurIPS 2025. arXiv:2505.13413.

Cells move with a velocity ``v(x, t)`` and their mass changes with a growth rate ``g(x, t)``:
``dx/dt = v``, ``d log w / dt = g`` (the continuity equation with a source term, ``d rho / dt = -div(rho v) + g rho``).
For each consecutive pair of snapshots VGFM

1. solves a *semi-relaxed* unbalanced entropic OT problem (paper Eq. 5 and its discrete form):
   ``min_pi <C, pi> + reg * KL(pi | a b^T) + tau * KL(pi 1 | a)`` subject to ``pi^T 1 = b`` (the target marginal is
   hard, the source marginal is free to grow or shrink). The total target mass is the relative population size of the
   later time point, so the row sum of a source cell is the number of "cells worth" of mass it becomes;
2. regresses both networks on the straight interpolant between pairs ``(i, j)`` drawn from the plan (paper Eq. 8),
   ``x_s = (1 - s) x_i + s x_j + sigma * eps``: the velocity target is ``(x_j - x_i) / dt`` and the growth target is the
   constant ``log(row mass of i) / dt`` (Theorem 1: the two-period dynamics of the static plan reparameterised so that
   transport and growth act together over the whole interval);
3. after a warm-up with the matching loss only, adds the paper's distribution-fitting loss: the cells of each snapshot
   are integrated with their log-mass (two Heun steps, every interval in one batch) to the next snapshot and the
   weighted 1-Wasserstein distance between the mass-weighted prediction and the observed cells (exact EMD on
   minibatches, POT) is minimised, together with the relative error of the predicted total mass (as in DeepRUOT /
   TIGON, which VGFM builds on).

Deviations from the paper and its reference code (github: DongyiWang-66/VGFM):

* for cost (``benchmarks/results/speed.md`` section 2; chosen by the mean over the hematopoiesis and EB leave-one-out
  fits, seeds 0-2), the distribution-fitting loss is added on every 6th of the last 30% of the steps, weighted by 6
  (the same objective in expectation, ``phase2_every``), on 128 cells per snapshot, integrated with two Heun steps
  (second order, so the trained growth is not tuned to a coarse integration; the reference takes Euler steps of 0.01
  time units through the adjoint method, in a separate training stage of its own);
* the reference's distribution-fitting stage has no mass term and carries the predicted cells from one interval to
  the next; here every interval starts from observed cells and the total mass is fitted as well.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from .._settings import logger
from ..engine import couplings
from ..engine.nn import GrowthHead, VectorField
from ..engine.paths import StraightPath
from ..engine.solvers import FIXED_SCHEMES, fixed_step_mass
from ..engine.trainer import cpu_threads, train
from ._base import BaseMethod, FitData, MethodConfig
from ._registry import register_method

COST_NORMS = ("mean", "max", "none")
GROWTH_HEADS = ("separate", "shared")
_F32_MAX_EXPONENT = 80.0  # exp(-80) ~ 1.8e-35 is still a normal float32


@dataclass(frozen=True, kw_only=True)
class VGFMConfig(MethodConfig):
    """Settings of ``vgfm``.

    Attributes
    ----------
    sigma
        Standard deviation of the Gaussian noise added to the straight interpolant (internal units: the embedding
        divided by its overall standard deviation).
    reg
        Entropic regularisation of the semi-relaxed OT plan, relative to the normalised cost (see ``cost_norm``).
    tau
        Weight of the KL relaxation of the source marginal: small values let growth explain more of the change between
        snapshots, large values approach balanced OT with uniform growth.
    cost_norm
        Divide the squared Euclidean cost by its ``"mean"`` (default) or ``"max"`` over the block, or ``"none"``; makes
        ``reg`` and ``tau`` independent of the embedding's scale.
    growth_weight
        Weight of the growth term of the matching loss.
    ot_block_size
        Largest number of cells per side of one plan (memory ``block^2`` floats); larger snapshots are solved on random
        blocks, refreshed every ``ot_refresh`` steps.
    ot_refresh
        Training steps served by one block plan.
    ot_iter
        Maximum Sinkhorn iterations per plan.
    phase2
        Add the distribution-fitting loss after the warm-up (the paper's full objective).
    warmup
        Fraction of the training steps that use the matching loss only (0.7: the distribution-fitting loss is added
        over the last 600 of the default 2000 steps, on every ``phase2_every``-th of them).
    phase2_batch
        Cells per snapshot integrated (and observed cells compared) per distribution-fitting step.
    phase2_every
        Evaluate the distribution-fitting loss on every ``phase2_every``-th step after the warm-up, weighted by
        ``phase2_every``: the same objective in expectation over the steps at ``1 / phase2_every`` of its cost.
    ode_steps
        Integration steps per interval (of ``ode_solver``) during the distribution-fitting phase. With Euler, few steps
        tune the fitted growth to the coarse integration (``warmup=0.9, ode_steps=5`` doubled the error of the total
        mass a full fit predicts with 100 steps); two Heun steps do not (``benchmarks/results/speed.md``).
    ode_solver
        Integrator of the distribution-fitting phase: ``"euler"`` (one evaluation per step) or ``"heun"`` (the explicit
        trapezoid rule, two evaluations per step, second order: see :func:`sctraj.engine.solvers.fixed_step_mass`).
    growth_head
        ``"separate"`` (default): the growth rate is its own network (:class:`~sctraj.engine.nn.GrowthHead`) beside
        the velocity field, the paper's and the reference's architecture; ``"shared"``: one network with ``dim + 1``
        outputs, the velocity and the growth rate, at about the cost of one CFM network per step (a fit costs about
        two thirds as much), but its predicted total mass drifted by 4.7% on average over a 50-dimensional EB fit
        (2.1% with ``"separate"``; ``benchmarks/results/speed.md``).
    lambda_ot
        Weight of the weighted W1 term.
    lambda_mass
        Weight of the squared relative error of the predicted total mass.
    lr_schedule
        ``"cosine"`` (default for ``vgfm``): the learning rate decays from ``lr`` to ``lr / 100`` along a half cosine, so
        the fit ends on small steps of the minibatch matching and distribution-fitting losses instead of one noisy
        iterate (see :class:`~sctraj.models.MethodConfig`); ``"constant"`` keeps ``lr``.
    num_threads
        Torch CPU threads during training (``0`` keeps torch's setting): one is fastest for these small networks, and
        extra threads spin-wait on a shared CPU.
    """

    sigma: float = 0.05
    reg: float = 0.05
    tau: float = 1.0
    cost_norm: str = "mean"
    growth_weight: float = 1.0
    ot_block_size: int = 2048
    ot_refresh: int = 500
    ot_iter: int = 1000
    phase2: bool = True
    warmup: float = 0.7
    phase2_batch: int = 128
    phase2_every: int = 6
    ode_steps: int = 2
    ode_solver: str = "heun"
    growth_head: str = "separate"
    lambda_ot: float = 1.0
    lambda_mass: float = 1.0
    num_threads: int = 1
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("reg", "tau"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"vgfm: {name} must be a positive number, got {v!r}.")
        for name in ("sigma", "growth_weight", "lambda_ot", "lambda_mass"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"vgfm: {name} must be a non-negative number, got {v!r}.")
        if self.cost_norm not in COST_NORMS:
            raise ValueError(f"vgfm: cost_norm must be one of {COST_NORMS}, got {self.cost_norm!r}.")
        if self.ode_solver not in FIXED_SCHEMES:
            raise ValueError(f"vgfm: ode_solver must be one of {FIXED_SCHEMES}, got {self.ode_solver!r}.")
        if self.growth_head not in GROWTH_HEADS:
            raise ValueError(f"vgfm: growth_head must be one of {GROWTH_HEADS}, got {self.growth_head!r}.")
        if not (0.0 <= float(self.warmup) <= 1.0):
            raise ValueError(f"vgfm: warmup must be a fraction in [0, 1], got {self.warmup!r}.")
        self.check_ints(("num_threads",), minimum=0, prefix="vgfm: ")
        self.check_ints(("ot_block_size", "ot_refresh", "ot_iter", "phase2_batch", "phase2_every", "ode_steps"),
                        prefix="vgfm: ")

    @classmethod
    def from_saved(cls, params):
        # files written before these settings existed hold a separate growth network trained with Euler steps
        return cls.from_params({"growth_head": "separate", "ode_solver": "euler", "phase2_every": 1, **params})


def semi_relaxed_plan(
    x0: np.ndarray,
    x1: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    *,
    ratio: float = 1.0,
    reg: float = 0.05,
    tau: float = 1.0,
    cost_norm: str = "mean",
    n_iter: int = 1000,
) -> np.ndarray:
    """Semi-relaxed unbalanced entropic OT plan (:func:`ot.unbalanced.sinkhorn_unbalanced`, ``reg_m=(tau, inf)``).

    Units: each source cell starts with mass ``1 / n0`` and the target cells share the total mass ``ratio`` (the
    relative population size of the later snapshot) in proportion to ``b``. The source reference is ``ratio`` times the
    normalised prior ``a`` (uniform by default); with a hard target marginal this scaling does not change the plan
    (it adds a constant to the objective), so the plan is the paper's with source mass 1 per cell. ``n0 * row sum`` of a
    source cell is its growth factor over the interval.
    """
    import ot

    n0, n1 = len(x0), len(x1)
    p = np.full(n0, 1.0 / n0) if a is None else np.asarray(a, np.float64) / np.sum(a)
    q = np.full(n1, 1.0 / n1) if b is None else np.asarray(b, np.float64) / np.sum(b)
    C = couplings.sq_cost(x0, x1)
    if cost_norm != "none":
        s = float(C.mean() if cost_norm == "mean" else C.max())
        if s > 0:
            C /= s
    # Single precision is about 5x faster here (half the memory traffic per Sinkhorn iteration) and changes the row
    # masses by ~1e-7 relative. Its kernel exp(-C / reg) underflows to 0 beyond C / reg ~ 87 (double precision:
    # ~ 745); a source cell whose every entry underflowed gets no valid scaling. Such costs are solved in double
    # precision, and a plan that still misses the hard target marginal by the log-domain (stabilised) solver.
    far = float(np.max(C.min(axis=1))) / reg
    methods = [(np.float32, "sinkhorn")] if far < _F32_MAX_EXPONENT else []
    methods += [(np.float64, "sinkhorn"), (np.float64, "sinkhorn_stabilized")]
    target = ratio * q
    for k, (dt, method) in enumerate(methods):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            if k < len(methods) - 1:  # POT's "Numerical errors" warning is moot when a fallback follows
                warnings.simplefilter("ignore")
            plan = np.asarray(ot.unbalanced.sinkhorn_unbalanced(
                (ratio * p).astype(dt), target.astype(dt), C.astype(dt, copy=False), reg, (tau, np.inf),
                method=method, reg_type="kl", numItermax=n_iter, stopThr=1e-4,
            ), dtype=np.float64)
        if np.isfinite(plan).all() and np.allclose(plan.sum(0), target, rtol=1e-3, atol=0):
            break
    if not np.isfinite(plan).all() or plan.sum() <= 0 or not np.allclose(plan.sum(0), target, rtol=1e-2, atol=0):
        raise FloatingPointError(
            f"vgfm: the semi-relaxed OT plan is not finite or misses the target marginal (reg={reg} is too small for "
            f"this cost, or ot_iter={n_iter} too few iterations). Increase reg, e.g. fit_flow(..., method='vgfm', "
            f"reg={2 * reg:g})."
        )
    return plan


def _mass_from_params(tc, params: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Relative total mass per kept time point: ``total_mass`` if given, else the cell-count ratio."""
    total_mass = params.pop("total_mass", None)
    kept = np.asarray(tc.times, float)
    if total_mass is None:
        n = np.array([len(x) for x in tc.X], float)
        logger.info(
            "vgfm: relative population size per time point = number of sequenced cells n_t / n_0 "
            f"({', '.join(f'{m:.3g}' for m in n / n[0])}). Cell counts are an experimental choice; pass "
            "total_mass={time: value} when the true population sizes are known."
        )
        return n / n[0], "cell_counts"
    if not isinstance(total_mass, Mapping):
        raise TypeError(
            f"total_mass must be a dict {{time: relative population size}}, got {type(total_mass).__name__}. "
            f"Example: total_mass={{{', '.join(f'{t:g}: ...' for t in kept)}}}."
        )
    values: dict[float, float] = {}
    excluded = np.asarray(getattr(tc, "excluded", []), float)
    for key, val in total_mass.items():
        try:
            tk = float(key)
        except (TypeError, ValueError):
            raise ValueError(f"total_mass keys must be time values, got {key!r}.") from None
        try:
            v = float(val)
        except (TypeError, ValueError):
            raise ValueError(f"total_mass[{key!r}] must be a number, got {val!r}.") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"total_mass[{key!r}] = {val!r}: total masses must be positive and finite.")
        hit = np.isclose(kept, tk)
        if hit.any():
            values[float(kept[hit][0])] = v
        elif len(excluded) and np.isclose(excluded, tk).any():
            continue  # an excluded (e.g. held-out) time: not fitted, ignored
        else:
            raise ValueError(
                f"total_mass names time {key!r}, which is not a fitted time point. Give one value per fitted time: "
                f"{kept.tolist()}."
            )
    missing = [float(t) for t in kept if float(t) not in values]
    if missing:
        raise ValueError(
            f"total_mass has no value for time(s) {missing}. Give one positive value per fitted time point "
            f"{kept.tolist()} (any common unit: only ratios matter)."
        )
    m = np.array([values[float(t)] for t in kept])
    return m / m[0], "total_mass"


def _weights_from_params(adata, tc, params: dict[str, Any]) -> tuple[list[np.ndarray] | None, str]:
    key = params.pop("weight_key", None)
    if key is None:
        return None, ""
    if not isinstance(key, str):
        raise TypeError(f"weight_key must be the name of an obs column (str), got {type(key).__name__}.")
    if key not in adata.obs:
        raise KeyError(
            f"weight_key {key!r} is not a column of adata.obs. Compute a growth prior first, e.g. "
            "sctraj.pp.score_growth(adata, organism='mouse'), then pass weight_key='growth_weight'."
        )
    import pandas as pd

    col = adata.obs[key]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise ValueError(f"adata.obs[{key!r}] must be numeric (positive per-cell weights), got dtype {col.dtype}.")
    w = col.to_numpy(dtype=float, na_value=np.nan)
    out = []
    for idx in tc.index:
        wk = w[idx]
        if not np.isfinite(wk).all() or (wk <= 0).any():
            raise ValueError(
                f"adata.obs[{key!r}] must be positive and finite for every fitted cell (found "
                f"{int((~np.isfinite(wk) | (wk <= 0)).sum())} bad values). Use e.g. the exp of a growth-rate score."
            )
        out.append(wk / wk.mean())
    return out, key


@register_method("vgfm")
class VGFM(BaseMethod):
    """Joint velocity-growth flow matching (VGFM; Wang et al. 2025, arXiv:2505.13413).

    Learns a velocity field and a per-cell growth rate from snapshots whose cell numbers change (division and death).
    The coupling of each consecutive pair is the semi-relaxed unbalanced entropic OT plan (POT); pairs drawn from it
    give the velocity target ``(x1 - x0) / dt`` on the noisy straight interpolant and the growth target
    ``log(row mass) / dt`` (paper Eq. 8). With ``phase2=True`` (default) the last ``1 - warmup`` of the steps also
    minimise the weighted W1 between the integrated, mass-weighted cells and the next snapshot, and the relative error
    of the predicted total mass.

    Inputs read by ``fit_flow`` (``**method_params``):

    * ``total_mass={time: value}``: relative population size per fitted time point (positive, one per fitted time;
      values for excluded times are ignored). Default: the cell-count ratio ``n_t / n_0``, which is only right when the
      number of sequenced cells is proportional to the population size - an experimental choice.
    * ``weight_key="<obs column>"``: positive per-cell growth prior (e.g. ``"growth_weight"`` from
      :func:`sctraj.pp.score_growth`), normalised to mean 1 per time point and used as the reference source marginal
      of the plan: a cell's expected growth factor before the data pull it either way.

    The growth rate is a separate network (:class:`~sctraj.engine.nn.GrowthHead`) beside the velocity field, as in the
    paper: the growth target is a noisy scalar whose scale differs from the velocity's, and separate networks keep the
    velocity field identical to the CFM family's (with no growth VGFM reduces to a balanced flow) and stop the growth
    loss from distorting the learned velocities. ``growth_head="shared"`` (one network with ``dim + 1`` outputs) is
    cheaper per step and as accurate in 2 and 5 dimensions, but drifted the total mass in 50 (``growth_head`` above).

    Memory: a plan is ``n0 x n1`` floats. Snapshots larger than ``ot_block_size`` cells are coupled on random blocks
    (minibatch semi-relaxed OT, Fatras et al. 2021): the block plan keeps the target-mass ratio, so row sums are
    unbiased estimates of the population-level growth factor, but a block sees only part of each snapshot, which blurs
    the plan (more so for small blocks) and makes row masses noisier than the full plan's.
    """

    Config = VGFMConfig
    has_growth = True
    default_n_steps = 2000
    default_batch_size = 256

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        shared = config.growth_head == "shared"
        self.net = VectorField(dim, width=config.width, depth=config.depth, act=config.activation,
                               n_out=dim + 1 if shared else None)
        self.growth_net = None if shared else GrowthHead(dim, width=config.width, depth=config.depth,
                                                         act=config.activation)

    # -- hooks -------------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, adata, tc, data: FitData, params: dict[str, Any], *, population_key: str | None) -> dict[str, Any]:
        mass, source = _mass_from_params(tc, params)
        weights, weight_key = _weights_from_params(adata, tc, params)
        data.mass = mass
        data.weights = weights
        return {"mass": [float(m) for m in mass], "mass_source": source, "weight_key": weight_key}

    def report(self, model, data: FitData) -> dict[str, Any]:
        times = np.asarray(data.times, float)
        mass = np.asarray(data.mass if data.mass is not None else self.meta.get("mass"), float)
        grid = np.unique(np.concatenate([np.linspace(times[0], times[-1], 41), times]))
        X0 = data.X[0]
        if len(X0) > 2000:
            X0 = X0[np.random.default_rng(0).choice(len(X0), 2000, replace=False)]
        X0 = model.from_internal(torch.as_tensor(X0, device=model.device))
        with cpu_threads(self.config.num_threads or None):
            _, lw = model.push(X0, times[0], grid[1:], n_steps=100)
        pred = np.concatenate([[1.0], np.exp(lw.astype(np.float64)).mean(1)])
        at_obs = np.array([pred[np.flatnonzero(np.isclose(grid, t))[0]] for t in times])
        return {
            "mass": {
                "time": grid,
                "predicted": pred,
                "observed_time": times,
                "observed": mass,
                "predicted_at_observed": at_obs,
                "relative_error": np.abs(at_obs - mass) / mass,
                "source": str(self.meta.get("mass_source", "cell_counts")),
            }
        }

    # -- dynamics ----------------------------------------------------------------------------------------------
    def velocity(self, x, tau, cond=None):
        return self.net(x, tau) if self.growth_net is not None else self.net(x, tau)[:, : self.dim]

    def growth(self, x, tau, cond=None):
        return self.growth_net(x, tau) if self.growth_net is not None else self.net(x, tau)[:, self.dim]

    def velocity_growth(self, x, tau):
        """``(v, g)`` at ``(x, tau)``: one evaluation of the shared network, or one of each network."""
        if self.growth_net is None:
            out = self.net(x, tau)
            return out[:, : self.dim], out[:, self.dim]
        return self.net(x, tau), self.growth_net(x, tau)

    # -- training ----------------------------------------------------------------------------------------------
    def make_samplers(self, data: FitData, batch_size: int, rng: np.random.Generator,
                      n_steps: int | None = None) -> list[couplings.PairSampler]:
        cfg = self.config
        mass = np.asarray(data.mass if data.mass is not None else [len(x) / len(data.X[0]) for x in data.X], float)
        out = []
        for k in range(len(data.X) - 1):
            plan_fn = partial(semi_relaxed_plan, ratio=float(mass[k + 1] / mass[k]), reg=cfg.reg, tau=cfg.tau,
                              cost_norm=cfg.cost_norm, n_iter=cfg.ot_iter)
            out.append(couplings.PairSampler(
                data.X[k], data.X[k + 1], plan_fn, batch_size=batch_size, block_size=cfg.ot_block_size,
                refresh=cfg.ot_refresh, rng=np.random.default_rng(rng.integers(2**63)),
                a=None if data.weights is None else data.weights[k], row_mass="cell",
                n_pairs=None if n_steps is None else n_steps * batch_size,
            ))
        return out

    def fit(self, data, *, n_steps, batch_size, rng, device, progress):
        cfg = self.config
        samplers = self.make_samplers(data, batch_size, rng, n_steps)
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        X = [torch.as_tensor(x, device=device) for x in data.X]
        tau = [float(t) for t in data.tau]
        mass = np.asarray(data.mass if data.mass is not None else [len(x) / len(data.X[0]) for x in data.X], float)
        ratios = [float(mass[k + 1] / mass[k]) for k in range(len(X) - 1)]
        path = StraightPath(cfg.sigma)
        n_warm = n_steps if not cfg.phase2 else int(round(cfg.warmup * n_steps))
        # the matching loss of every interval in one batch: pairs are global row indices into one tensor of all cells,
        # and indices, growth targets, times and noise are drawn for ``chunk`` steps at once (as in the CFM family)
        n_int, B = len(samplers), batch_size
        X_all = torch.cat(X)
        offset = np.cumsum([0] + [len(x) for x in data.X])
        dts = np.diff(np.asarray(tau, np.float64))
        t_lo = torch.as_tensor(np.repeat(tau[:-1], B), dtype=X_all.dtype, device=device)
        t_dt = torch.as_tensor(np.repeat(dts, B), dtype=X_all.dtype, device=device)
        chunk = max(1, min(50, n_steps))
        buf: dict[str, torch.Tensor] = {}

        def refill(n: int) -> None:
            i0, i1, pairs = couplings.take_chunk(samplers, offset, n, B)
            g = np.concatenate([(np.log(np.maximum(p.row_mass, 1e-12)) / dts[k]).reshape(n, B)
                                for k, p in enumerate(pairs)], 1)
            buf["i0"] = torch.from_numpy(i0).to(device)
            buf["i1"] = torch.from_numpy(i1).to(device)
            buf["g"] = torch.as_tensor(g, dtype=X_all.dtype, device=device)
            buf["s"] = torch.rand((n, n_int * B), device=device, generator=gen, dtype=X_all.dtype)
            buf["noise"] = torch.randn((n, n_int * B, X_all.shape[1]), device=device, generator=gen,
                                       dtype=X_all.dtype)

        def matching_loss(step):
            j = step % chunk
            if j == 0:
                refill(min(chunk, n_steps - step))
            s = buf["s"][j]
            xt, ut = path.sample(X_all[buf["i0"][j]], X_all[buf["i1"][j]], s, buf["noise"][j])
            v, g = self.velocity_growth(xt, t_lo + s * t_dt)
            return torch.mean((v - ut / t_dt[:, None]) ** 2), torch.mean((g - buf["g"][j]) ** 2)

        def fitting_loss():
            import ot

            # every interval's cells are integrated together, each row on its own interval's time grid: one network
            # evaluation per stage for all intervals instead of one per interval
            x0s, x1s, t0s, hs = [], [], [], []
            for k in range(len(X) - 1):
                m0, m1 = min(cfg.phase2_batch, len(X[k])), min(cfg.phase2_batch, len(X[k + 1]))
                x0s.append(X[k][torch.randperm(len(X[k]), device=device, generator=gen)[:m0]])
                x1s.append(X[k + 1][torch.randperm(len(X[k + 1]), device=device, generator=gen)[:m1]])
                t0s.append(torch.full((m0,), tau[k], device=device, dtype=x0s[-1].dtype))
                hs.append(torch.full((m0,), (tau[k + 1] - tau[k]) / cfg.ode_steps, device=device,
                                     dtype=x0s[-1].dtype))
            x, lw = fixed_step_mass(self.velocity_growth, torch.cat(x0s), torch.cat(t0s), torch.cat(hs),
                                    cfg.ode_steps, scheme=cfg.ode_solver)
            w1s, mls = [], []
            for k, (xp, w) in enumerate(zip(torch.split(x, [len(z) for z in x0s]),
                                            torch.split(torch.exp(lw), [len(z) for z in x0s]), strict=True)):
                x1 = x1s[k]
                a = w / w.sum()
                b = torch.full((len(x1),), 1.0 / len(x1), device=device, dtype=xp.dtype)
                # |a|^2 + |b|^2 - 2 a.b: one matrix product, where the broadcast difference (m0 x m1 x dim, and its
                # backward) cost 8x as much at 50 dimensions
                d2 = (xp * xp).sum(1)[:, None] + (x1 * x1).sum(1)[None, :] - 2.0 * (xp @ x1.T)
                M = torch.sqrt(d2.clamp_min(0.0) + 1e-12)
                w1s.append(ot.emd2(a, b, M))
                mls.append((w.mean() / ratios[k] - 1.0) ** 2)
            return torch.stack(w1s).mean(), torch.stack(mls).mean()

        def loss_fn(step):
            lv, lg = matching_loss(step)
            out = {"loss": lv + cfg.growth_weight * lg, "velocity_loss": lv, "growth_loss": lg}
            if cfg.phase2:
                if step >= n_warm and (step - n_warm) % cfg.phase2_every == 0:
                    # on every phase2_every-th step, weighted by phase2_every: the same loss in expectation over steps
                    w1, ml = fitting_loss()
                    out["loss"] = out["loss"] + cfg.phase2_every * (cfg.lambda_ot * w1 + cfg.lambda_mass * ml)
                else:  # logged as NaN on steps without it so every history entry has one value per step
                    w1 = ml = torch.tensor(float("nan"))
                out["w1_loss"], out["mass_loss"] = w1, ml
            return out

        try:
            with cpu_threads(cfg.num_threads or None):
                return train(self.parameters(), loss_fn, n_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             progress=progress, desc=self.name, lr_schedule=cfg.lr_schedule)
        finally:
            for s in samplers:
                s.close()
