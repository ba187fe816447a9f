"""Meta Flow Matching: a vector field conditioned on an embedding of the whole initial population.

Atanackovic, Zhang, Amos, Blanchette, Lee, Bengio, Tong & Neklyudov (2025). Meta Flow Matching: Integrating Vector
Fields on the Wasserstein Manifold. ICLR 2025. arXiv:2408.14608.

Many systems evolve according to their own composition: cells signal to their neighbours, so a replicate, a patient
or a culture moves according to where all of its cells are. Meta FM learns such a density-dependent field by
amortising flow matching over populations ``i``:

    L_MFM(omega, theta) = E_i E_{(x0, x1) ~ pi(. | i)} E_t || d/dt f_t(x0, x1) - v_t(f_t(x0, x1) | phi(p_0^i; theta), c^i; omega) ||^2

with ``f_t = (1 - t) x0 + t x1`` (paper Eq. 11, Algorithm 1). ``phi`` embeds the population's cells at its first
time point ``p_0^i``: a GCN over their kNN graph, mean-pooled (:class:`~sctraj.engine.gnn.PopulationEncoder`), and
``c^i`` is an optional one-hot treatment. At prediction time (Algorithm 2) a new population is embedded from its own
source cells and pushed by the ODE, so populations never seen in training get their own dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..engine import couplings
from ..engine.gnn import PopulationEncoder, batch_graphs
from ..engine.nn import VectorField
from ..engine.paths import StraightPath
from ..engine.trainer import train
from ._base import BaseMethod, FitData, MethodConfig
from ._registry import register_method

_COUPLINGS = ("ot", "independent")
_SUBSET_SEED = 0


def source_subset(n: int, cap: int) -> np.ndarray:
    """Positions (sorted) of the source cells the encoder sees among a population's ``n`` source cells.

    All ``n`` when ``n <= cap``, otherwise a fixed pseudo-random subset of ``cap`` positions that depends only on
    ``n`` and ``cap``. Training and every output (velocities, trajectories, :func:`sctraj.tl.predict`) use this one
    rule on the population's cells in ``adata`` order, so a population gets the same embedding everywhere.
    """
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(_SUBSET_SEED).choice(n, size=cap, replace=False))



@dataclass(frozen=True, kw_only=True)
class MetaFMConfig(MethodConfig):
    """Settings of ``metafm``.

    Attributes
    ----------
    k
        Neighbours per cell in the population's kNN graph (clipped to the population size minus one). ``0`` gives a
        DeepSets encoder (each cell alone, then the mean).
    gnn_width, gnn_depth, gnn_activation
        Width (also the embedding dimension), number of GCN layers and hidden activation of the population encoder.
    coupling
        ``"ot"``: pairs from the exact OT plan between consecutive snapshots *within* each population (OT-CFM
        within a population; the paper's OT variants). ``"independent"``: independent pairs within each population
        (the paper's default training set-up).
    sigma
        Width of the Gaussian path around the straight interpolant, as for ``otcfm`` (``0`` = the paper's
        deterministic interpolant; 0.1 gave 7% lower W1 on unseen populations of ``simulate_populations``).
    max_population_cells
        The encoder sees at most this many source cells per population: a fixed pseudo-random subset chosen by
        ``source_subset`` from the population's source cells in ``adata`` order, the same rule in training
        and in every output, so a population has one embedding. The embedding is a mean over cells, so a subset
        estimates it; the cap keeps the cost of a training step and the memory of the kNN graphs independent of how
        many cells a population has.
    populations_per_step
        Populations embedded and trained on at each step (all of them when fewer); ``batch_size`` pairs are drawn
        per population and per interval.
    ot_block_size, ot_refresh
        As for ``otcfm``: largest OT plan per side, and steps served by one block plan for larger populations.
    num_threads
        Torch CPU threads while training (``0`` keeps torch's setting); 1 avoids spin-waiting threads slowing the
        small per-step operations on shared CPUs (see :mod:`sctraj.engine.trainer`).
    """

    width: int = 128
    k: int = 10
    gnn_width: int = 64
    gnn_depth: int = 3
    gnn_activation: str = "relu"
    coupling: str = "ot"
    sigma: float = 0.1
    populations_per_step: int = 8
    max_population_cells: int = 1024
    ot_block_size: int = 1024
    ot_refresh: int = 50
    num_threads: int = 1


@register_method("metafm")
class MetaFM(BaseMethod):
    """Meta Flow Matching (Atanackovic et al. 2025, arXiv:2408.14608).

    The field ``v(x, t | phi(p_0), c)`` is an MLP on the cell, the time, the population embedding ``phi(p_0)`` (a GCN
    over the kNN graph of the population's cells at its first fitted time point, mean-pooled) and an optional
    one-hot condition ``c`` (``condition_key``, e.g. the treatment). Pairs are drawn within each population, between
    its consecutive time points, from the exact OT plan (``coupling="ot"``) or independently.

    Encoder and field are trained **jointly**: every step embeds a random subset of populations with the current
    encoder and takes one AdamW step on both networks from the same loss. This is the paper's Algorithm 1 (both
    parameter sets are updated from ``grad L_MFM(omega, theta)`` at the same point). The authors' code alternates
    flow and encoder steps and reuses cached, detached embeddings in the flow steps, which saves GCN passes over very
    large populations on a GPU; here the kNN graphs are built once before training and a GCN pass costs
    ``O(cells x k x width)``, so recomputing the embedding every step is cheap and gives the encoder an exact,
    up-to-date gradient at every step instead of every other step.

    Which cells embed a population: in training, its cells at the first *fitted* time point at which it has cells
    (times in ``exclude_times`` are never used). Every output - ``fit_flow``'s velocities and trajectories,
    :func:`sctraj.tl.predict` and :func:`sctraj.tl.interpolate` - groups the cells by the
    model's ``population_key`` and embeds each population by the same rule from the AnnData it is given: its cells
    at the earliest fitted time point present there (so on the fitting data a population gets exactly its training
    embedding; for an unseen population, pass its source-time cells). Only a population with no cells at any fitted
    time is embedded from its earliest cells inside the fitted time range. Cells without a population label are an
    error (they are never pooled into a population of their own). Populations larger than
    ``max_population_cells`` are subsampled by ``source_subset``, the same rule everywhere.

    Inputs read by ``fit_flow`` (``**method_params``):

    * ``condition_key="<obs column>"``: optional condition of each population (e.g. the treatment), encoded one-hot
      and given to the field beside the population embedding; one value per population.
    """

    Config = MetaFMConfig
    needs_population = True
    default_n_steps = 2000
    default_batch_size = 64

    def __init__(self, dim, config, meta=None):
        super().__init__(dim, config, meta)
        if config.coupling not in _COUPLINGS:
            raise ValueError(f"coupling must be one of {_COUPLINGS}, got {config.coupling!r}.")
        config.check_ints(("k", "num_threads"), minimum=0)
        config.check_ints(("gnn_width", "gnn_depth", "populations_per_step", "max_population_cells", "width", "depth"))
        if not config.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {config.sigma!r}.")
        self.conditions: list[str] = [str(c) for c in self.meta.get("conditions", [])]
        self.encoder = PopulationEncoder(dim, width=config.gnn_width, depth=config.gnn_depth, k=config.k,
                                         act=config.gnn_activation)
        self.net = VectorField(dim, width=config.width, depth=config.depth, act=config.activation,
                               cond_dim=config.gnn_width + len(self.conditions))

    # -- reading populations (and conditions) before the fit --------------------------------------------------
    @classmethod
    def prepare(cls, adata, tc, data: FitData, params: dict[str, Any], *, population_key: str | None) -> dict[str, Any]:
        cond_key = params.pop("condition_key", None)
        col = adata.obs[population_key]
        if col.isna().any():
            raise ValueError(
                f"adata.obs[{population_key!r}] has {int(col.isna().sum())} missing population labels. Label every "
                f"cell or drop the unlabelled ones, e.g. adata = adata[adata.obs[{population_key!r}].notna()].copy()."
            )
        labels = col.astype(str).to_numpy()
        data.labels = [labels[i] for i in tc.index]
        kept = np.concatenate(data.labels)
        pops = list(dict.fromkeys(kept))
        n_times = {p: sum(bool((lab == p).any()) for lab in data.labels) for p in pops}
        usable = [p for p in pops if n_times[p] >= 2]
        if len(pops) < 2 or len(usable) < 2:
            raise ValueError(
                f"method='metafm' learns how the dynamics depend on the population, so it needs at least two "
                f"populations in adata.obs[{population_key!r}] observed at two or more time points; found "
                f"{len(pops)} population(s), {len(usable)} of them at two or more times. For a single population "
                "use method='otcfm'."
            )
        meta: dict[str, Any] = {"population_key": population_key, "conditions": []}
        if cond_key is not None:
            if not isinstance(cond_key, str):
                raise TypeError(f"condition_key must be the name of an obs column (str), got {type(cond_key).__name__}.")
            if cond_key not in adata.obs:
                raise KeyError(f"condition_key {cond_key!r} is not a column of adata.obs.")
            ccol = adata.obs[cond_key]
            if ccol.isna().any():
                raise ValueError(f"adata.obs[{cond_key!r}] has missing values; give every cell a condition.")
            cvals = ccol.astype(str).to_numpy()
            data.conditions = [cvals[i] for i in tc.index]
            allc = np.concatenate(data.conditions)
            for p in pops:
                u = np.unique(allc[kept == p])
                if len(u) > 1:
                    raise ValueError(
                        f"Population {p!r} has several values of adata.obs[{cond_key!r}] ({u.tolist()[:5]}); the "
                        "condition must be one value per population (e.g. the treatment of a replicate)."
                    )
            meta["condition_key"] = cond_key
            meta["conditions"] = sorted(set(allc.tolist()))
        return meta

    # -- the learned dynamics ---------------------------------------------------------------------------------
    def _onehot(self, condition, device, dtype) -> torch.Tensor | None:
        if not self.conditions:
            return None
        if condition is None:
            raise ValueError(
                f"This metafm model is conditioned on adata.obs[{self.meta.get('condition_key')!r}]; pass the "
                f"population's condition (one of {self.conditions})."
            )
        if str(condition) not in self.conditions:
            raise ValueError(
                f"Unknown condition {condition!r} for adata.obs[{self.meta.get('condition_key')!r}]; the model was "
                f"fitted with {self.conditions}. Unseen populations are fine, unseen conditions are not."
            )
        oh = torch.zeros((1, len(self.conditions)), device=device, dtype=dtype)
        oh[0, self.conditions.index(str(condition))] = 1.0
        return oh

    def condition(self, x_source: torch.Tensor, condition: str | None = None) -> torch.Tensor:
        """Population embedding ``phi(p_0)`` (plus the condition one-hot), shape ``(1, gnn_width [+ n_conditions])``."""
        if x_source.ndim != 2 or x_source.shape[0] == 0:
            raise ValueError("A population needs at least one source cell to be embedded.")
        p = next(self.parameters())
        cap = self.config.max_population_cells
        if x_source.shape[0] > cap:  # the rule of training, so a population always gets the same embedding
            keep = source_subset(x_source.shape[0], cap)
            x_source = x_source[torch.as_tensor(keep, device=x_source.device)]
        emb = self.encoder(x_source.to(p.device, p.dtype))
        oh = self._onehot(condition, p.device, p.dtype)
        return emb if oh is None else torch.cat([emb, oh], 1)

    def velocity(self, x, tau, cond=None):
        if cond is None:
            raise ValueError(
                "metafm's velocity depends on the population: pass cond=model.population_condition(X_source) with the "
                "population's source cells (sctraj.tl.predict does this for each population)."
            )
        return self.net(x, tau, cond)

    # -- training ---------------------------------------------------------------------------------------------
    def fit(self, data, *, n_steps, batch_size, rng, device, progress):
        cfg = self.config
        if data.labels is None:
            raise ValueError("metafm needs population labels; fit it with sctraj.tl.fit_flow(..., population_key=...).")
        tau = [float(t) for t in data.tau]
        plan_fn = couplings.exact_plan if cfg.coupling == "ot" else None
        X = [torch.as_tensor(x, device=device) for x in data.X]
        pops = sorted(set(np.concatenate(data.labels).tolist()))
        entries = []  # per trainable population: source cells, graph, one-hot, [(k_a, k_b, idx_a, idx_b, sampler)]
        with torch.no_grad():
            for p in pops:
                ks = [k for k in range(len(data.X)) if (data.labels[k] == p).any()]
                if len(ks) < 2:
                    continue
                idx = {k: np.flatnonzero(data.labels[k] == p) for k in ks}
                # the encoder's cells: the population at its first fitted time, subsampled by the rule of the outputs
                src_idx = idx[ks[0]][source_subset(len(idx[ks[0]]), cfg.max_population_cells)]
                src = X[ks[0]][torch.as_tensor(src_idx, device=device)]
                cond_label = data.conditions[ks[0]][idx[ks[0]][0]] if data.conditions is not None else None
                intervals = []
                for a, b in zip(ks[:-1], ks[1:], strict=True):
                    smp = couplings.PairSampler(
                        data.X[a][idx[a]], data.X[b][idx[b]], plan_fn, batch_size=batch_size,
                        block_size=cfg.ot_block_size, refresh=cfg.ot_refresh,
                        rng=np.random.default_rng(rng.integers(2**63)), background=False,
                    )
                    intervals.append((a, b, torch.as_tensor(idx[a], device=device),
                                      torch.as_tensor(idx[b], device=device), smp))
                entries.append({"src": src, "graph": self.encoder.graph(src), "cond": cond_label,
                                "onehot": self._onehot(cond_label, device, src.dtype), "intervals": intervals})
        n_per_step = min(cfg.populations_per_step, len(entries))
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        path = StraightPath(cfg.sigma)

        def loss_fn(step):
            chosen = np.sort(rng.choice(len(entries), size=n_per_step, replace=False))
            es = [entries[i] for i in chosen]
            g, pool = batch_graphs([e["graph"] for e in es])
            emb = self.encoder.encode(torch.cat([e["src"] for e in es]), g, pool)
            xs, ts, us, cs = [], [], [], []
            for j, e in enumerate(es):
                c = emb[j : j + 1] if e["onehot"] is None else torch.cat([emb[j : j + 1], e["onehot"]], 1)
                for a, b, ia, ib, smp in e["intervals"]:
                    pr = smp.next()
                    x0 = X[a][ia[torch.from_numpy(pr.i0).to(device)]]
                    x1 = X[b][ib[torch.from_numpy(pr.i1).to(device)]]
                    s = torch.rand(len(x0), device=device, generator=gen)
                    noise = torch.randn(x0.shape, device=device, generator=gen) if cfg.sigma > 0 else None
                    xt, ut = path.sample(x0, x1, s, noise)
                    dt = tau[b] - tau[a]
                    xs.append(xt)
                    ts.append(tau[a] + s * dt)
                    us.append(ut / dt)
                    cs.append(c.expand(len(x0), -1))
            pred = self.net(torch.cat(xs), torch.cat(ts), torch.cat(cs))
            return {"loss": torch.mean((pred - torch.cat(us)) ** 2)}

        try:
            return train(self.parameters(), loss_fn, n_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         lr_schedule=cfg.lr_schedule, progress=progress, desc=self.name, num_threads=cfg.num_threads or None)
        finally:
            for e in entries:
                for *_, smp in e["intervals"]:
                    smp.close()

    def report(self, model, data: FitData) -> dict[str, Any]:
        pops = sorted(set(np.concatenate(data.labels).tolist())) if data.labels is not None else []
        return {"populations": [str(p) for p in pops]}
