"""``fit_flow``: train a method on an AnnData time course and write its results back."""

from __future__ import annotations

import time as _time
from typing import Any

import numpy as np

from .. import _keys
from .._settings import logger, settings
from .._validation import check_adata, check_key_added, check_random_state, positive_int, time_course
from ._outputs import check_trajectory_n_grid, trajectory_grid
from ._store import model_record
from ._utils import h5ad_safe, population_groups
from ._write import check_writable, write_fit


def fit_flow(
    adata,
    time_key: str,
    *,
    method: str = "otcfm",
    use_rep: str = "X_pca",
    n_dims: int | None = None,
    exclude_times=None,
    population_key: str | None = None,
    n_steps: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    random_state: int = 0,
    key_added: str = "sctraj",
    progress: bool = True,
    trajectory_n_grid: int | None = None,
    copy: bool = False,
    distributed: bool | None = None,
    **method_params: Any,
):
    """Learn the continuous dynamics that carry each snapshot of a time course into the next.

    One time-conditioned vector field (and, for growth-aware methods, a growth rate) is trained over all consecutive
    pairs of the kept time points by flow matching. Real time values are used: intervals of different lengths are
    handled exactly, and an excluded time is skipped so that its neighbours form one interval.

    Parameters
    ----------
    adata
        Annotated data matrix with cells from at least two time points.
    time_key
        Numeric column of ``adata.obs`` (or categorical with numeric categories) with each cell's sampling time.
    method
        One of :func:`sctraj.models.available_methods`: ``"icfm"``, ``"otcfm"``, ``"sbcfm"``, ``"vgfm"``,
        ``"metricfm"``, ``"metafm"``.
    use_rep
        Key of ``adata.obsm`` with the embedding to fit in (``"X"`` for ``adata.X``).
    n_dims
        Use only the first ``n_dims`` dimensions of ``use_rep`` (all by default).
    exclude_times
        Time point(s) left out of training, e.g. to hold them out for evaluation.
    population_key
        Column of ``adata.obs`` labelling populations (replicates, patients); required by ``"metafm"``.
    n_steps
        Training steps; the method's default when ``None`` (see the method's documentation).
    batch_size
        Coupled pairs per interval per step; the method's default when ``None``.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    random_state
        Seed of every random choice (network initialisation, couplings, times, noise). The same seed on CPU gives
        identical results.
    key_added
        Prefix of every key written to ``adata``: a string ``write_h5ad`` can store (no ``/``, no leading or trailing
        spaces), free or belonging to an earlier sctraj fit (see Returns).
    progress
        Show a progress bar (one per fit; only when ``sctraj.settings.verbosity`` >= 1, i.e. not at scanpy's
        verbosity 0).
    trajectory_n_grid
        Points per cell in ``obsm[f"{key_added}_trajectory"]``; ``0`` writes no trajectories. ``None`` (default):
        10 points, unless the array would exceed ``sctraj.settings.trajectory_max_mb`` (then none are written and a
        warning gives the size and the switch; pass an integer to write them anyway).
    copy
        Fit on a copy of ``adata`` and return it (``adata`` itself is left untouched); the model is then reached with
        :func:`~sctraj.tl.get_model`.
    distributed
        Data-parallel training over the ranks of a :mod:`torch.distributed` process group (one process per device,
        started by ``torchrun``; see :doc:`/distributed`). ``None`` (default): when a process group is initialised;
        ``True``: always (initialising the group from ``torchrun``'s environment if needed, ``nccl`` on CUDA, ``gloo``
        on CPU); ``False``: never. Every rank must make the same call; ``batch_size`` is per rank. Only rank 0 computes
        the per-cell outputs and writes into ``adata``; the other ranks return the same trained model (``None`` with
        ``copy=True``) and leave their ``adata`` untouched. The same seed and number of ranks give the same result;
        one rank gives the same result as a plain call.
    **method_params
        Settings of the method's config (network ``width``/``depth``/``activation``, ``lr``, ``sigma``, ...), and
        method-specific inputs (e.g. ``total_mass`` for ``"vgfm"``, ``condition_key`` for ``"metafm"``).
        ``sctraj.models.describe(method)`` lists every one with its default and meaning (``sctraj methods NAME``
        on the command line).

    Returns
    -------
    With ``copy=False`` (default), the fitted :class:`~sctraj.models.TrajectoryModel` (the same model is stored in
    ``adata``, see :func:`~sctraj.tl.get_model`); with ``copy=True``, the fitted copy of ``adata``. After everything
    has succeeded (never half-way), sets:

    `adata.obsm[f"{key_added}_velocity_{rep}"]` : :class:`numpy.ndarray`
        Velocity of each cell at its own time, in ``use_rep`` units per unit of time (``rep`` = ``use_rep`` without
        ``X_``); NaN for cells outside the fitted time range. float32, or float64 when the embedding is float64
        (velocities and trajectories keep its precision).
    `adata.obs[f"{key_added}_growth_rate"]`
        Growth rate (d log mass / dt) of each cell at its own time; 0 for mass-conserving methods.
    `adata.obsm[f"{key_added}_trajectory"]` : :class:`numpy.ndarray` (n_obs x n_grid x d)
        Each cell integrated from its time to the next fitted time point (NaN for cells at the last one); the grid is
        ``uns[key_added]["trajectory"]["fractions"]`` of each cell's interval. Not written when
        ``trajectory_n_grid=0`` (or, by default, when larger than ``sctraj.settings.trajectory_max_mb``).
    `adata.uns[key_added]` : :class:`dict`
        ``params`` (method, config, times, use_rep, seed, version, ...), ``history`` (loss per step), ``model`` (the
        fitted networks as arrays, rebuilt by :func:`~sctraj.tl.get_model`; kept through ``write_h5ad``) and
        method-specific results (e.g. ``mass``). ``params["written_by"] == "sctraj"`` and ``params["written_keys"]``
        mark the keys this fit owns: a refit under the same ``key_added`` replaces them (and removes those the new fit
        does not write); a ``key_added`` whose keys exist but were not written by sctraj is refused before training.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> model = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)
    >>> pred = sctraj.tl.predict(adata, source_time=0.0, target_time=1.0)  # uses the model stored in adata
    >>> fitted = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False, copy=True)
    >>> sctraj.tl.get_model(fitted).method_name
    'otcfm'
    """
    from .. import __version__
    from ..engine import distributed as dist_engine
    from ..engine.progress import fit_progress
    from ..models import FitData, TrajectoryModel, get_method, resolve_device

    check_adata(adata)
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be True or False, got {copy!r}.")
    Method = get_method(method)
    positive_int("n_steps", n_steps, allow_none=True)
    positive_int("batch_size", batch_size, allow_none=True)
    seed = check_random_state(random_state)
    key_added = check_key_added(key_added)
    check_trajectory_n_grid(trajectory_n_grid)
    dev = resolve_device(device)
    ctx = dist_engine.resolve(distributed, dev)  # None: this process alone
    dev = dist_engine.device_for(ctx, dev)
    if population_key is not None and population_key not in adata.obs:
        raise KeyError(f"population_key {population_key!r} is not a column of adata.obs.")
    if Method.needs_population and population_key is None:
        raise ValueError(
            f"method={method!r} conditions on populations: pass population_key='<obs column with population labels>'."
        )

    tc = time_course(adata, time_key, use_rep, n_dims, exclude_times, min_cells=Method.min_cells)
    trajectory_n_grid = trajectory_grid(trajectory_n_grid, adata.n_obs, tc.dim, key_added, tc.X[0].dtype.itemsize)
    check_writable(adata, key_added, use_rep, trajectory_n_grid > 0)  # before training: never overwrite user keys
    n_steps = int(n_steps or Method.default_n_steps)
    batch_size = int(batch_size or Method.default_batch_size)

    # internal coordinates: centred, one global scale (keeps Euclidean geometry and OT plans unchanged); computed in
    # float64 before the cast, so large offsets or magnitudes (1e8 + spread 1, 1e30) keep their spread
    mean, scale = internal_scale(tc.X)
    T = float(tc.times[-1] - tc.times[0])
    data = FitData(
        X=[((np.asarray(x, np.float64) - mean) / scale).astype(np.float32) for x in tc.X],
        tau=(tc.times - tc.times[0]) / T,
        times=tc.times,
    )
    n_cells = sum(len(x) for x in tc.X)
    params = dict(method_params)
    meta = Method.prepare(adata, tc, data, params, population_key=population_key)
    config = Method.Config.from_params(params)

    rng = dist_engine.data_rng(seed, ctx)  # pairs, times, noise: one stream per rank (rank 0: the plain stream)
    # torch's global generator initialises the network: seeded under one lock (engine.trainer.GLOBAL_TORCH_LOCK), so
    # that fits running in threads of one process (leave_one_out on a threaded backend) cannot interleave their seeds
    with seeded_torch(seed, dev):
        module = Method(tc.dim, config, meta)
    module.to(dev)
    dist_engine.broadcast_module(module, ctx)  # the same initial weights on every rank
    setup = {
        "method": method,
        "time_key": time_key,
        "use_rep": use_rep,
        "n_dims": int(tc.dim),
        "rep_dims": int(tc.rep_dims),
        "times": [float(x) for x in tc.times],
        "all_times": [float(x) for x in tc.all_times],
        "excluded_times": [float(x) for x in tc.excluded],
        "n_cells": [int(len(x)) for x in tc.X],
        "mean": [float(x) for x in mean],
        "scale": scale,
        "random_state": seed,
        "n_steps": n_steps,
        "batch_size": batch_size,
        "device": str(dev),
        "version": __version__,
    }
    if ctx is not None:
        setup["distributed"] = ctx.record()
    if population_key is not None:
        setup["population_key"] = population_key
    if meta.get("condition_key"):
        setup["condition_key"] = meta["condition_key"]

    logger.info(f"fitting {method!r} on {n_cells} cells x {tc.dim} dims, times {setup['times']} ({dev})")
    t_start = _time.perf_counter()
    module.train()
    with dist_engine.activate(ctx), fit_progress(settings.show_progress(progress)):  # one display for all phases
        history = module.fit(data, n_steps=n_steps, batch_size=batch_size, rng=rng, device=dev, progress=True)
    fit_seconds = _time.perf_counter() - t_start
    module.eval()
    setup["fit_seconds"] = fit_seconds
    model = TrajectoryModel(module, setup, history)
    if ctx is not None and not ctx.is_main:
        return None if copy else model  # outputs and writes on rank 0 only

    # ---- compute every output first; write only when all succeeded ------------------------------------------
    outputs = compute_outputs(adata, model, tc, trajectory_n_grid)
    record = {
        "params": {**setup, "config": config.to_dict()},
        "history": {k: np.asarray(v, np.float32) for k, v in history.items()},
        "trajectory": {"fractions": outputs.pop("fractions"), "times": np.asarray(tc.times)},
    }
    record.update(module.report(model, data))
    record["model"] = model_record(model)
    record = h5ad_safe(record)

    if copy:
        adata = adata.copy()
    rep = use_rep
    obsm = {_keys.velocity_key(key_added, rep): outputs["velocity"]}
    if trajectory_n_grid:
        obsm[_keys.trajectory_key(key_added)] = outputs["trajectory"]
    write_fit(adata, key_added, obsm=obsm, obs={_keys.growth_key(key_added): outputs["growth"]}, record=record)
    logger.info(
        f"done in {fit_seconds:.1f}s: wrote obsm[{_keys.velocity_key(key_added, rep)!r}], "
        f"obs[{_keys.growth_key(key_added)!r}], "
        + (f"obsm[{_keys.trajectory_key(key_added)!r}], " if trajectory_n_grid else "")
        + f"uns[{key_added!r}]"
    )
    return adata if copy else model


def internal_scale(X: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Centre and one global scale of the cells (float64, two passes, no overflow for magnitudes up to 1e300)."""
    n = sum(len(x) for x in X)
    mean = sum(np.asarray(x, np.float64).sum(0) for x in X) / n
    peak = max(float(np.abs(np.asarray(x, np.float64) - mean).max(initial=0.0)) for x in X)
    if peak == 0 or not np.isfinite(peak):
        return mean, 1.0
    ss = sum(float((((np.asarray(x, np.float64) - mean) / peak) ** 2).sum()) for x in X)  # pre-scaled: no overflow
    scale = peak * float(np.sqrt(ss / (n * X[0].shape[1])))
    return mean, scale if scale > 0 and np.isfinite(scale) else 1.0


def seeded_torch(seed: int, dev):
    """Context: torch's global RNG seeded with ``seed`` (for network initialisation), restored on exit.

    The global RNG is process-wide: two fits in threads would interleave their seeding and draws (and restore each
    other's state), so the block runs under one lock.
    """
    import contextlib

    import torch

    from ..engine.trainer import GLOBAL_TORCH_LOCK

    @contextlib.contextmanager
    def ctx():
        with GLOBAL_TORCH_LOCK, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    return ctx()


def compute_outputs(adata, model, tc, n_grid: int) -> dict[str, np.ndarray]:
    """Per-cell velocity and growth at the cell's own time and its path to the next fitted time point.

    Positions and velocities keep the embedding's precision (float64 embeddings give float64 outputs). Raises a
    ``FloatingPointError`` instead of returning non-finite values for cells inside the fitted time range.
    """
    from .._validation import model_rep, time_tolerance

    X = model_rep(adata, model)
    t = tc.cell_time
    times = model.times
    tol = time_tolerance(times)
    n, d = X.shape
    vel = np.full((n, d), np.nan, X.dtype)
    growth = np.full(n, np.nan, np.float32)
    fr = np.linspace(0.0, 1.0, n_grid) if n_grid else np.zeros(0)
    traj = np.full((n, n_grid, d), np.nan, X.dtype) if n_grid else None
    inside = (t >= times[0]) & (t <= times[-1])
    conds: dict = {}  # each population embedded once
    for tv in np.unique(t[inside]):
        for pos, cond in population_groups(adata, model, inside & (t == tv), cache=conds):
            vel[pos] = model.velocity(X[pos], tv, cond=cond)
            growth[pos] = model.growth_rate(X[pos], tv, cond=cond)
            later = times[times > tv + tol]
            if n_grid and len(later):
                grid = tv + fr * (later[0] - tv)
                xs, _ = model.push(X[pos], tv, grid[1:], n_steps=max(5 * (n_grid - 1), 20), cond=cond)
                traj[pos, 0] = X[pos]
                traj[pos, 1:] = np.transpose(xs, (1, 0, 2))
    bad = inside & ~(np.isfinite(vel).all(1) & np.isfinite(growth))
    if traj is not None:
        has_next = inside & (t < times[-1] - tol)
        bad |= has_next & ~np.isfinite(traj).all((1, 2))
    if bad.any():
        raise FloatingPointError(
            f"The fitted flow gives NaN or infinite velocities, growth rates or paths for {int(bad.sum())} cells. "
            "Nothing was written. Try a smaller learning rate (lr=...), fewer dims (n_dims=...), or rescale the "
            "embedding."
        )
    out = {"velocity": vel, "growth": growth, "fractions": fr}
    if traj is not None:
        out["trajectory"] = traj
    return out
