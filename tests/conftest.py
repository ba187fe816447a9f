from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

matplotlib.use("agg")
os.environ.setdefault("SCTRAJ_FAST", "1")

# pytest-xdist runs one worker per core: one torch thread per worker avoids oversubscription, where idle threads
# spin-wait and tiny networks run 10-40x slower (benchmarks/results/threads.md)
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

# tiny settings shared by the contract tests: every method must run with them in a few seconds
TINY = {"n_steps": 20, "batch_size": 32, "progress": False, "width": 16, "depth": 2}


@pytest.fixture
def adata_time():
    """Three time points x ~60 cells, 3-d, with a population column (two populations per time point)."""
    import sctraj

    ad = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.5), n_dims=3, random_state=0)
    ad.obsm["X_pca"] = ad.obsm["X_sim"].copy()
    rng = np.random.default_rng(0)
    ad.obs["replicate"] = rng.choice(["r1", "r2", "r3"], size=ad.n_obs)
    ad.obs["replicate"] = ad.obs["replicate"].astype("category")
    return ad


def method_kwargs(method: str) -> dict:
    """Extra arguments a method needs on the ``adata_time`` fixture (e.g. a population column)."""
    import sctraj.models as M

    kw = dict(TINY)
    if M.get_method(method).needs_population:
        kw["population_key"] = "replicate"
    return kw
