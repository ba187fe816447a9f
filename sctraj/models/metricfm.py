"""Metric Flow Matching: flow matching along learned approximate geodesics of a data-dependent metric.

Kapusniak, Potaptchik, Reu, Zhang, Tong, Bronstein, Bose & Di Giovanni (2024). Metric Flow Matching for Smooth
Interpolations on the Data Manifold. NeurIPS 2024. arXiv:2405.14780.

Straight interpolants ``(1-s) x0 + s x1`` cut through regions where no cells are. Metric FM (MFM) bends them towards
the data with a Riemannian metric ``G(x) = (diag(h(x)) + eps)^-alpha`` that is cheap on the data and expensive off it
(LAND or RBF, :mod:`sctraj.engine.metrics`), in two stages (Algorithm 1 of the paper):

1. **Interpolant** (paper Eq. 4 / 11): ``x_s = (1-s) x0 + s x1 + gamma(s) phi_eta(x0, x1)`` with
   ``gamma(s) = 1 - s^2 - (1-s)^2 = 2 s (1-s)`` (zero at both ends, so the path always joins ``x0`` to ``x1``) and an
   MLP ``phi_eta`` (with ``geopath_time=True`` it also sees the global time, ``phi_eta(x0, x1, t)``, as the
   reference code's ``time_geopath``). ``eta`` minimises the kinetic energy ``E[xdot_s^T G(x_s) xdot_s]`` over coupled
   pairs and ``s ~ U(0, 1)``; ``xdot_s`` is the exact derivative in ``s`` (with the time input: forward tangent
   propagation through the MLP, equal to forward-mode AD). Optionally, training stops early when the energy of OT
   pairs of held-out cells stops falling, as in the reference code (``geopath_val_fraction``; off by default).
2. **Flow matching** (Eq. 12): with ``phi_eta`` frozen, a time-conditioned field ``v_theta`` regresses ``xdot_s`` at
   ``x_s + sigma eps`` (the Gaussian width of OT-CFM).

Pairs come from the exact OT plan with Euclidean cost between consecutive snapshots (OT-MFM, the paper's default; the
metric is not used for the coupling), from the independent coupling (I-MFM, ``coupling="independent"``) or, as an
ablation, from exact OT under the metric's straight-segment energy (``coupling="metric_ot"``). As in the
paper's single-cell experiments one metric is built per interval from the cells of its two snapshots, and one field
is trained over all intervals (local time ``s`` of interval ``[tau_k, tau_k+1]`` is global time
``t = tau_k + s (tau_k+1 - tau_k)``; velocities are divided by the interval length). ``phi_eta`` is shared by all
intervals; the pair's two cells tell the intervals apart (and the global time too with ``geopath_time=True``). Each
interval's energy is divided by its value for the straight interpolant, so intervals with very different metric
scales weigh equally.

Every deviation from the paper and from the reference code (github kksniak/metric-flow-matching) is listed, with the
reason, in ``docs/methods.md`` (section Metric FM); measurements in ``benchmarks/results/metricfm.md``.

The learned interpolants are returned by :meth:`MetricFM.paths` (internal units) and, for AnnData users, by
:func:`sctraj.tl.metric_paths`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine import couplings, distributed
from ..engine.metrics import LANDMetric, RBFMetric, resolve_metric
from ..engine.nn import VectorField, mlp
from ..engine.trainer import LR_SCHEDULES, KeepBest, cpu_threads, train
from ._base import BaseMethod, FitData, MethodConfig
from ._registry import register_method

COUPLINGS = ("ot", "independent", "metric_ot")
NORMALISE = ("interval", "global")
METRIC_CELLS = ("interval", "all")


@dataclass(frozen=True, kw_only=True)
class MetricFMConfig(MethodConfig):
    """Settings of ``metricfm``.

    Attributes
    ----------
    sigma
        Gaussian width around the learned path in the flow-matching stage (as in OT-CFM).
    coupling
        ``"ot"`` (exact OT with the squared Euclidean cost: OT-MFM, the paper's and the reference code's choice),
        ``"independent"`` (I-MFM) or ``"metric_ot"`` (exact OT whose cost is the kinetic energy of the straight
        segment under the metric, by the three-point midpoint rule; an ablation, much costlier per plan).
    metric
        ``"land"``, ``"rbf"`` or ``"auto"``: LAND up to ``land_max_dims`` dimensions, RBF above. LAND's single
        isotropic bandwidth and its per-dimension local variance are meaningful in a few whitened dimensions (the
        paper and its reference code use LAND on 5-d data); in 30-100 dimensions every cell is far from every other
        at one bandwidth, so ``auto`` switches to the RBF metric, whose k-means centres carry their own bandwidths
        (the reference's 50/100-d configurations).
    land_max_dims
        Largest dimension for which ``metric="auto"`` picks LAND.
    land_gamma
        LAND kernel bandwidth, in units of the embedding's overall standard deviation, or ``"scott"`` (default): per
        interval ``land_gamma_scale * n ** (-1 / (d + 4))`` for its ``n`` cells in ``d`` dimensions (Scott's rule for
        a kernel density estimate, which LAND's ``h`` is a weighted form of). The reference code sets the
        bandwidth by hand per dataset (0.125 on whitened EB).
    land_gamma_scale
        Multiplier of Scott's rule.
    land_max_points
        At most this many landmarks per interval for LAND; stage 1's cost is about linear in it. An interval with more
        cells draws this many uniformly, then pools every cell into its nearest drawn cell (``land_pool=True``) or
        rescales ``h`` by ``n / land_max_points`` (``False``: an unbiased estimate of the sum over all cells).
    land_pool
        Pool the cells into anchors (default): each drawn cell becomes a Gaussian pool with the centroid, count and
        per-dimension variance of the cells nearest to it, whose expected kernel and local variance ``h`` sums in
        closed form (:class:`~sctraj.engine.metrics.LANDMetric`). 512 anchors matched the all-cell ``h`` more
        closely than the 1,024-cell subsample used before on hematopoiesis and cost half as much; held-out W1 over
        EB, iPSC and hematopoiesis was as good or better (``benchmarks/results/metricfm.md``). ``False``: a rescaled
        uniform subsample, as before 2026-12-02 (with ``land_max_points=1024``).
    rbf_n_centers
        k-means centres per interval for the RBF metric (the reference's 50/100-d configurations: 150).
    rbf_kappa
        RBF bandwidth multiplier (``lambda_k = 1 / (2 (kappa sigma_k)^2)``; reference 50/100-d: 1.5).
    metric_alpha
        Exponent ``alpha`` of ``G = (diag(h) + eps)^-alpha``.
    metric_eps
        ``eps`` of ``G``, or ``"auto"``: ``1e-3`` for LAND (the reference's ``rho``) and, for RBF, the reference's
        adaptive ``(1 - L_val) / 2.75`` from the held-out loss ``L_val`` of the learned RBF weights.
    metric_cells
        Cells each interval's metric is built from: ``"interval"`` (its two snapshots, as in the paper) or
        ``"all"`` (every fitted snapshot; an ablation for long intervals left by a held-out time).
    geopath_steps
        Maximum training steps of the interpolant (stage 1); ``None``: a quarter of the flow-matching steps.
    geopath_lr
        Learning rate of the interpolant.
    geopath_lr_schedule
        ``"constant"`` or ``"cosine"`` (decayed to a hundredth over the stage-1 steps, as ``lr_schedule`` in stage 2).
    geopath_grad_clip
        Clip the interpolant's gradient norm to this value in stage 1 (``None``: no clipping).
    geopath_width
        Hidden width of the interpolant network ``phi``; ``None`` uses ``width``.
    geopath_batch_size
        Pairs per interval in each stage-1 step; ``None`` uses the fit's ``batch_size``. The metric is evaluated at
        every one of them, so stage 1's cost is proportional to it.
    geopath_time
        Whether ``phi`` sees the global time (the reference's ``time_geopath``). Off by default: without it the
        held-out W1 was as good on EB and iPSC and better on hematopoiesis (mean of 10 seeds 0.402 vs 0.441,
        ``benchmarks/results/metricfm.md``), and the path velocity needs no derivative through the network, which
        makes both stages cheaper.
    geopath_normalise
        Stage-1 loss: ``"interval"`` (each interval's energy divided by that of the straight interpolant, then
        averaged, so intervals with different metric scales weigh equally) or ``"global"`` (the mean energy over all
        intervals divided by its straight-line value, as in the reference code).
    geopath_val_fraction, geopath_eval_every, geopath_patience
        Early stopping of stage 1, as the reference does, when ``geopath_val_fraction > 0`` (e.g. 0.1): this fraction
        of each snapshot's cells is held out, the interpolant's energy on OT pairs of held-out cells is evaluated
        every ``geopath_eval_every`` steps, training stops after ``geopath_patience`` evaluations without improvement
        and the best interpolant is kept. Off by default (``0``: ``geopath_steps`` steps on all cells): with 0.1 the
        held-out W1 was worse on iPSC (0.6225 vs 0.5865, seed 0; its snapshots leave 9-46 held-out cells) and on
        hematopoiesis, better on EB at half the steps (``benchmarks/results/metricfm.md``).
    flow_val_fraction, flow_eval_every, flow_patience
        Best-checkpoint selection in stage 2 when ``flow_val_fraction > 0`` (e.g. 0.1; the reference code
        early-stops its flow stage on a validation split too): this fraction of each snapshot's cells is held out,
        the field is trained on pairs of the other cells, and its flow-matching loss on fixed held-out samples (OT
        pairs of held-out cells, their learned-path points, velocities and noise) is evaluated every
        ``flow_eval_every`` steps; the field with the lowest held-out loss is kept. ``flow_patience``: stop after
        this many evaluations without improvement (``None``: run all steps). With ``flow_val_fraction`` equal to
        ``geopath_val_fraction`` both stages use the same split. Off by default (``0``: every cell trains the field
        and the last field is kept).
    ot_block_size, ot_refresh, ot_full_size
        OT settings, as in ``otcfm`` (the same coupling in both stages).
    num_threads
        Torch CPU threads while fitting (``0`` keeps torch's setting), as in ``otcfm``.
    chunk_steps
        Stage 2 draws pairs and evaluates the frozen interpolant for this many steps at once (throughput only).
    path_reuse
        Each sample of the frozen learned paths (a pair, a time, its point and velocity) serves this many
        flow-matching steps, each time with fresh Gaussian noise and at a different step. With the time input
        (``geopath_time=True``) evaluating the interpolant and its time derivative costs about as much as a training
        step of the field, and ``2`` halves that cost; without it the interpolant is evaluated once per distinct
        coupled pair anyway, and sharing saves little. ``1`` (default) draws fresh samples for every step.
    """

    sigma: float = 0.1
    coupling: str = "ot"
    metric: str = "auto"
    land_max_dims: int = 10
    land_gamma: float | str = "scott"
    land_gamma_scale: float = 0.65
    land_max_points: int = 512
    land_pool: bool = True
    rbf_n_centers: int = 150
    rbf_kappa: float = 1.5
    metric_alpha: float = 1.0
    metric_eps: float | str = "auto"
    metric_cells: str = "interval"
    geopath_steps: int | None = None
    geopath_lr: float = 1e-3
    geopath_lr_schedule: str = "constant"
    geopath_grad_clip: float | None = None
    geopath_width: int | None = None
    geopath_batch_size: int | None = None
    geopath_time: bool = False
    geopath_normalise: str = "interval"
    geopath_val_fraction: float = 0.0
    geopath_eval_every: int = 25
    geopath_patience: int = 4
    flow_val_fraction: float = 0.0
    flow_eval_every: int = 50
    flow_patience: int | None = None
    ot_block_size: int = 512
    ot_refresh: int = 25
    ot_full_size: int = 1024
    num_threads: int = 1
    chunk_steps: int = 50
    path_reuse: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("coupling", COUPLINGS), ("geopath_normalise", NORMALISE),
                              ("metric_cells", METRIC_CELLS), ("geopath_lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        resolve_metric(self.metric, 1, 1)
        self.check_positive(("land_gamma",), keyword="scott")
        self.check_positive(("land_gamma_scale", "metric_alpha", "rbf_kappa", "geopath_lr"))
        self.check_positive(("metric_eps",), keyword="auto")
        if self.geopath_grad_clip is not None:
            self.check_positive(("geopath_grad_clip",))
        if self.geopath_steps is not None:
            self.check_ints(("geopath_steps",), minimum=0)
        for name in ("geopath_width", "geopath_batch_size"):
            if getattr(self, name) is not None:
                self.check_ints((name,))
        if self.flow_patience is not None:
            self.check_ints(("flow_patience",))
        self.check_ints(("land_max_points", "rbf_n_centers", "geopath_eval_every", "geopath_patience", "flow_eval_every",
                         "ot_block_size", "ot_refresh", "ot_full_size", "chunk_steps", "path_reuse"))
        self.check_ints(("num_threads",), minimum=0)
        for name in ("geopath_time", "land_pool"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in ("geopath_val_fraction", "flow_val_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, int | float) and 0 <= v < 0.5):
                raise ValueError(f"{name} must be in [0, 0.5), got {v!r}.")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}.")


    @classmethod
    def from_saved(cls, params):
        # files written before anchors existed hold a metric over plain landmark cells (their 1,024-landmark default
        # is in the saved config); their state dicts load into the same kernel with counts 1 and no spread
        return cls.from_params({"land_pool": False, **params})


def land_bandwidth(cfg: MetricFMConfig, n_cells: int, dim: int) -> float:
    """LAND bandwidth of an interval with ``n_cells`` cells (both snapshots) in ``dim`` dimensions (internal units)."""
    if cfg.land_gamma == "scott":
        return float(cfg.land_gamma_scale * max(int(n_cells), 2) ** (-1.0 / (dim + 4)))
    return float(cfg.land_gamma)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _act_derivative(act: nn.Module, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Derivative of an activation module (those of :mod:`sctraj.engine.nn`) at ``pre``, given ``out = act(pre)``."""
    # Piecewise derivatives by clamps and sign() rather than a boolean mask: masked_fill_ with a comparison mask was
    # 5x slower on CPU and took a tenth of a default fit (a profile of EB 5-d).
    if isinstance(act, nn.SELU):  # scale for x > 0, scale * alpha * e^x = out + scale * alpha otherwise
        sa = _SELU_SCALE * _SELU_ALPHA
        return (out + sa).clamp_max_(sa).sub_(torch.sign(pre.clamp_min(0.0)), alpha=sa - _SELU_SCALE)
    if isinstance(act, nn.ELU):  # 1 for x > 0, alpha e^x = out + alpha otherwise
        a = float(act.alpha)
        return (out + a).clamp_max_(a).sub_(torch.sign(pre.clamp_min(0.0)), alpha=a - 1.0)
    if isinstance(act, nn.ReLU):
        return torch.sign(pre.clamp_min(0.0))
    if isinstance(act, nn.Tanh):
        return 1 - out * out
    if isinstance(act, nn.SiLU):
        sg = torch.sigmoid(pre)
        return sg * (1 + pre * (1 - sg))
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return 0.5 * (1 + torch.erf(pre / np.sqrt(2.0))) + pre * torch.exp(-0.5 * pre**2) / np.sqrt(2 * np.pi)
    raise TypeError(f"no derivative for activation {type(act).__name__}")


class GeodesicInterpolant(nn.Module):
    """``x_s = (1-s) x0 + s x1 + gamma(s) phi(x0, x1[, t])`` with ``gamma(s) = 2 s (1-s)`` and an MLP ``phi``."""

    def __init__(self, dim: int, *, width: int, depth: int, act: str, use_time: bool = True) -> None:
        super().__init__()
        self.use_time = bool(use_time)
        self.phi = mlp(2 * dim + int(self.use_time), dim, width, depth, act)

    @staticmethod
    def gamma(s: torch.Tensor) -> torch.Tensor:
        return 1.0 - s**2 - (1.0 - s) ** 2

    def _inp(self, x0, x1, t):
        return torch.cat([x0, x1, t.reshape(-1, 1)] if self.use_time else [x0, x1], 1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Point at local time ``s`` (per pair) whose global time is ``t`` (per pair)."""
        s2 = s.reshape(-1, 1)
        return (1 - s2) * x0 + s2 * x1 + self.gamma(s2) * self.phi(self._inp(x0, x1, t))

    def _phi_and_dt(self, inp: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi`` and its derivative along the time input times ``dt``, by forward tangent propagation.

        One pass through the MLP carrying the tangent beside the value (Linear: ``W tangent``; activation:
        ``f'(pre) tangent``): the same numbers as forward-mode AD (:func:`torch.func.jvp`) at the cost of about two
        forward passes, differentiable with respect to the parameters by ordinary backpropagation.
        """
        layers = list(self.phi)
        first = layers[0]
        h = first(inp)
        tan = first.weight[:, -1][None, :] * dt.reshape(-1, 1)
        for layer in layers[1:]:
            if isinstance(layer, nn.Linear):
                h, tan = layer(h), tan @ layer.weight.T
            else:
                out = layer(h)
                tan = tan * _act_derivative(layer, h, out)
                h = out
        return h, tan

    def point_and_velocity(
        self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, t0: torch.Tensor, dt: torch.Tensor,
        phi: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_s, d x_s / d s)`` with the global time ``t0 + s dt`` moving along; exact derivative.

        ``phi``: ``phi(x0, x1)`` if already computed (only without the time input, where it does not depend on ``s``).
        """
        s2 = s.reshape(-1, 1)
        dphi = None
        if self.use_time:
            if phi is not None:
                raise ValueError("phi depends on the time when use_time is set; it cannot be passed in")
            phi, dphi = self._phi_and_dt(self._inp(x0, x1, t0 + s * dt), dt)
        elif phi is None:
            phi = self.phi(self._inp(x0, x1, t0))
        g = self.gamma(s2)
        x = (1 - s2) * x0 + s2 * x1 + g * phi
        u = x1 - x0 + (2 - 4 * s2) * phi
        if dphi is not None:
            u = u + g * dphi
        return x, u


def _phi_per_pair(interpolant: GeodesicInterpolant, snapshots, pairs, device) -> list[torch.Tensor]:
    """``phi(x0, x1)`` (time-free interpolant) of every drawn pair, evaluated once per distinct pair.

    ``snapshots[k] = (X0, X1)`` are interval ``k``'s two snapshots (tensors) and ``pairs[k]`` its drawn pairs
    (:class:`~sctraj.engine.couplings.Pairs`); returns one ``(len(pairs[k].i0), dim)`` tensor per interval. Every
    interval's distinct pairs go through the network in one batch.
    """
    inp, inverse, start = [], [], 0
    for (X0, X1), p in zip(snapshots, pairs, strict=True):
        key = p.i0.astype(np.int64) * len(X1) + p.i1
        uniq, inv = np.unique(key, return_inverse=True)
        a, b = np.divmod(uniq, len(X1))
        inp.append(torch.cat([X0[torch.from_numpy(a).to(device)], X1[torch.from_numpy(b).to(device)]], 1))
        inverse.append(torch.from_numpy(inv.reshape(-1) + start).to(device))
        start += len(uniq)
    phi = interpolant.phi(torch.cat(inp))
    return [phi[i] for i in inverse]


def _split(n: int, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out cell indices of one snapshot (no held-out cells when ``frac`` is 0 or there are < 10)."""
    perm = rng.permutation(n)
    n_val = int(round(frac * n)) if n >= 10 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@register_method("metricfm")
class MetricFM(BaseMethod):
    """Metric Flow Matching (OT-MFM / I-MFM; Kapusniak et al. 2024, arXiv:2405.14780).

    Learns approximate geodesics of a data-dependent metric (LAND or RBF) between OT-coupled cells of consecutive
    snapshots, then fits a time-conditioned vector field to the velocities of those curved paths. See the module
    docstring for the two stages; :meth:`paths` returns the learned interpolants.

    ``metric="auto"`` (default) picks LAND up to ``land_max_dims = 10`` dimensions and the RBF metric above: LAND's
    one isotropic bandwidth and per-dimension local variance suit a few whitened PCs (where the paper uses it), while
    in 30-100 dimensions distances concentrate and the k-means RBF network with per-centre bandwidths, learned
    weights and adaptive ``eps`` is what the paper's reference code uses.
    """

    Config = MetricFMConfig

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        cfg = config
        self.net = VectorField(dim, width=cfg.width, depth=cfg.depth, act=cfg.activation)
        self.interpolant = GeodesicInterpolant(dim, width=cfg.geopath_width or cfg.width, depth=cfg.depth,
                                               act=cfg.activation, use_time=cfg.geopath_time)
        kind = self.meta.get("metric", resolve_metric(cfg.metric, dim, cfg.land_max_dims))
        sizes = [int(n) for n in self.meta.get("interval_cells", [])]
        eps = None if cfg.metric_eps == "auto" else float(cfg.metric_eps)
        if kind == "land":
            ms = [LANDMetric(dim, min(n, cfg.land_max_points), gamma=land_bandwidth(cfg, n, dim),
                             eps=1e-3 if eps is None else eps, alpha=cfg.metric_alpha, pool=cfg.land_pool)
                  for n in sizes]
        else:
            ms = [RBFMetric(dim, min(n, cfg.rbf_n_centers), kappa=cfg.rbf_kappa, eps=eps, alpha=cfg.metric_alpha)
                  for n in sizes]
        self.metric_kind = kind
        self.metrics = nn.ModuleList(ms)
        self.register_buffer("tau", torch.as_tensor(self.meta.get("tau", [0.0, 1.0]), dtype=torch.float32))

    # -- hooks -------------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, adata, tc, data, params, *, population_key):
        cfg = cls.Config.from_params(dict(params))
        n_all = int(sum(len(x) for x in data.X))
        n_int = [int(len(data.X[k]) + len(data.X[k + 1])) for k in range(len(data.X) - 1)]
        return {
            "metric": resolve_metric(cfg.metric, data.dim, cfg.land_max_dims),
            "interval_cells": [n_all] * len(n_int) if cfg.metric_cells == "all" else n_int,
            "tau": [float(t) for t in data.tau],
        }

    def report(self, model, data):
        out = {"metric": self.metric_kind, "metric_eps": np.array([m.eps for m in self.metrics], float)}
        if self.metric_kind == "land":  # the bandwidth each interval used (internal units)
            out["land_gamma"] = np.array([m.gamma for m in self.metrics], float)
        out["geopath_steps_run"] = int(getattr(self, "_geopath_steps_run", 0))
        if getattr(self, "_flow_best", None) is not None:  # stage 2 kept its best field (flow_val_fraction)
            out["flow_best_step"], out["flow_val_loss"] = int(self._flow_best[0]), float(self._flow_best[1])
        return out

    @classmethod
    def upgrade_state_dict(cls, state_dict):
        sd = dict(state_dict)
        for key in [k for k in sd if k.startswith("metrics.") and k.endswith(".landmarks")]:
            LANDMetric.upgrade_state_dict(sd, key[: -len("landmarks")])
        return sd

    # -- dynamics ----------------------------------------------------------------------------------------------
    def velocity(self, x, tau, cond=None):
        return self.net(x, tau, cond)

    @torch.no_grad()
    def paths(self, x0: torch.Tensor, x1: torch.Tensor, interval: int, s_grid: torch.Tensor) -> torch.Tensor:
        """Learned interpolants between pairs ``(x0[i], x1[i])`` of interval ``interval`` at local times ``s_grid``.

        Internal units; returns ``(len(s_grid), n, dim)``. ``s_grid`` runs over [0, 1] (0 = ``x0``, 1 = ``x1``).
        """
        t0, t1 = float(self.tau[interval]), float(self.tau[interval + 1])
        out = []
        for s in s_grid.reshape(-1):
            sv = torch.full((x0.shape[0],), float(s), device=x0.device, dtype=x0.dtype)
            out.append(self.interpolant(x0, x1, sv, t0 + sv * (t1 - t0)))
        return torch.stack(out)

    # -- training ----------------------------------------------------------------------------------------------
    def _metric_plan(self, k: int) -> couplings.PlanFn:
        """Exact OT whose cost is the straight segment's kinetic energy under interval ``k``'s metric."""
        metric = self.metrics[k]

        def plan(x0, x1, a=None, b=None):
            import ot

            with torch.no_grad():
                A, B = torch.as_tensor(x0, dtype=torch.float32), torch.as_tensor(x1, dtype=torch.float32)
                C = np.zeros((len(A), len(B)))
                for i in range(0, len(A), 64):
                    a0 = A[i : i + 64, None, :]
                    v = B[None] - a0
                    e = sum(metric.energy((a0 + s * v).reshape(-1, A.shape[1]), v.reshape(-1, A.shape[1]))
                            for s in (0.25, 0.5, 0.75)) / 3
                    C[i : i + 64] = e.reshape(len(a0), len(B)).double().numpy()
            a = couplings.uniform(len(A)) if a is None else a / a.sum()
            b = couplings.uniform(len(B)) if b is None else b / b.sum()
            return ot.emd(a, b, C / C.max(), numItermax=10_000_000)

        return plan

    def fit(self, data: FitData, *, n_steps, batch_size, rng, device, progress):
        cfg = self.config
        with cpu_threads(cfg.num_threads or None):
            return self._fit(data, n_steps=n_steps, batch_size=batch_size, rng=rng, device=device, progress=progress)

    def _fit(self, data: FitData, *, n_steps, batch_size, rng, device, progress):
        cfg = self.config
        n_int = len(data.X) - 1
        if len(self.metrics) != n_int:
            raise ValueError(
                f"This metricfm model was built for {len(self.metrics)} intervals but got {n_int}; "
                "fit it through sctraj.tl.fit_flow."
            )
        B, d = batch_size, data.dim
        Bg = B if cfg.geopath_batch_size is None else int(cfg.geopath_batch_size)
        # ---- metrics, one per interval, from the cells of its two snapshots (or of all snapshots) -------------
        for k, m in enumerate(self.metrics):
            Xk = np.concatenate(data.X if cfg.metric_cells == "all" else [data.X[k], data.X[k + 1]])
            m.fit(Xk, np.random.default_rng(rng.integers(2**63)))
        distributed.broadcast_module(self.metrics)  # data-parallel fits: every rank uses rank 0's metrics
        X = [torch.as_tensor(x, device=device) for x in data.X]
        tau = np.asarray(data.tau, np.float64)

        def plan_fn(k):
            if cfg.coupling == "independent":
                return None
            return self._metric_plan(k) if cfg.coupling == "metric_ot" else couplings.exact_plan

        def sampler(k, idx0=None, idx1=None):
            x0 = data.X[k] if idx0 is None else data.X[k][idx0]
            x1 = data.X[k + 1] if idx1 is None else data.X[k + 1][idx1]
            return couplings.PairSampler(
                x0, x1, plan_fn(k), batch_size=B, block_size=cfg.ot_block_size,
                refresh=cfg.ot_refresh, full_size=cfg.ot_full_size, rng=np.random.default_rng(rng.integers(2**63)),
            )

        def held_out(splits):
            """Per interval: its held-out cell indices and a one-off sampler of OT pairs between them."""
            vi = [(splits[k][1], splits[k + 1][1]) for k in range(n_int)]
            vs = [couplings.PairSampler(data.X[k][vi[k][0]], data.X[k + 1][vi[k][1]], plan_fn(k), batch_size=B,
                                        block_size=cfg.ot_block_size, refresh=1, full_size=cfg.ot_full_size,
                                        background=False, rng=np.random.default_rng(rng.integers(2**63)))
                  for k in range(n_int)]
            return vi, vs

        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        t0_all = torch.as_tensor(np.repeat(tau[:-1], B), dtype=torch.float32, device=device)
        dt_all = torch.as_tensor(np.repeat(np.diff(tau), B), dtype=torch.float32, device=device)

        def draw(samplers, idx, n):
            """``n`` pairs per interval: per-interval lists of x0 and x1 (tensors) and the drawn pairs."""
            x0s, x1s, pairs = [], [], []
            for k, smp in enumerate(samplers):
                p = smp.take(n)
                i0, i1 = (p.i0, p.i1) if idx is None else (idx[k][0][p.i0], idx[k][1][p.i1])
                x0s.append(X[k][torch.from_numpy(i0).to(device)])
                x1s.append(X[k + 1][torch.from_numpy(i1).to(device)])
                pairs.append(p)
            return x0s, x1s, pairs

        history: dict[str, list[float]] = {}
        g_max = max(1, n_steps // 4) if cfg.geopath_steps is None else int(cfg.geopath_steps)
        self._geopath_steps_run = 0
        self._flow_best = None
        samplers: list[couplings.PairSampler] = []
        geo_split = None  # stage 1's train / held-out cells per snapshot, when it held some out
        try:
            # ---- stage 1: approximate geodesics (minimise the kinetic energy under G) -------------------------
            if g_max > 0:
                splits = [_split(len(x), cfg.geopath_val_fraction, np.random.default_rng(rng.integers(2**63)))
                          for x in data.X]
                use_val = all(len(v) > 0 for _, v in splits)
                geo_split = splits if use_val else None
                tr = [(splits[k][0], splits[k + 1][0]) if use_val else
                      (np.arange(len(data.X[k])), np.arange(len(data.X[k + 1]))) for k in range(n_int)]
                samplers = [sampler(k, *tr[k]) for k in range(n_int)]

                def energies(xt, ut):
                    return torch.stack([self.metrics[k].energy(xt[k * n : (k + 1) * n], ut[k * n : (k + 1) * n]).mean()
                                        for k in range(n_int) for n in (xt.shape[0] // n_int,)])

                def batch(smps, idx, n, g):
                    x0s, x1s, _ = draw(smps, idx, n)
                    x0, x1 = torch.cat(x0s), torch.cat(x1s)
                    s = torch.rand(x0.shape[0], device=device, generator=g)
                    t0 = torch.as_tensor(np.repeat(tau[:-1], n), dtype=torch.float32, device=device)
                    dt = torch.as_tensor(np.repeat(np.diff(tau), n), dtype=torch.float32, device=device)
                    return x0, x1, s, t0, dt

                with torch.no_grad():  # energy of the straight interpolant, per interval (normaliser)
                    x0, x1, s, _, _ = batch(samplers, tr, 4 * Bg, gen)
                    e0 = energies((1 - s[:, None]) * x0 + s[:, None] * x1, x1 - x0)
                    e0 = distributed.mean(e0).clamp_min(1e-12)  # (averaged over the ranks of a data-parallel fit)
                    e0_global = e0.mean()
                    val = None
                    if use_val:  # fixed held-out pairs and times (OT between the held-out cells)
                        vi, vs = held_out(splits)
                        try:
                            val = batch(vs, vi, 2 * Bg, gen)
                        finally:
                            for v in vs:
                                v.close()

                def rel_energy(e):
                    return (e / e0).mean() if cfg.geopath_normalise == "interval" else e.mean() / e0_global

                def geo_loss(step):
                    x0, x1, s, t0, dt = batch(samplers, tr, Bg, gen)
                    xt, ut = self.interpolant.point_and_velocity(x0, x1, s, t0, dt)
                    return {"loss": rel_energy(energies(xt, ut))}

                def geo_val_loss():
                    with torch.no_grad():
                        xt, ut = self.interpolant.point_and_velocity(*val)
                        # averaged over the ranks of a data-parallel fit, so that every rank stops at the same step
                        return distributed.mean(rel_energy(energies(xt, ut)))

                best = None if val is None else KeepBest(
                    self.interpolant, geo_val_loss, every=cfg.geopath_eval_every, patience=cfg.geopath_patience,
                    history=history, key="geopath_val_loss", rel_tol=1e-4)
                self._geopath_steps_run = len(train(
                    self.interpolant.parameters(), geo_loss, g_max, lr=cfg.geopath_lr, weight_decay=cfg.weight_decay,
                    lr_schedule=cfg.geopath_lr_schedule, grad_clip=cfg.geopath_grad_clip,
                    progress=progress, desc=f"{self.name} paths", history=history, prefix="geopath_",
                    stop=best, sync_every=cfg.geopath_eval_every)["geopath_loss"])
                if best is not None:
                    best.restore()
            # ---- stage 2: flow matching on the frozen learned paths ----------------------------------------
            for p in self.interpolant.parameters():
                p.requires_grad_(False)
            # stage 2's held-out cells (flow_val_fraction > 0): stage 1's split when the fractions agree
            split2 = None
            if cfg.flow_val_fraction > 0:
                split2 = geo_split if (geo_split is not None and cfg.flow_val_fraction == cfg.geopath_val_fraction) \
                    else [_split(len(x), cfg.flow_val_fraction, np.random.default_rng(rng.integers(2**63)))
                          for x in data.X]
                if not all(len(v) > 0 for _, v in split2):
                    split2 = None
            tr2 = None if split2 is None else [(split2[k][0], split2[k + 1][0]) for k in range(n_int)]
            # stage 2 draws on from stage 1's samplers when both train on the same cells (the same coupling): their
            # plans are not solved twice (on EB four full plans, on hematopoiesis 80 block plans at the defaults)
            if split2 is not geo_split:
                for smp in samplers:
                    smp.close()
                samplers = []
            samplers = samplers or [sampler(k, *(tr2[k] if tr2 else ())) for k in range(n_int)]
            snaps2 = [(X[k], X[k + 1]) if tr2 is None else
                      (X[k][torch.from_numpy(tr2[k][0]).to(device)], X[k + 1][torch.from_numpy(tr2[k][1]).to(device)])
                      for k in range(n_int)]
            fval = None
            if split2 is not None:  # fixed held-out samples: OT pairs of held-out cells, times, points, noise
                vi, vs = held_out(split2)
                try:
                    nv = 4 * B
                    x0s, x1s, _ = draw(vs, vi, nv)
                finally:
                    for v in vs:
                        v.close()
                gv = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
                s = torch.rand(n_int * nv, device=device, generator=gv)
                t0 = torch.as_tensor(np.repeat(tau[:-1], nv), dtype=torch.float32, device=device)
                dt = torch.as_tensor(np.repeat(np.diff(tau), nv), dtype=torch.float32, device=device)
                with torch.no_grad():
                    xt, ut = self.interpolant.point_and_velocity(torch.cat(x0s), torch.cat(x1s), s, t0, dt)
                fval = (xt + cfg.sigma * torch.randn(xt.shape, device=device, generator=gv), t0 + s * dt,
                        ut / dt[:, None])

            def flow_val_loss():
                with torch.no_grad():  # (averaged over the ranks of a data-parallel fit: every rank keeps the same)
                    return float(distributed.mean(torch.mean((self.net(fval[0], fval[1]) - fval[2]) ** 2)))

            fbest = None if fval is None else KeepBest(self.net, flow_val_loss, every=cfg.flow_eval_every,
                                                       patience=cfg.flow_patience, history=history,
                                                       key="flow_val_loss")
            chunk = max(1, min(cfg.chunk_steps, n_steps))
            buf: dict[str, torch.Tensor] = {}

            def steps_major(parts, m):  # per-interval (m * B, ...) -> (m * n_int * B, ...), interval-major per step
                return torch.stack([p.reshape(m, B, *p.shape[1:]) for p in parts], 1).reshape(m * n_int * B, -1)

            def refill(n):
                # pairs, times, noise and the frozen interpolant's points and velocities for the next n steps at once;
                # each path sample serves path_reuse of these steps (in shuffled order, fresh noise each time)
                m = -(-n // cfg.path_reuse)
                x0s, x1s, pairs = draw(samplers, tr2, m * B)
                x0, x1 = steps_major(x0s, m), steps_major(x1s, m)
                s = torch.rand(m * n_int * B, device=device, generator=gen)
                t0, dt = t0_all.repeat(m), dt_all.repeat(m)
                with torch.no_grad():
                    # without the time input phi(x0, x1) depends on the pair only, and a chunk's m * B draws per
                    # interval come from a few plans with at most n0 + n1 - 1 pairs each: phi is evaluated once per
                    # distinct pair (on EB 12,800 draws per interval and chunk hit about 1,100 pairs) and gathered
                    phi = None if self.interpolant.use_time else steps_major(_phi_per_pair(
                        self.interpolant, snaps2, pairs, device), m)
                    xt, ut = self.interpolant.point_and_velocity(x0, x1, s, t0, dt, phi=phi)
                order = torch.randperm(m * cfg.path_reuse, generator=gen, device=device)[:n] % m
                xt, ut = xt.reshape(m, n_int * B, d)[order], (ut / dt[:, None]).reshape(m, n_int * B, d)[order]
                noise = torch.randn(xt.shape, device=device, generator=gen)
                buf["x"] = xt + cfg.sigma * noise
                buf["u"] = ut
                buf["t"] = (t0 + s * dt).reshape(m, n_int * B)[order]

            def fm_loss(step):
                j = step % chunk
                if j == 0:
                    refill(min(chunk, n_steps - step))
                pred = self.net(buf["x"][j], buf["t"][j])
                return {"loss": torch.mean((pred - buf["u"][j]) ** 2)}

            train(self.net.parameters(), fm_loss, n_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  lr_schedule=cfg.lr_schedule, progress=progress, desc=f"{self.name}", history=history,
                  stop=fbest)
            if fbest is not None and fbest.restore():
                self._flow_best = (fbest.step, flow_val_loss())  # the kept field's held-out loss, recomputed
        finally:
            for smp in samplers:
                smp.close()
            for p in self.interpolant.parameters():
                p.requires_grad_(True)
        return history
