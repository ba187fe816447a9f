"""Populations whose dynamics depend on their own layout: a benchmark for Meta Flow Matching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: per treatment: (rate along the population's long axis, rate across it). Positive along = the population splits in
#: two lobes along its long axis; negative = it collapses along that axis.
_TREATMENT_RATES = {"control": (1.5, -0.3), "drug": (-1.0, 0.3)}


def true_flow(X: np.ndarray, t: float, center: np.ndarray, axis: np.ndarray, treatment: str = "control",
              width: float = 0.5) -> np.ndarray:
    """Exact positions at time ``t`` of cells ``X`` (at time 0) of one population of :func:`simulate_populations`.

    Along the population's long axis ``e`` the coordinate ``z = (x - center) . e`` follows
    ``dz/dt = a * width * tanh(z / width)``, solved by ``sinh(z(t) / width) = sinh(z(0) / width) exp(a t)``; across
    it, the offset from the centre follows ``dy/dt = b y`` (``a, b`` from the treatment). Extra dimensions (beyond the
    first two) stay where they are.

    Examples
    --------
    >>> import numpy as np
    >>> import sctraj
    >>> X = np.zeros((3, 2))
    >>> sctraj.datasets.true_flow(X, 0.5, center=np.zeros(2), axis=np.array([1.0, 0.0])).shape  # doctest: +SKIP
    (3, 2)
    """
    a, b = _TREATMENT_RATES[treatment]
    X = np.asarray(X, np.float64)
    D = X[:, :2] - center[:2]
    z = D @ axis
    y = D - np.outer(z, axis)
    zt = width * np.arcsinh(np.sinh(z / width) * np.exp(a * t))
    out = X.copy()
    out[:, :2] = center[:2] + np.outer(zt, axis) + y * np.exp(b * t)
    return out


def true_velocity(X: np.ndarray, center: np.ndarray, axis: np.ndarray, treatment: str = "control",
                  width: float = 0.5) -> np.ndarray:
    """Velocity ``dx/dt`` of cells ``X`` of one population (the field of :func:`true_flow`)."""
    a, b = _TREATMENT_RATES[treatment]
    X = np.asarray(X, np.float64)
    D = X[:, :2] - center[:2]
    z = D @ axis
    y = D - np.outer(z, axis)
    V = np.zeros_like(X)
    V[:, :2] = np.outer(a * width * np.tanh(z / width), axis) + b * y
    return V


def simulate_populations(
    *,
    n_populations: int = 80,
    n_test: int | None = None,
    n_cells: int = 150,
    times: Sequence[float] = (0.0, 1.0, 2.0),
    n_dims: int = 2,
    n_treatments: int = 1,
    noise: float = 0.0,
    random_state: int = 0,
):
    """Simulate many cell populations whose dynamics depend on the layout of each population.

    Each population starts as an elongated Gaussian cloud with its own centre (uniform in a disc of radius 1), long
    axis (uniform angle) and widths (long 0.5-0.8, short 0.15-0.3). Its cells then move according to that layout:
    under ``"control"`` the population splits into two lobes along its own long axis
    (``dz/dt = 1.5 w tanh(z / w)``, ``w = 0.5``, for the coordinate ``z`` along the axis, measured from the
    population's centre) while contracting across it (rate 0.3); under ``"drug"`` (``n_treatments=2``) it collapses
    along the long axis (rate -1) and widens across it (rate 0.3). Populations overlap, so cells at the same position move in different directions depending on the
    population they belong to: a field that sees one cell at a time (``otcfm`` on the pooled cells) cannot be right,
    while a field conditioned on the population (``metafm``) can. Every snapshot is a fresh draw of ``n_cells`` cells
    (destructive sampling), so cells are not linked across time.

    Parameters
    ----------
    n_populations
        Number of populations (replicates / patients).
    n_test
        Populations held out as unseen (``obs["split"] == "test"``); ``n_populations // 5`` by default.
    n_cells
        Cells per population per time point.
    times
        Sampling times.
    n_dims
        Dimension of the embedding (>= 2); dimensions beyond the first two are static Gaussian noise of sd 0.3.
    n_treatments
        1 (all ``"control"``) or 2 (populations alternate ``"control"`` / ``"drug"``; ``obs["treatment"]``).
    noise
        Standard deviation of Gaussian measurement noise added to the observed positions.
    random_state
        Seed.

    Returns
    -------
    AnnData with ``obs["time"]``, ``obs["population"]`` (categorical, ``"P000"``, ...), ``obs["split"]``
    (``"train"`` / ``"test"``), ``obs["treatment"]``; ``obsm["X_sim"]`` (positions), ``obsm["true_velocity"]``,
    ``obsm["true_origin"]`` (each cell's position at the first time, before the dynamics moved it) and
    ``uns["simulate_populations"]`` with the ground truth per population (``centers``, ``axes``, ``treatments``,
    ``width``, ``times``, ``test_populations``). :func:`sctraj.datasets.true_flow` pushes any cells of a population
    with the exact dynamics.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate_populations()  # doctest: +SKIP
    >>> train = adata[adata.obs["split"] == "train"].copy()  # doctest: +SKIP
    """
    import anndata as ad

    if isinstance(n_dims, bool) or not isinstance(n_dims, int | np.integer) or n_dims < 2:
        raise ValueError(f"n_dims must be an integer >= 2, got {n_dims!r}.")
    if isinstance(n_populations, bool) or not isinstance(n_populations, int | np.integer) or n_populations < 2:
        raise ValueError(f"n_populations must be an integer >= 2, got {n_populations!r}.")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}.")
    if n_treatments not in (1, 2):
        raise ValueError(f"n_treatments must be 1 or 2, got {n_treatments!r}.")
    n_test = n_populations // 5 if n_test is None else n_test
    if isinstance(n_test, bool) or not isinstance(n_test, int | np.integer) or not 0 <= n_test < n_populations:
        raise ValueError(f"n_test must be an integer in [0, n_populations), got {n_test!r}.")
    times = np.asarray(sorted(float(t) for t in times))
    if len(times) < 2 or len(np.unique(times)) != len(times):
        raise ValueError(f"times must hold at least two distinct values, got {times.tolist()}.")
    rng = np.random.default_rng(random_state)
    width = 0.5
    r = np.sqrt(rng.uniform(0, 1, n_populations))
    phi = rng.uniform(0, 2 * np.pi, n_populations)
    centers = np.zeros((n_populations, n_dims))
    centers[:, 0], centers[:, 1] = r * np.cos(phi), r * np.sin(phi)
    theta = rng.uniform(0, np.pi, n_populations)
    axes = np.stack([np.cos(theta), np.sin(theta)], 1)
    sd_long = rng.uniform(0.5, 0.8, n_populations)
    sd_short = rng.uniform(0.15, 0.3, n_populations)
    names = ["control", "drug"][:n_treatments]
    treat = np.array([names[p % n_treatments] for p in range(n_populations)])
    test = np.zeros(n_populations, bool)
    test[rng.choice(n_populations, size=n_test, replace=False)] = True

    Xs, Vs, Os, tt, pp = [], [], [], [], []
    for p in range(n_populations):
        normal = np.array([-axes[p, 1], axes[p, 0]])
        for t in times:
            eps = rng.normal(size=(n_cells, 2))
            x0 = np.zeros((n_cells, n_dims))
            x0[:, :2] = centers[p, :2] + np.outer(eps[:, 0] * sd_long[p], axes[p]) + np.outer(eps[:, 1] * sd_short[p],
                                                                                              normal)
            if n_dims > 2:
                x0[:, 2:] = 0.3 * rng.normal(size=(n_cells, n_dims - 2))
            xt = true_flow(x0, t - times[0], centers[p], axes[p], treat[p], width)
            Xs.append(xt)
            Os.append(x0)
            Vs.append(true_velocity(xt, centers[p], axes[p], treat[p], width))
            tt.append(np.full(n_cells, t))
            pp.append(np.full(n_cells, p))
    X = np.concatenate(Xs)
    if noise:
        X = X + noise * rng.normal(size=X.shape)
    pop = np.concatenate(pp)
    labels = np.array([f"P{p:03d}" for p in range(n_populations)])
    obs = pd.DataFrame(
        {
            "time": np.concatenate(tt),
            "population": pd.Categorical(labels[pop], categories=labels),
            "split": pd.Categorical(np.where(test[pop], "test", "train"), categories=["train", "test"]),
            "treatment": pd.Categorical(treat[pop], categories=names),
        },
        index=[f"cell{i}" for i in range(len(X))],
    )
    return ad.AnnData(
        X=X.astype(np.float32),
        obs=obs,
        obsm={
            "X_sim": X.astype(np.float32),
            "true_velocity": np.concatenate(Vs).astype(np.float32),
            "true_origin": np.concatenate(Os).astype(np.float32),
        },
        uns={
            "simulate_populations": {
                "centers": centers,
                "axes": axes,
                "sd_long": sd_long,
                "sd_short": sd_short,
                "treatments": treat.astype(object),
                "populations": labels.astype(object),
                "test_populations": labels[test].astype(object),
                "width": width,
                "times": times,
            }
        },
    )
