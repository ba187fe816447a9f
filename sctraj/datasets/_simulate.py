"""A linear-ODE simulator with known velocity and, optionally, known per-population growth rates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def simulate(
    *,
    n_cells: int = 300,
    times: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
    n_dims: int = 2,
    growth: bool = False,
    growth_rates: Sequence[float] = (0.5, -0.2),
    noise: float = 0.0,
    random_state: int = 0,
):
    """Simulate snapshots of cells moving under a known linear field ``dx/dt = A x + b``.

    ``A`` is symmetric negative-definite-plus-expansion (a gradient field), so the true dynamics between snapshots
    is an optimal-transport map and OT-based flows can recover it.

    Parameters
    ----------
    n_cells
        Cells at the first time point (later counts follow the growth rates when ``growth=True``).
    times
        Sampling times.
    n_dims
        Dimension of the embedding (>= 2).
    growth
        Give the sub-populations (``obs["population"]``: ``"A"``, ``"B"``, ...) the constant per-capita growth rates
        ``growth_rates``: the number of cells sampled at time ``t`` is proportional to the true mass
        ``sum_k n_k exp(g_k t)``.
    growth_rates
        Growth rate of each sub-population (per unit time); their number sets the number of sub-populations.
    noise
        Standard deviation of Gaussian noise added to the observed positions.
    random_state
        Seed.

    Returns
    -------
    AnnData with ``obs["time"]``, ``obs["population"]``, ``obs["true_growth_rate"]``, ``obsm["X_sim"]`` (positions),
    ``obsm["true_velocity"]`` and ``uns["simulate"]`` (``A``, ``b``, ``true_mass`` at each time relative to time 0).

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=100, n_dims=2, growth=True)
    >>> adata.obsm["X_sim"].shape[1]
    2
    """
    import anndata as ad
    from scipy.linalg import expm

    if n_dims < 2:
        raise ValueError("n_dims must be at least 2.")
    rng = np.random.default_rng(random_state)
    times = np.asarray(sorted(float(t) for t in times))
    g = np.asarray(growth_rates, float) if growth else np.zeros(len(growth_rates))
    K = len(g)
    A = np.diag(np.concatenate([[-0.3, 0.15], np.full(n_dims - 2, -0.1)]))
    b = np.zeros(n_dims)
    b[:2] = [1.0, 0.3]
    centers = np.zeros((K, n_dims))
    centers[:, 1] = np.linspace(-2.0, 2.0, K) if K > 1 else 0.0
    n0 = np.full(K, n_cells // K)
    n0[: n_cells - n0.sum()] += 1
    rows = []
    for t in times:
        n_t = np.round(n0 * np.exp(g * (t - times[0]))).astype(int) if growth else n0
        E = expm(A * (t - times[0]))
        # x(t) = E (x0 + A^-1 b) - A^-1 b  (A invertible)
        Ainv_b = np.linalg.solve(A, b)
        for k in range(K):
            x0 = centers[k] + 0.35 * rng.normal(size=(n_t[k], n_dims))
            xt = (x0 + Ainv_b) @ E.T - Ainv_b
            rows.append((t, k, xt))
    X = np.concatenate([r[2] for r in rows])
    tt = np.concatenate([np.full(len(r[2]), r[0]) for r in rows])
    kk = np.concatenate([np.full(len(r[2]), r[1]) for r in rows])
    V = X @ A.T + b
    if noise:
        X = X + noise * rng.normal(size=X.shape)
    labels = np.array([chr(ord("A") + k) for k in range(K)])
    obs = pd.DataFrame(
        {"time": tt, "population": pd.Categorical(labels[kk]), "true_growth_rate": g[kk]},
        index=[f"cell{i}" for i in range(len(X))],
    )
    mass = np.array([np.sum(n0 * np.exp(g * (t - times[0]))) / n0.sum() for t in times])
    return ad.AnnData(
        X=X.astype(np.float32),
        obs=obs,
        obsm={"X_sim": X.astype(np.float32), "true_velocity": V.astype(np.float32)},
        uns={"simulate": {"A": A, "b": b, "times": times, "true_mass": mass, "growth_rates": g}},
    )
