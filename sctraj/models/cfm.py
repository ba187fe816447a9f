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

Defaults, and why (the same for every data set; measured in ``benchmarks/results/torchcfm.md``, ``throughput.md``):

* Network 3 x 64 SELU, AdamW (lr 1e-3, weight decay 1e-5), ``sigma = 0.1``: the settings of the paper's
  single-cell experiments and of torchcfm's runner. ``fit_flow`` centres the cells and divides by one global scale,
  so ``sigma = 0.1`` is the same relative width on standardised EB PCs, the 2-d hematopoiesis embedding and the 4-d
  iPSC data, with no per-data tuning.
* ``batch_size = 256`` pairs *per interval* per step and ``n_steps = 2000``: every interval gets 512,000 pairs,
  at least what torchcfm's runner gives each interval of a 3-interval split (5000 x 256 over all intervals), and
  more for longer time courses. A step costs one small MLP on ``n_intervals x 256`` rows, so the default fit takes
  a few seconds of CPU on the bundled data.
* Couplings: two snapshots with at most ``ot_full_size = 1024`` cells each (every interval of EB and iPSC) are
  coupled by one exact OT plan on all their cells, solved once - the plan that minibatch OT approximates, at no
  per-step cost. Larger snapshots (hematopoiesis: 3,781 and 5,788 cells) use exact plans on random 512 x 512
  blocks, each serving 25 steps and prepared in a background thread while the network trains: one 512-block solve
  costs about 5 solves of 256 x 256, so OT costs about a fifth of a 256-minibatch solve per step, and on
  hematopoiesis (held-out day 4, seed 0) this gave the same W1 as 1024-blocks every 50 steps (0.421 vs 0.422) at
  1/2.7 of the CPU time. Other settings tried there (W1, mean of seeds 0 and 1): 512-blocks every 50 steps 0.418,
  256-blocks every 10 steps 0.422, fresh 256-blocks every step (torchcfm's choice) 0.397 at three times the CPU
  time of the default (0.408). SB-CFM refreshes its (costlier, blurrier) entropic block plans every 100 steps
  (hematopoiesis W1 0.388 vs 0.405 every 25 steps, at 0.4x the CPU time); they are solved by epsilon scaling
  over POT's Sinkhorn in single precision, to an L1 marginal error of 1e-4, see
  :func:`sctraj.engine.couplings.entropic_plan`.
* ``num_threads = 1`` while training: see :mod:`sctraj.engine.trainer`.
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
        Cells per side of one block OT plan, used when a snapshot has more than ``ot_full_size`` cells (memory
        ``block^2`` floats).
    ot_refresh
        Training steps served by one block plan before the next (prepared in the background) replaces it.
    ot_full_size
        Consecutive snapshots with at most this many cells each are coupled by one exact plan on all their cells,
        solved once per fit.
    num_threads
        Torch CPU threads while training (``0`` keeps torch's setting). Small MLPs gain nothing from threading and
        lose a lot to it on shared CPUs.
    chunk_steps
        Pair indices, times and noise are drawn for this many steps at once (throughput only; results depend on it
        only through the order of random draws).
    """

    sigma: float = 0.1
    ot_block_size: int = 512
    ot_refresh: int = 25
    ot_full_size: int = 1024
    num_threads: int = 1
    chunk_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints(("ot_block_size", "ot_refresh", "ot_full_size", "chunk_steps"))
        if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int | np.integer) or \
                self.num_threads < 0:
            raise ValueError(f"num_threads must be a non-negative integer (0 keeps torch's setting), "
                             f"got {self.num_threads!r}.")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}.")


class FlowMatchingMethod(BaseMethod):
    """Shared machinery of the simulation-free CFM family; subclasses choose the coupling and the path."""

    Config = CFMConfig
    default_n_steps = 2000
    default_batch_size = 256

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        self.net = VectorField(dim, width=config.width, depth=config.depth, act=config.activation,
                               cond_dim=self.cond_dim(), n_out=self.n_outputs())

    # hooks ---------------------------------------------------------------------------------------------------
    def cond_dim(self) -> int:
        return 0

    def n_outputs(self) -> int:
        """Outputs of the network (the velocity's ``dim``; SB-CFM adds the score)."""
        return self.dim

    def losses(self, pred: torch.Tensor, target: torch.Tensor, s: torch.Tensor,
               noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss from the network output ``pred``, the velocity target (per unit of global time), the local
        times ``s`` and the path noise."""
        return {"loss": torch.mean((pred - target) ** 2)}

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
                a=None if w is None else w[k], b=None if w is None else w[k + 1], full_size=cfg.ot_full_size,
            )
            for k in range(len(data.X) - 1)
        ]

    def fit(self, data, *, n_steps, batch_size, rng, device, progress):
        samplers = self.make_samplers(data, batch_size, rng)
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        n_int, B, d = len(samplers), batch_size, data.dim
        # one tensor with every cell; pairs are global row indices, so a step is two gathers whatever the intervals
        X_all = torch.as_tensor(np.concatenate(data.X), device=device)
        offset = np.cumsum([0] + [len(x) for x in data.X])
        tau = np.asarray(data.tau, np.float64)
        t0 = torch.as_tensor(np.repeat(tau[:-1], B), dtype=X_all.dtype, device=device)
        dt = torch.as_tensor(np.repeat(np.diff(tau), B), dtype=X_all.dtype, device=device)
        path = self.path()
        chunk = max(1, min(self.config.chunk_steps, n_steps))
        buf: dict[str, torch.Tensor] = {}

        def refill(n: int) -> None:
            # indices, times and noise for the next n steps at once (one host-to-device copy per chunk)
            i0, i1, _ = couplings.take_chunk(samplers, offset, n, B)
            buf["i0"] = torch.from_numpy(i0).to(device, non_blocking=True)
            buf["i1"] = torch.from_numpy(i1).to(device, non_blocking=True)
            buf["s"] = torch.rand((n, n_int * B), device=device, generator=gen, dtype=X_all.dtype)
            buf["noise"] = torch.randn((n, n_int * B, d), device=device, generator=gen, dtype=X_all.dtype)

        def loss_fn(step):
            j = step % chunk
            if j == 0:
                refill(min(chunk, n_steps - step))
            s = buf["s"][j]
            xt, ut = path.sample(X_all[buf["i0"][j]], X_all[buf["i1"][j]], s, buf["noise"][j])
            pred = self.net(xt, t0 + s * dt)
            return self.losses(pred, ut / dt[:, None], s, buf["noise"][j])

        try:
            return train(self.parameters(), loss_fn, n_steps, lr=self.config.lr, weight_decay=self.config.weight_decay,
                         lr_schedule=self.config.lr_schedule,
                         progress=progress, desc=f"{self.name}", num_threads=self.config.num_threads or None)
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
    snapshots - on the full data when both snapshots have at most ``ot_full_size`` cells, otherwise on random blocks of
    ``ot_block_size`` cells (minibatch OT).
    """

    def plan_fn(self):
        return couplings.exact_plan


@dataclass(frozen=True, kw_only=True)
class SBCFMConfig(CFMConfig):
    """Settings of ``sbcfm``: those of :class:`CFMConfig`, plus the score, with block plans kept for 100 steps.

    Attributes
    ----------
    sigma
        Diffusion of the Brownian bridges, in units of the embedding's overall standard deviation: a cell's path
        between two consecutive fitted snapshots spreads around the straight line with standard deviation
        ``sigma * sqrt(s (1 - s))`` at fraction ``s`` of the interval, whatever the interval's length. It also sets
        the entropic regularisation ``2 sigma^2`` of the plan. Must be positive. The default 0.1 is the paper's
        single-cell setting; a measured choice (``benchmarks/bench_sbcfm.py --part sigma``) is not finished
        (``benchmarks/results/sbcfm_sigma.md``): sigma = 1 helped on hematopoiesis only.
    score
        Learn the score ``grad log p_t`` jointly with the drift ([SF]2M), so that ``stochastic=True`` can sample the
        SDE. ``False`` learns the probability-flow ODE only (sbcfm's earlier behaviour, a little cheaper).
    ot_refresh
        An entropic 512-block plan costs several exact ones, and its blurrier coupling loses less from being reused,
        so SB-CFM refreshes its block plans four times less often than OT-CFM.
    """

    ot_refresh: int = 100
    score: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sigma > 0:
            raise ValueError(f"sbcfm: sigma must be > 0 (the diffusion of the Schrodinger bridge), got {self.sigma!r}.")
        if not isinstance(self.score, bool | np.bool_):
            raise ValueError(f"sbcfm: score must be True or False, got {self.score!r}.")

    @classmethod
    def from_saved(cls, params):
        # files written before the score existed hold a drift-only network
        return cls.from_params({"score": False, **params})


@register_method("sbcfm")
class SBCFM(FlowMatchingMethod):
    """Schrodinger-bridge conditional flow matching with the score: [SF]2M.

    Tong, Malkin, Fatras, Atanackovic, Zhang, Huguet, Wolf & Bengio (2024). Simulation-free Schrodinger bridges via
    score and flow matching. AISTATS 2024. arXiv:2307.03672. (SB-CFM: Tong et al. 2024, arXiv:2302.00482, Alg. 3.)

    Pairs are drawn from the entropic OT plan with regularisation ``2 sigma^2`` (the static Schrodinger bridge for a
    Brownian reference process of diffusion ``sigma`` per interval) and joined by Brownian bridges
    ``x_s = (1-s) x0 + s x1 + sigma sqrt(s(1-s)) eps``. One network with two heads is regressed on

    * the bridge's probability-flow velocity ``u_s = (1-2s) / (2s(1-s)) (x_s - mu_s) + x1 - x0`` (drift ``v``), and
    * its score ``grad log p_s(x | x0, x1) = -eps / (sigma sqrt(s(1-s)))`` with the paper's weighting
      ``lambda(s) = 2 sigma_s / sigma^2``: the head ``h`` minimises ``|| lambda(s) h + eps ||^2``, so ``h`` learns
      ``sigma^2 / 2 * grad log p``, the drift correction of the SDE.

    ``stochastic=False`` (predict / interpolate) integrates the ODE ``dx = v dt``; ``stochastic=True`` the SDE
    ``dx = [v + g^2/2 grad log p] dt + g dW`` by Euler-Maruyama (backward in time ``dx = [v - g^2/2 grad log p] dt +
    g dW``), both with the marginals of the bridge. In the time units of the fit the diffusion of interval ``k`` is
    ``g_k = sigma * scale / sqrt(t_(k+1) - t_k)`` (``scale``: the embedding's overall standard deviation): the same
    bridge width in every interval, as in training.

    Deviations from the paper and its reference code (torchcfm's ``SchrodingerBridgeConditionalFlowMatcher`` and
    the [SF]2M notebooks), and why: drift and score share one MLP trunk (two output heads) instead of two networks,
    which keeps a fit's cost near OT-CFM's (issue 15: <= 1.5x) - the loss is the paper's sum of the two terms;
    plans are solved once on all cells (small snapshots) or on 512-cell blocks reused for ``ot_refresh`` steps
    instead of on every minibatch; several snapshots share one time-conditioned network (each interval its own
    bridge of width ``sigma``).
    """

    Config = SBCFMConfig

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        tau = self.meta.get("tau")
        self.register_buffer("_knots", torch.as_tensor(tau if tau is not None else [0.0, 1.0], dtype=torch.float32),
                             persistent=False)

    @classmethod
    def prepare(cls, adata, tc, data, params, *, population_key):
        return {"tau": [float(x) for x in data.tau]}

    def n_outputs(self) -> int:
        return 2 * self.dim if self.config.score else self.dim

    def plan_fn(self):
        return partial(couplings.entropic_plan, reg=2 * self.config.sigma**2)

    def path(self):
        return BrownianBridgePath(self.config.sigma)

    def losses(self, pred, target, s, noise):
        d = self.dim
        flow = torch.mean((pred[:, :d] - target) ** 2)
        if not self.config.score:
            return {"loss": flow}
        lam = 2 * torch.sqrt(s * (1 - s)) / self.config.sigma
        score = torch.mean((lam[:, None] * pred[:, d:] + noise) ** 2)
        return {"loss": flow + score, "flow_loss": flow, "score_loss": score}

    # the learned dynamics ------------------------------------------------------------------------------------
    def velocity(self, x, tau, cond=None):
        return self.net(x, tau, cond)[:, : self.dim]

    @property
    def stochastic(self) -> bool:
        return bool(self.config.score)

    def _interval_length(self, tau: torch.Tensor, forward: bool) -> torch.Tensor:
        k = self._knots.to(tau.device, tau.dtype)
        # forward steps starting on a snapshot belong to the interval after it, backward steps to the one before
        i = torch.bucketize(tau.contiguous(), k, right=forward) - 1
        i = i.clamp(0, len(k) - 2)
        return k[i + 1] - k[i]

    def sde_drift(self, x, tau, cond=None, forward: bool = True):
        if not self.stochastic:
            raise ValueError("This sbcfm model was fitted without the score (score=False); refit with score=True "
                             "to sample its SDE.")
        tau = tau.reshape(-1).expand(x.shape[0]) if tau.numel() == 1 else tau
        out = self.net(x, tau)
        corr = out[:, self.dim :] / self._interval_length(tau.to(x.dtype), forward)[:, None]  # g^2/2 grad log p
        return out[:, : self.dim] + corr if forward else out[:, : self.dim] - corr

    def diffusion(self, tau: float) -> float:
        k = self._knots.cpu().numpy().astype(float)
        i = int(np.clip(np.searchsorted(k, tau, side="right") - 1, 0, len(k) - 2))
        return float(self.config.sigma / np.sqrt(k[i + 1] - k[i]))

    def diffusion_knots(self) -> list[float]:
        return [float(v) for v in self._knots.cpu().tolist()]
