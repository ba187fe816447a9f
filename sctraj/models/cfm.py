"""Conditional flow matching with independent, exact-OT and Schrodinger-bridge couplings.

Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf & Bengio (2024). Improving and generalizing flow-based
generative models with minibatch optimal transport. TMLR. arXiv:2302.00482.

All three regress a time-conditioned network ``v(x, t)`` on the conditional velocity ``u_t(x | x0, x1)`` of a path
between coupled cells (Algorithm 1 of the paper; Algorithm 3 for SB-CFM):

* ``icfm``  - independent coupling ``q(x0) q(x1)``, straight path ``N((1-t) x0 + t x1, sigma^2)``, ``u_t = x1 - x0``.
* ``otcfm`` - coupling from the exact OT plan (squared Euclidean cost), same straight path.
* ``sbcfm`` - entropic OT plan with regularisation ``2 sigma^2`` and the Brownian bridge
  ``N((1-t) x0 + t x1, sigma^2 t (1-t))`` with ``u_t = (1-2t)/(2t(1-t)) (x - mu_t) + x1 - x0``.

Over several snapshots one field is trained on all consecutive intervals ``[t_k, t_{k+1}]`` at once; the local time of
each interval is mapped to the global time and the conditional velocity divided by the interval length.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ..engine import couplings
from ..engine.nn import VectorField
from ..engine.paths import BrownianBridgePath, StraightPath
from ..engine.trainer import train
from ._base import BaseMethod, FitData, MethodConfig
from ._registry import register_method


@dataclass(frozen=True, kw_only=True)
class CFMConfig(MethodConfig):
    """Settings of ``icfm`` / ``otcfm`` / ``sbcfm``.

    Attributes
    ----------
    sigma
        Width of the Gaussian path (in units of the embedding's overall standard deviation). For ``sbcfm`` it is
        the bridge's diffusion and sets the entropic regularisation ``2 sigma^2``.
    ot_block_size
        Largest number of cells per side of one OT plan (memory ``block^2`` floats).
    ot_refresh
        Training steps served by one block plan when a time point has more than ``ot_block_size`` cells.
    """

    sigma: float = 0.1
    ot_block_size: int = 1024
    ot_refresh: int = 50


class FlowMatchingMethod(BaseMethod):
    """Shared machinery of the simulation-free CFM family; subclasses choose the coupling and the path."""

    Config = CFMConfig

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        self.net = VectorField(dim, width=config.width, depth=config.depth, act=config.activation,
                               cond_dim=self.cond_dim())

    # hooks ---------------------------------------------------------------------------------------------------
    def cond_dim(self) -> int:
        return 0

    def plan_fn(self) -> couplings.PlanFn | None:
        """``None`` means the independent coupling."""
        return None

    def path(self) -> StraightPath:
        return StraightPath(self.config.sigma)

    # BaseMethod ----------------------------------------------------------------------------------------------
    def velocity(self, x, tau, cond=None):
        return self.net(x, tau, cond)

    def make_samplers(self, data: FitData, batch_size: int, rng: np.random.Generator) -> list[couplings.PairSampler]:
        cfg = self.config
        w = data.weights
        return [
            couplings.PairSampler(
                data.X[k], data.X[k + 1], self.plan_fn(), batch_size=batch_size, block_size=cfg.ot_block_size,
                refresh=cfg.ot_refresh, rng=np.random.default_rng(rng.integers(2**63)),
                a=None if w is None else w[k], b=None if w is None else w[k + 1],
            )
            for k in range(len(data.X) - 1)
        ]

    def fit(self, data, *, n_steps, batch_size, rng, device, progress):
        samplers = self.make_samplers(data, batch_size, rng)
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        X = [torch.as_tensor(x, device=device) for x in data.X]
        tau = [float(t) for t in data.tau]
        path = self.path()

        def loss_fn(step):
            xs, ts, us = [], [], []
            for k, smp in enumerate(samplers):
                p = smp.next()
                x0 = X[k][torch.from_numpy(p.i0).to(device)]
                x1 = X[k + 1][torch.from_numpy(p.i1).to(device)]
                s = torch.rand(len(x0), device=device, generator=gen)
                noise = torch.randn(x0.shape, device=device, generator=gen)
                xt, ut = path.sample(x0, x1, s, noise)
                dt = tau[k + 1] - tau[k]
                xs.append(xt)
                ts.append(tau[k] + s * dt)
                us.append(ut / dt)
            pred = self.net(torch.cat(xs), torch.cat(ts))
            return {"loss": torch.mean((pred - torch.cat(us)) ** 2)}

        try:
            return train(self.parameters(), loss_fn, n_steps, lr=self.config.lr, weight_decay=self.config.weight_decay,
                         progress=progress, desc=f"{self.name}")
        finally:
            for s in samplers:
                s.close()


@register_method("icfm")
class ICFM(FlowMatchingMethod):
    """Independent conditional flow matching (I-CFM; Tong et al. 2024, arXiv:2302.00482, Alg. 1).

    Pairs are drawn independently from consecutive snapshots; the path is straight with width ``sigma``.
    """


@register_method("otcfm")
class OTCFM(FlowMatchingMethod):
    """Optimal-transport conditional flow matching (OT-CFM; Tong et al. 2024, arXiv:2302.00482, Alg. 2 / Prop. 3.4).

    Pairs are drawn from the exact OT plan (squared Euclidean cost, POT network simplex) between consecutive
    snapshots - on the full data when it fits in ``ot_block_size``, otherwise on random blocks (minibatch OT).
    """

    def plan_fn(self):
        return couplings.exact_plan


@register_method("sbcfm")
class SBCFM(FlowMatchingMethod):
    """Schrodinger-bridge conditional flow matching (SB-CFM; Tong et al. 2024, arXiv:2302.00482, Alg. 3 / Prop. 3.5).

    Pairs are drawn from the entropic OT plan with regularisation ``2 sigma^2`` (log-domain Sinkhorn, POT) and joined
    by Brownian bridges of diffusion ``sigma``; the regression target is the bridge's conditional velocity. The
    learned field is the probability-flow ODE of the Schrodinger bridge.
    """

    Config = CFMConfig

    def plan_fn(self):
        return partial(couplings.entropic_plan, reg=2 * self.config.sigma**2)

    def path(self):
        return BrownianBridgePath(self.config.sigma)
