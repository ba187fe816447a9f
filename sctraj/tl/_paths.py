"""``metric_paths``: the curved interpolants learned by Metric Flow Matching, for plotting and inspection."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._validation import check_adata, check_random_state, get_rep, positive_int, time_values


def metric_paths(
    adata,
    model=None,
    source_time: float | None = None,
    target_time: float | None = None,
    *,
    n_cells: int = 100,
    n_grid: int = 20,
    random_state: int = 0,
    key_added: str = "sctraj",
):
    """Learned interpolants of a ``metricfm`` model between two consecutive fitted time points.

    Pairs of cells are drawn from the coupling the model was trained with (the exact OT plan with Euclidean cost
    for ``coupling="ot"``, independent draws otherwise) between the cells observed at ``source_time`` and
    ``target_time``, and each pair is joined by the model's learned approximate geodesic
    ``x_s = (1-s) x0 + s x1 + gamma(s) phi(x0, x1, t)`` (Kapusniak et al. 2024, arXiv:2405.14780). These are the
    paths the vector field was trained on; cells pushed by the field (:func:`sctraj.tl.predict`) follow them on
    average.

    Parameters
    ----------
    adata
        The AnnData the model was fitted on (or one with the same time column and embedding).
    model
        A :class:`~sctraj.models.TrajectoryModel` fitted with ``method="metricfm"``; ``None`` uses the one stored in
        ``adata.uns[key_added]``.
    source_time, target_time
        Two consecutive fitted time points, ``source_time < target_time`` (an interval the model was trained on).
    n_cells
        Number of paths (coupled pairs).
    n_grid
        Points per path, evenly spaced in time from ``source_time`` to ``target_time`` (at least 2).
    random_state
        Seed of the pair draw.
    key_added
        Where the model is stored when ``model=None``.

    Returns
    -------
    A new AnnData with ``n_cells * n_grid`` rows (one per path point): positions in ``obsm[model.use_rep]``,
    ``obs["path"]`` (path index), ``obs["time"]``, ``obs["fraction"]`` (0 at the source cell, 1 at the target cell),
    ``obs["source_cell"]`` and ``obs["target_cell"]`` (obs names of the pair). ``adata`` is not modified.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> _ = sctraj.tl.fit_flow(adata, "time", method="metricfm", use_rep="X_sim", n_steps=50, progress=False)
    >>> paths = sctraj.tl.metric_paths(adata, source_time=0.0, target_time=1.0, n_cells=10)
    """
    import anndata as ad
    import torch

    from ..engine import couplings
    from ._store import resolve_model

    check_adata(adata)
    model = resolve_model(adata, model, key_added)
    if source_time is None or target_time is None:
        raise TypeError("metric_paths() needs source_time=... and target_time=... (two consecutive fitted times).")
    if not hasattr(model.method, "paths"):
        raise ValueError(
            f"metric_paths needs a model fitted with method='metricfm'; this one is {model.method_name!r} "
            "(its interpolants are straight lines)."
        )
    positive_int("n_cells", n_cells)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int | np.integer) or n_grid < 2:
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}.")
    seed = check_random_state(random_state)
    src = model.check_time(source_time, "source_time")
    tgt = model.check_time(target_time, "target_time")
    times = model.times
    k = np.flatnonzero(np.isclose(times, src))
    if len(k) == 0 or k[0] + 1 >= len(times) or not np.isclose(times[k[0] + 1], tgt):
        raise ValueError(
            f"source_time and target_time must be consecutive fitted time points with source_time < target_time; "
            f"the model was fitted on {times.tolist()}, got ({source_time!r}, {target_time!r})."
        )
    k = int(k[0])
    t = time_values(adata, model.time_key)
    X = get_rep(adata, model.use_rep, model.dim)
    i0, i1 = np.flatnonzero(np.isclose(t, src)), np.flatnonzero(np.isclose(t, tgt))
    for name, idx, tv in (("source_time", i0, src), ("target_time", i1, tgt)):
        if len(idx) == 0:
            raise ValueError(f"No cells at {name}={tv:g} in adata.obs[{model.time_key!r}].")
    rng = np.random.default_rng(seed)
    cfg = model.method.config
    block = int(getattr(cfg, "ot_block_size", 1024))
    b0 = i0 if len(i0) <= block else np.sort(rng.choice(i0, block, replace=False))
    b1 = i1 if len(i1) <= block else np.sort(rng.choice(i1, block, replace=False))
    if getattr(cfg, "coupling", "ot") == "ot":
        Z0 = model.to_internal(X[b0]).cpu().numpy()
        Z1 = model.to_internal(X[b1]).cpu().numpy()
        r, c = couplings.sample_pairs(couplings.exact_plan(Z0, Z1), n_cells, rng)
    else:
        r, c = rng.integers(len(b0), size=n_cells), rng.integers(len(b1), size=n_cells)
    p0, p1 = b0[r], b1[c]
    fr = np.linspace(0.0, 1.0, n_grid)
    model.method.eval()
    with torch.no_grad():
        z = model.method.paths(model.to_internal(X[p0]), model.to_internal(X[p1]), k,
                               torch.as_tensor(fr, dtype=torch.float32, device=model.device))
    pts = np.transpose(model.from_internal(z), (1, 0, 2)).reshape(-1, model.dim)  # path-major
    names = adata.obs_names.astype(str).to_numpy()
    obs = pd.DataFrame({
        "path": np.repeat(np.arange(n_cells), n_grid),
        "time": np.tile(src + fr * (tgt - src), n_cells),
        "fraction": np.tile(fr, n_cells),
        "source_cell": np.repeat(names[p0], n_grid),
        "target_cell": np.repeat(names[p1], n_grid),
    })
    obs.index = [f"path{i}_{j}" for i in range(n_cells) for j in range(n_grid)]
    return ad.AnnData(obs=obs, obsm={model.use_rep: pts.astype(np.float32)})
