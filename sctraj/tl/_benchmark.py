"""Leave-one-time-point-out benchmark (the TrajectoryNet / TorchCFM / Metric FM protocol)."""

from __future__ import annotations

import time as _time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._settings import logger
from .._validation import _match_times, check_adata, check_random_state, get_rep, time_values
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
    **fit_kwargs
        Passed to :func:`fit_flow` (e.g. ``n_steps``, ``exclude_times``, method parameters).

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``method``, ``heldout``, ``seed``, ``W1``, ``W2``, ``MMD``,
    ``fit_seconds``, ``n_train_steps``. ``adata`` is not modified.
    """
    from ._fit import fit_flow
    from ._predict import predict

    check_adata(adata)
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods and not references:
        raise ValueError("Nothing to evaluate: pass at least one method or references=True.")
    from ..models import get_method

    for m in methods:
        get_method(m)
    seeds = [check_random_state(s) for s in (seeds if np.ndim(seeds) else [seeds])]
    t = time_values(adata, time_key)
    X = get_rep(adata, use_rep, n_dims)
    user_excl = fit_kwargs.pop("exclude_times", None)
    user_excl = [] if user_excl is None else ([user_excl] if np.isscalar(user_excl) else list(user_excl))
    all_times = np.unique(t)
    user_excl = _match_times(user_excl, all_times, "exclude_times")
    kept = np.array([s for s in all_times if not np.isclose(user_excl, s).any()])
    if len(kept) < 3:
        raise ValueError(f"leave_one_out needs at least three time points, got {kept.tolist()}.")
    interior = kept[1:-1]
    if heldout is None:
        heldout = interior.tolist()
    else:
        heldout = _match_times([heldout] if np.isscalar(heldout) else heldout, kept, "heldout")
        bad = [h for h in heldout if not np.isclose(interior, h).any()]
        if bad:
            raise ValueError(f"heldout times {bad} are not intermediate time points; choose from {interior.tolist()}.")
    # fit on a private copy: leave_one_out never writes into the user's AnnData
    work = adata.copy()
    rows = []
    for h in heldout:
        k = int(np.flatnonzero(np.isclose(kept, h))[0])
        prev, nxt = kept[k - 1], kept[k + 1]
        X_true = X[np.isclose(t, h)]
        X_prev = X[np.isclose(t, prev)]
        if references:
            r = evaluate(X_prev, X_true, max_cells=max_cells)
            rows.append({"method": "no_movement", "heldout": h, "seed": pd.NA, **r, "fit_seconds": 0.0,
                         "n_train_steps": 0})
            t0 = _time.perf_counter()
            pts, w = ot_interpolation(X_prev, X[np.isclose(t, nxt)], (h - prev) / (nxt - prev), max_cells=max_cells)
            r = evaluate(pts, X_true, weights=w, max_cells=max_cells)
            rows.append({"method": "ot_interpolation", "heldout": h, "seed": pd.NA, **r,
                         "fit_seconds": _time.perf_counter() - t0, "n_train_steps": 0})
        for m in methods:
            for s in seeds:
                model = fit_flow(work, time_key, method=m, use_rep=use_rep, n_dims=n_dims,
                                 exclude_times=[h, *user_excl], random_state=s, key_added="_sctraj_loo", **fit_kwargs)
                pred = predict(work, model, source_time=prev, target_time=h, n_steps=n_steps_ode)
                w = pred.obs["weight"].to_numpy() if model.has_growth else None
                r = evaluate(pred.obsm[use_rep], X_true, weights=w, max_cells=max_cells, random_state=s)
                rows.append({"method": m, "heldout": h, "seed": s, **r,
                             "fit_seconds": float(model.setup["fit_seconds"]),
                             "n_train_steps": int(model.setup["n_steps"])})
                logger.info(f"leave_one_out: {m} heldout={h:g} seed={s}: W1={r['W1']:.4f}")
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df
