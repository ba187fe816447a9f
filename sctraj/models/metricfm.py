"""Metric Flow Matching: flow matching along learned approximate geodesics of a data-dependent metric.

Kapusniak, Potaptchik, Reu, Zhang, Tong, Bronstein, Bose & Di Giovanni (2024). Metric Flow Matching for Smooth
Interpolations on the Data Manifold. NeurIPS 2024. arXiv:2405.14780.

Straight interpolants ``(1-s) x0 + s x1`` cut through regions where no cells are. Metric FM (MFM) bends them towards
the data with a Riemannian metric ``G(x) = (diag(h(x)) + eps)^-1`` that is cheap on the data and expensive off it
(LAND or RBF, :mod:`sctraj.engine.metrics`), in two stages (Algorithm 1 of the paper):

1. **Interpolant** (paper Eq. 4 / 11): ``x_s = (1-s) x0 + s x1 + gamma(s) phi_eta(x0, x1, t)`` with
   ``gamma(s) = 1 - s^2 - (1-s)^2 = 2 s (1-s)`` (zero at both ends, so the path always joins ``x0`` to ``x1``) and an
   MLP ``phi_eta``. ``eta`` minimises the kinetic energy ``E[xdot_s^T G(x_s) xdot_s]`` over coupled pairs and
   ``s ~ U(0, 1)``; ``xdot_s`` is the exact derivative in ``s`` (forward-mode AD, :func:`torch.func.jvp`).
2. **Flow matching** (Eq. 12): with ``phi_eta`` frozen, a time-conditioned field ``v_theta`` regresses ``xdot_s`` at
   ``x_s + sigma eps`` (the Gaussian width of OT-CFM).

Pairs come from the exact OT plan with Euclidean cost between consecutive snapshots (OT-MFM, the paper's default; the
metric is not used for the coupling) or from the independent coupling (I-MFM, ``coupling="independent"``). As in the
paper's single-cell experiments one metric is built per interval from the cells of its two snapshots, and one field
is trained over all intervals (local time ``s`` of interval ``[tau_k, tau_k+1]`` is global time
``t = tau_k + s (tau_k+1 - tau_k)``; velocities are divided by the interval length). ``phi_eta`` is shared by all
intervals and sees the global time, which tells intervals apart. Each interval's energy is divided by its value for
the straight interpolant, so intervals with very different metric scales weigh equally.

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
from ..engine.trainer import train
from ._base import BaseMethod, FitData, MethodConfig
from ._registry import register_method

COUPLINGS = ("ot", "independent")


@dataclass(frozen=True, kw_only=True)
class MetricFMConfig(MethodConfig):
    """Settings of ``metricfm``.

    Attributes
    ----------
    sigma
        Gaussian width around the learned path in the flow-matching stage (as in OT-CFM).
    coupling
        ``"ot"`` (exact minibatch OT, Euclidean cost: OT-MFM) or ``"independent"`` (I-MFM).
    metric
        ``"land"``, ``"rbf"`` or ``"auto"`` (LAND up to ``land_max_dims`` dimensions, RBF above).
    land_max_dims
        Largest dimension for which ``metric="auto"`` picks LAND.
    land_gamma
        LAND kernel bandwidth, in units of the embedding's overall standard deviation, or ``"scott"`` (default): per
        interval ``land_gamma_scale * n ** (-1 / (d + 4))`` for its ``n`` cells in ``d`` dimensions (Scott's rule for
        a kernel density estimate, which LAND's ``h`` is a weighted form of). The rule narrows the kernel where cells
        are dense or few-dimensional, so that paths follow thin structures, and widens it for sparse,
        higher-dimensional data. The paper sets the bandwidth by hand per dataset.
    land_gamma_scale
        Multiplier of Scott's rule. ``0.65`` reproduces the fixed bandwidth ``0.3`` that was best on the bundled EB
        intervals (1,100 cells in 5 dimensions: ``0.65 * 1100 ** (-1/9) = 0.30``).
    land_max_points
        At most this many landmark cells per interval for LAND (memory ``batch x land_max_points``).
    rbf_n_centers
        k-means centres per interval for the RBF metric.
    rbf_kappa
        RBF bandwidth multiplier (``lambda_k = 1 / (2 (kappa sigma_k)^2)``).
    metric_eps
        ``eps`` of ``G = (diag(h) + eps)^-1`` (the paper's ``rho`` / ``epsilon``).
    geopath_steps
        Training steps of the interpolant (stage 1); ``None`` uses a quarter of the flow-matching steps.
    geopath_lr
        Learning rate of the interpolant.
    ot_block_size, ot_refresh
        Block OT settings, as in ``otcfm``.
    """

    sigma: float = 0.1
    coupling: str = "ot"
    metric: str = "auto"
    land_max_dims: int = 10
    land_gamma: float | str = "scott"
    land_gamma_scale: float = 0.65
    land_max_points: int = 4096
    rbf_n_centers: int = 100
    rbf_kappa: float = 1.0
    metric_eps: float = 1e-3
    geopath_steps: int | None = None
    geopath_lr: float = 1e-3
    ot_block_size: int = 1024
    ot_refresh: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}.")
        resolve_metric(self.metric, 1, 1)
        g = self.land_gamma
        if isinstance(g, str):
            if g != "scott":
                raise ValueError(f"land_gamma must be a positive number or 'scott', got {g!r}.")
        elif isinstance(g, bool) or not isinstance(g, int | float) or not np.isfinite(g) or g <= 0:
            raise ValueError(f"land_gamma must be a positive number or 'scott', got {g!r}.")
        if not (isinstance(self.land_gamma_scale, int | float) and np.isfinite(self.land_gamma_scale)
                and self.land_gamma_scale > 0):
            raise ValueError(f"land_gamma_scale must be a positive number, got {self.land_gamma_scale!r}.")
        if self.geopath_steps is not None and (isinstance(self.geopath_steps, bool) or self.geopath_steps < 0):
            raise ValueError(f"geopath_steps must be None or a non-negative integer, got {self.geopath_steps!r}.")
        for name in ("land_max_points", "rbf_n_centers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")


def land_bandwidth(cfg: MetricFMConfig, n_cells: int, dim: int) -> float:
    """LAND bandwidth of an interval with ``n_cells`` cells (both snapshots) in ``dim`` dimensions (internal units)."""
    if cfg.land_gamma == "scott":
        return float(cfg.land_gamma_scale * max(int(n_cells), 2) ** (-1.0 / (dim + 4)))
    return float(cfg.land_gamma)


class GeodesicInterpolant(nn.Module):
    """``x_s = (1-s) x0 + s x1 + gamma(s) phi(x0, x1, t)`` with ``gamma(s) = 2 s (1-s)`` and an MLP ``phi``."""

    def __init__(self, dim: int, *, width: int, depth: int, act: str) -> None:
        super().__init__()
        self.phi = mlp(2 * dim + 1, dim, width, depth, act)

    @staticmethod
    def gamma(s: torch.Tensor) -> torch.Tensor:
        return 1.0 - s**2 - (1.0 - s) ** 2

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Point at local time ``s`` (per pair) whose global time is ``t`` (per pair)."""
        s2, t2 = s.reshape(-1, 1), t.reshape(-1, 1)
        return (1 - s2) * x0 + s2 * x1 + self.gamma(s2) * self.phi(torch.cat([x0, x1, t2], 1))

    def point_and_velocity(
        self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, t0: torch.Tensor, dt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_s, d x_s / d s)`` with the global time ``t0 + s dt`` moving along; exact forward-mode derivative.

        Forward-mode AD (the primitive behind :func:`torch.func.jvp`) with tangent 1 on ``s``; differentiable with
        respect to the parameters, which stage 1 needs.
        """
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            sd = fwad.make_dual(s, torch.ones_like(s))
            out = fwad.unpack_dual(self(x0, x1, sd, t0 + sd * dt))
        return out.primal, out.tangent


@register_method("metricfm")
class MetricFM(BaseMethod):
    """Metric Flow Matching (OT-MFM / I-MFM; Kapusniak et al. 2024, arXiv:2405.14780).

    Learns approximate geodesics of a data-dependent metric (LAND or RBF) between OT-coupled cells of consecutive
    snapshots, then fits a time-conditioned vector field to the velocities of those curved paths. See the module
    docstring for the two stages; :meth:`paths` returns the learned interpolants.
    """

    Config = MetricFMConfig

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        cfg = config
        self.net = VectorField(dim, width=cfg.width, depth=cfg.depth, act=cfg.activation)
        self.interpolant = GeodesicInterpolant(dim, width=cfg.width, depth=cfg.depth, act=cfg.activation)
        kind = self.meta.get("metric", resolve_metric(cfg.metric, dim, cfg.land_max_dims))
        sizes = [int(n) for n in self.meta.get("interval_cells", [])]
        if kind == "land":
            ms = [LANDMetric(dim, min(n, cfg.land_max_points), gamma=land_bandwidth(cfg, n, dim), eps=cfg.metric_eps)
                  for n in sizes]
        else:
            ms = [RBFMetric(dim, min(n, cfg.rbf_n_centers), kappa=cfg.rbf_kappa, eps=cfg.metric_eps) for n in sizes]
        self.metric_kind = kind
        self.metrics = nn.ModuleList(ms)
        self.register_buffer("tau", torch.as_tensor(self.meta.get("tau", [0.0, 1.0]), dtype=torch.float32))

    # -- hooks -------------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, adata, tc, data, params, *, population_key):
        cfg = cls.Config.from_params(dict(params))
        return {
            "metric": resolve_metric(cfg.metric, data.dim, cfg.land_max_dims),
            "interval_cells": [int(len(data.X[k]) + len(data.X[k + 1])) for k in range(len(data.X) - 1)],
            "tau": [float(t) for t in data.tau],
        }

    def report(self, model, data):
        out = {"metric": self.metric_kind}
        if self.metric_kind == "land":  # the bandwidth each interval used (internal units)
            out["land_gamma"] = np.array([m.gamma for m in self.metrics], float)
        return out

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
    def fit(self, data: FitData, *, n_steps, batch_size, rng, device, progress):
        cfg = self.config
        n_int = len(data.X) - 1
        if len(self.metrics) != n_int:
            raise ValueError(
                f"This metricfm model was built for {len(self.metrics)} intervals but got {n_int}; "
                "fit it through sctraj.tl.fit_flow."
            )
        plan = couplings.exact_plan if cfg.coupling == "ot" else None
        samplers = [
            couplings.PairSampler(
                data.X[k], data.X[k + 1], plan, batch_size=batch_size, block_size=cfg.ot_block_size,
                refresh=cfg.ot_refresh, rng=np.random.default_rng(rng.integers(2**63)),
            )
            for k in range(n_int)
        ]
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        X = [torch.as_tensor(x, device=device) for x in data.X]
        tau = [float(t) for t in data.tau]
        # metrics, one per interval, from the cells of its two snapshots
        for k, m in enumerate(self.metrics):
            Xk = np.concatenate([data.X[k], data.X[k + 1]])
            sub = np.random.default_rng(rng.integers(2**63))
            if isinstance(m, RBFMetric):
                m.fit(Xk, sub)
            else:
                m.fit(Xk, sub)
        distributed.broadcast_module(self.metrics)  # data-parallel fits: every rank uses rank 0's metrics

        def batch():
            x0s, x1s, ss, t0s, dts, ks = [], [], [], [], [], []
            for k, smp in enumerate(samplers):
                p = smp.next()
                x0s.append(X[k][torch.from_numpy(p.i0).to(device)])
                x1s.append(X[k + 1][torch.from_numpy(p.i1).to(device)])
                n = len(p.i0)
                ss.append(torch.rand(n, device=device, generator=gen))
                t0s.append(torch.full((n,), tau[k], device=device))
                dts.append(torch.full((n,), tau[k + 1] - tau[k], device=device))
                ks.append(n)
            return (torch.cat(x0s), torch.cat(x1s), torch.cat(ss), torch.cat(t0s), torch.cat(dts), ks)

        def energies(xt, ut, ks):
            out, pos = [], 0
            for k, n in enumerate(ks):
                out.append(self.metrics[k].energy(xt[pos : pos + n], ut[pos : pos + n]).mean())
                pos += n
            return torch.stack(out)

        history: dict[str, list[float]] = {}
        try:
            # ---- stage 1: approximate geodesics (minimise the kinetic energy under G) -------------------------
            g_steps = max(1, n_steps // 4) if cfg.geopath_steps is None else int(cfg.geopath_steps)
            if g_steps > 0:
                with torch.no_grad():  # energy of the straight interpolant, per interval (normaliser)
                    e0 = torch.zeros(n_int, device=device)
                    n_ref = 4
                    for _ in range(n_ref):
                        x0, x1, s, _, _, ks = batch()
                        xt = (1 - s[:, None]) * x0 + s[:, None] * x1
                        e0 += energies(xt, x1 - x0, ks) / n_ref
                    e0 = distributed.mean(e0).clamp_min(1e-12)  # (averaged over the ranks of a data-parallel fit)

                def geo_loss(step):
                    x0, x1, s, t0, dt, ks = batch()
                    xt, ut = self.interpolant.point_and_velocity(x0, x1, s, t0, dt)
                    rel = energies(xt, ut, ks) / e0
                    return {"loss": rel.mean()}

                train(self.interpolant.parameters(), geo_loss, g_steps, lr=cfg.geopath_lr,
                      weight_decay=cfg.weight_decay, progress=progress, desc=f"{self.name} paths",
                      history=history, prefix="geopath_")
            # ---- stage 2: flow matching on the frozen learned paths ----------------------------------------
            for p in self.interpolant.parameters():
                p.requires_grad_(False)

            def fm_loss(step):
                x0, x1, s, t0, dt, _ = batch()
                with torch.no_grad():
                    xt, ut = self.interpolant.point_and_velocity(x0, x1, s, t0, dt)
                noise = torch.randn(x0.shape, device=device, generator=gen)
                xt = xt + cfg.sigma * noise
                pred = self.net(xt, t0 + s * dt)
                return {"loss": torch.mean((pred - ut / dt[:, None]) ** 2)}

            train(self.net.parameters(), fm_loss, n_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  lr_schedule=cfg.lr_schedule, progress=progress, desc=f"{self.name}", history=history)
        finally:
            for s in samplers:
                s.close()
            for p in self.interpolant.parameters():
                p.requires_grad_(True)
        return history
