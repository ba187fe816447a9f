"""Push observed cells through a fitted flow (``predict``) and generate cells at any time (``interpolate``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validation import check_adata, get_rep, time_values
from ._utils import population_groups


def _check_model(model):
    from ..models import TrajectoryModel

    if not isinstance(model, TrajectoryModel):
        raise TypeError(
            f"model must be the TrajectoryModel returned by sctraj.tl.fit_flow or sctraj.tl.load_model, "
            f"got {type(model).__name__}."
        )


def _result(X, obs, use_rep):
    import anndata as ad

    obs = obs.copy()
    obs.index = obs.index.astype(str)
    return ad.AnnData(obs=obs, obsm={use_rep: np.asarray(X, np.float32)})


def predict(
    adata,
    model,
    *,
    source_time: float,
    target_time: float,
    n_steps: int = 100,
    solver: str = "euler",
):
    """Push the cells observed at ``source_time`` to ``target_time`` (forward or backward in time).

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]`` (it may be new data, e.g. unseen
        populations for Meta FM).
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`.
    source_time, target_time
        Times within the fitted range; ``source_time`` must be observed in ``adata``.
    n_steps
        ODE steps over the interval.
    solver
        ``"euler"`` (the benchmark protocol), ``"midpoint"``, ``"rk4"`` or ``"dopri5"`` (adaptive).

    Returns
    -------
    A new AnnData, one row per source cell, with the pushed positions in ``obsm[model.use_rep]`` (the fitted
    ``n_dims`` dims), ``obs["time"]`` (= ``target_time``), ``obs["weight"]`` (mass of each pushed cell relative to one
    cell at the source time; 1 for mass-conserving methods), ``obs["source_cell"]`` and the source cells' other obs
    columns. ``adata`` is not modified.
    """
    _check_model(model)
    check_adata(adata)
    t = time_values(adata, model.time_key)
    src = model.check_time(source_time, "source_time")
    tgt = model.check_time(target_time, "target_time")
    mask = np.isclose(t, src)
    if not mask.any():
        raise ValueError(
            f"No cells at source_time={source_time!r} in adata.obs[{model.time_key!r}] "
            f"(observed: {np.unique(t).tolist()})."
        )
    X = get_rep(adata, model.use_rep, model.dim)
    out = np.empty((mask.sum(), model.dim), np.float32)
    logw = np.zeros(mask.sum(), np.float32)
    order = np.flatnonzero(mask)
    where = {p: k for k, p in enumerate(order)}
    for pos, cond in population_groups(adata, model, mask):
        xs, lw = model.push(X[pos], src, tgt, n_steps=n_steps, solver=solver, cond=cond)
        k = np.array([where[p] for p in pos])
        out[k], logw[k] = xs, lw
    obs = adata.obs.iloc[order].copy()
    obs.insert(0, "source_cell", obs.index.astype(str))
    obs["time"] = float(tgt)
    obs["source_time"] = float(src)
    obs["weight"] = np.exp(logw.astype(np.float64))
    return _result(out, obs, model.use_rep)


def interpolate(
    adata,
    model,
    times: float | Sequence[float],
    *,
    n_cells: int | None = None,
    n_steps: int = 100,
    solver: str = "euler",
    random_state: int = 0,
):
    """Generate cells at any times in the fitted range, observed or not.

    For each requested time ``t``, cells are drawn from the latest time point of ``model`` at or before ``t``
    (the first one for earlier times) and pushed to ``t``.

    Parameters
    ----------
    adata
        The AnnData the model was fitted on (or one with the same time column and embedding).
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`.
    times
        One time or a list of times.
    n_cells
        Cells generated per time (drawn with replacement when larger than the source population); all source cells
        when ``None``.
    n_steps, solver
        As in :func:`predict`.
    random_state
        Seed of the cell draw.

    Returns
    -------
    AnnData of generated cells with ``obsm[model.use_rep]``, ``obs["time"]``, ``obs["source_time"]`` and
    ``obs["weight"]``.
    """
    import anndata as ad

    _check_model(model)
    check_adata(adata)
    times = [times] if np.ndim(times) == 0 else list(times)
    if not times:
        raise ValueError("times is empty: pass one time or a list of times.")
    if n_cells is not None and (isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 1):
        raise ValueError(f"n_cells must be a positive integer or None, got {n_cells!r}.")
    t_obs = time_values(adata, model.time_key)
    rng = np.random.default_rng(random_state)
    parts = []
    for tq in times:
        tq = model.check_time(tq, "time")
        avail = np.array([s for s in model.times if np.isclose(t_obs, s).any()])
        if len(avail) == 0:
            raise ValueError("adata has no cells at any of the model's time points.")
        before = avail[avail <= tq + 1e-12]
        src = float(before[-1] if len(before) else avail[0])
        pool = np.flatnonzero(np.isclose(t_obs, src))
        pick = pool if n_cells is None else rng.choice(pool, size=n_cells, replace=n_cells > len(pool))
        sub = adata[np.sort(pick)] if n_cells is None else adata[pick]
        res = predict(sub, model, source_time=src, target_time=tq, n_steps=n_steps, solver=solver)
        res.obs_names = [f"t{tq:g}_{i}" for i in range(res.n_obs)]
        parts.append(res)
    out = ad.concat(parts, merge="first") if len(parts) > 1 else parts[0]
    out.obs["time"] = out.obs["time"].astype(float)
    return out


def load_model(path, *, device: str = "auto"):
    """Load a model saved with ``model.save(path)`` (plain types only; ``torch.load(weights_only=True)``)."""
    from ..models import TrajectoryModel

    return TrajectoryModel.load(path, device=device)


__all__ = ["predict", "interpolate", "load_model"]
