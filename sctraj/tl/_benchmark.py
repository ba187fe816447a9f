"""Leave-one-time-point-out benchmark (the TrajectoryNet / TorchCFM / Metric FM protocol)."""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._settings import logger, muted_info
from .._validation import (
    _match_times,
    check_adata,
    check_distinct_times,
    check_int,
    check_random_state,
    get_rep,
    time_mask,
    time_tolerance,
    time_values,
)
from ._metrics import evaluate, ot_interpolation

REFERENCES = ("no_movement", "ot_interpolation")


def leave_one_out(
    adata,
    time_key: str,
    *,
    methods: str | Sequence[str] = ("icfm", "otcfm", "sbcfm"),
    use_rep: str = "X_pca",
    n_dims: int | None = None,
    heldout=None,
    seeds: Sequence[int] = (0,),
    references: bool = True,
    max_cells: int = 10_000,
    n_steps_ode: int = 100,
    n_jobs: int | None = None,
    threads_per_task: int | None = 1,
    **fit_kwargs,
) -> pd.DataFrame:
    """Hold out each intermediate time point, fit without it, and score the prediction of the held-out cells.

    For held-out time ``t_k`` every method is fitted on the other time points, every cell of ``t_(k-1)`` is pushed to
    ``t_k`` with ``n_steps_ode`` Euler steps, and the prediction (weighted by the predicted mass for growth-aware
    methods) is compared with the observed cells of ``t_k`` by :func:`sctraj.tl.evaluate` (exact W1 / W2 with the
    Euclidean cost, MMD) in the coordinates the model was fitted in.

    Two untrained reference rows are added per held-out time so that a fit can be judged against trivial answers:
    ``"no_movement"`` (the cells of ``t_(k-1)`` themselves) and ``"ot_interpolation"`` (McCann displacement
    interpolation of the exact OT plan between ``t_(k-1)`` and ``t_(k+1)`` at the held-out time).

    Parameters
    ----------
    adata
        AnnData with at least three time points.
    time_key
        Numeric time column of ``adata.obs``.
    methods
        Method names (see :func:`sctraj.models.available_methods`).
    use_rep, n_dims
        Embedding to fit and evaluate in, as in :func:`fit_flow`.
    heldout
        Time(s) to hold out; all intermediate time points by default.
    seeds
        One fit per seed and method.
    references
        Add the two reference rows.
    max_cells
        Evaluation sets larger than this are subsampled (see :func:`sctraj.tl.evaluate`).
    n_steps_ode
        Euler steps of the push-forward.
    n_jobs
        Fits run in parallel through :class:`joblib.Parallel`: ``None`` (default) is serial unless called inside a
        :func:`joblib.parallel_backend` context, which then decides (``with joblib.parallel_backend("dask"):`` spreads
        the fits over a :class:`dask.distributed.Client`'s workers, ``"ray"`` over a Ray cluster, with no other
        change); ``2`` runs two local worker processes (joblib's ``loky`` backend); ``-1`` one per CPU. Each fit
        (method x held-out time x seed) is one task. Tasks receive only the embedding and the ``obs`` columns the fits
        read (``time_key`` and any ``obs`` column named in ``fit_kwargs``, e.g. ``population_key``), never
        ``adata.X``; joblib's Dask backend scatters them to the workers once. Results do not depend on ``n_jobs`` or
        the backend: every fit is seeded by its ``seed`` only.
    threads_per_task
        Torch CPU threads and BLAS threads (NumPy / POT) in each task, restored afterwards (the caller's settings are
        never left changed). ``1`` (default) suits the small networks, lets ``n_jobs`` tasks share the CPUs without
        oversubscription, and makes serial and parallel runs identical: with another number of BLAS threads,
        float32 OT plans (``vgfm``) can differ in the last digits. ``None`` keeps the current settings.
    **fit_kwargs
        Passed to :func:`fit_flow` (e.g. ``n_steps``, ``exclude_times``, method parameters).

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``method``, ``heldout``, ``seed``, ``W1``, ``W2``, ``MMD``,
    ``fit_seconds``, ``n_train_steps``. ``adata`` is not modified.

    Examples
    --------
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> scores = sctraj.tl.leave_one_out(adata, "day", methods=["otcfm"], use_rep="X_emb", n_jobs=2)  # doctest: +SKIP

    The same call on a Dask cluster (``pip install "sctraj[dask]"``), with identical results:

    >>> import joblib
    >>> from dask.distributed import Client
    >>> client = Client()  # doctest: +SKIP
    >>> with joblib.parallel_backend("dask"):  # doctest: +SKIP
    ...     scores = sctraj.tl.leave_one_out(adata, "day", methods=["otcfm", "vgfm"], use_rep="X_emb", seeds=range(3))
    """
    check_adata(adata)
    check_fit_kwargs(fit_kwargs)
    max_cells, n_steps_ode = check_int("max_cells", max_cells), check_int("n_steps_ode", n_steps_ode)
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods and not references:
        raise ValueError("Nothing to evaluate: pass at least one method or references=True.")
    from ..models import get_method

    for m in methods:
        get_method(m)
    seeds = [check_random_state(s) for s in (seeds if np.ndim(seeds) else [seeds])]
    tpt = threads_per_task
    if tpt is not None and (isinstance(tpt, bool) or not isinstance(tpt, int | np.integer) or tpt < 1):
        raise ValueError(f"threads_per_task must be a positive integer or None, got {threads_per_task!r}.")
    t = time_values(adata, time_key)
    X = get_rep(adata, use_rep, n_dims, dtype=None)
    user_excl = fit_kwargs.pop("exclude_times", None)
    user_excl = [] if user_excl is None else ([user_excl] if np.ndim(user_excl) == 0 else list(user_excl))
    all_times = np.unique(t)
    check_distinct_times(all_times, time_key, adata.n_obs)
    tol = time_tolerance(all_times)
    user_excl = _match_times(user_excl, all_times, "exclude_times")
    kept = np.array([s for s in all_times if s not in user_excl])
    if len(kept) < 3:
        raise ValueError(f"leave_one_out needs at least three time points, got {kept.tolist()}.")
    interior = kept[1:-1]
    if heldout is None:
        heldout = interior.tolist()
    else:
        heldout = _match_times([heldout] if np.ndim(heldout) == 0 else heldout, kept, "heldout", tol)
        bad = [h for h in heldout if h not in interior]
        if bad:
            raise ValueError(f"heldout times {bad} are not intermediate time points; choose from {interior.tolist()}.")
    # what a task needs, and nothing more: the embedding and the obs columns the fits read (never adata.X). The
    # fits write into a private AnnData built per task, so leave_one_out never writes into the user's AnnData.
    obs = _task_obs(adata, time_key, fit_kwargs)
    rows: dict[float, list[dict]] = {float(h): [] for h in heldout}
    tasks = []
    for h in heldout:
        k = int(np.flatnonzero(kept == h)[0])
        prev, nxt = kept[k - 1], kept[k + 1]
        X_true = X[time_mask(t, h, tol)]
        X_prev = X[time_mask(t, prev, tol)]
        if references:
            r = evaluate(X_prev, X_true, max_cells=max_cells)
            rows[float(h)].append({"method": "no_movement", "heldout": h, "seed": pd.NA, **r, "fit_seconds": 0.0,
                                   "n_train_steps": 0})
            t0 = _time.perf_counter()
            pts, w = ot_interpolation(X_prev, X[time_mask(t, nxt, tol)], (h - prev) / (nxt - prev), max_cells=max_cells)
            r = evaluate(pts, X_true, weights=w, max_cells=max_cells)
            rows[float(h)].append({"method": "ot_interpolation", "heldout": h, "seed": pd.NA, **r,
                                   "fit_seconds": _time.perf_counter() - t0, "n_train_steps": 0})
        tasks += [(m, h, prev, s) for m in methods for s in seeds]
    if tasks:
        from joblib import Parallel, delayed

        spec = {"time_key": time_key, "use_rep": use_rep, "n_dims": n_dims, "user_excl": list(user_excl),
                "n_steps_ode": n_steps_ode, "max_cells": max_cells, "threads_per_task": threads_per_task,
                "fit_kwargs": fit_kwargs}
        with _restore_torch_threads(), _blas_threads(threads_per_task):
            results = Parallel(n_jobs=n_jobs)(
                delayed(_fit_and_score)(X, obs, m, h, prev, s, spec) for m, h, prev, s in tasks
            )
        for (m, h, _, s), r in zip(tasks, results, strict=True):
            rows[float(h)].append(r)
            logger.info(f"leave_one_out: {m} heldout={h:g} seed={s}: W1={r['W1']:.4f}")
    df = pd.DataFrame([r for h in heldout for r in rows[float(h)]])
    df["seed"] = df["seed"].astype("Int64")
    return df


def _task_obs(adata, time_key: str, fit_kwargs: dict) -> pd.DataFrame:
    """The ``obs`` columns a fit reads: ``time_key`` and every column named by a string in ``fit_kwargs``."""
    named = [v for v in fit_kwargs.values() if isinstance(v, str) and v in adata.obs.columns]
    cols = list(dict.fromkeys([time_key, *named]))
    return adata.obs[cols].copy()


@contextlib.contextmanager
def _restore_torch_threads():
    """Put torch's intra-op thread count back afterwards (tasks running in threads of this process may change it)."""
    import torch

    old = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _blas_threads(n: int | None):
    """Limit BLAS to ``n`` threads in this block (``None``: no change); restored afterwards."""
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(int(n), user_api="blas")


def _fit_and_score(X: np.ndarray, obs: pd.DataFrame, method: str, h: float, prev: float, seed: int,
                   spec: dict) -> dict:
    """One leave-one-out task: fit ``method`` without time ``h`` and score the push of ``prev`` to ``h``.

    Runs in a joblib worker (a process, a thread or a remote Dask / Ray worker): it receives only the embedding
    ``X`` and the needed ``obs`` columns, and builds its own small AnnData to fit in.
    """
    import anndata as ad

    from ..engine.trainer import cpu_threads
    from ._fit import fit_flow
    from ._predict import predict

    use_rep = spec["use_rep"]
    work = ad.AnnData(X=X, obs=obs.copy()) if use_rep == "X" else ad.AnnData(obs=obs.copy(), obsm={use_rep: X})
    t = time_values(work, spec["time_key"])
    X_true = X[time_mask(t, h, time_tolerance(np.unique(t)))]
    threads = spec["threads_per_task"]
    # thread-safe: tasks running in threads of one process share one torch setting (engine.trainer.cpu_threads)
    # muted: the fit's "wrote ..." lines would name this working copy's private key
    with cpu_threads(threads), _blas_threads(threads), muted_info():
        model = fit_flow(work, spec["time_key"], method=method, use_rep=use_rep, n_dims=spec["n_dims"],
                         exclude_times=[h, *spec["user_excl"]], random_state=seed, key_added="_sctraj_loo",
                         **spec["fit_kwargs"])
        pred = predict(work, model, source_time=prev, target_time=h, n_steps=spec["n_steps_ode"])
        w = pred.obs["weight"].to_numpy() if model.has_growth else None
        P = np.asarray(pred.X if use_rep == "X" else pred.obsm[use_rep])[:, : model.dim]  # the pushed positions
        r = evaluate(P, X_true, weights=w, max_cells=spec["max_cells"], random_state=seed)
    return {"method": method, "heldout": h, "seed": seed, **r, "fit_seconds": float(model.setup["fit_seconds"]),
            "n_train_steps": int(model.setup["n_steps"])}


# fit_flow arguments that leave_one_out sets itself, and what to pass instead
_OWN_ARGS = {
    "random_state": "pass seeds=[...] (one fit per seed)",
    "key_added": "leave_one_out fits on a private copy and writes nothing into adata; drop key_added",
    "method": "pass methods=[...]",
    "time_key": "pass the time column as the second argument",
    "copy": "leave_one_out never modifies adata; drop copy",
    "distributed": "leave_one_out runs its fits through joblib; use n_jobs=... (or a joblib backend)",
}


def check_fit_kwargs(fit_kwargs: dict) -> None:
    """Refuse fit_flow arguments that leave_one_out sets itself, naming its own argument to use instead."""
    clash = [k for k in fit_kwargs if k in _OWN_ARGS]
    if clash:
        raise TypeError(
            f"leave_one_out sets {clash[0]!r} itself: {_OWN_ARGS[clash[0]]}."
            + (f" (also: {clash[1:]})" if len(clash) > 1 else "")
        )
