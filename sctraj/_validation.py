"""Up-front input checks shared by ``tl``, ``pl`` and the command line.

Every check raises an error that names the problem and the fix, and none of them touches the AnnData.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def check_adata(adata) -> None:
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("The AnnData is empty (0 cells). Pass an AnnData with cells from at least two time points.")


def time_values(adata, time_key: str) -> np.ndarray:
    """Return ``adata.obs[time_key]`` as float64, checking that it is numeric and finite."""
    if not isinstance(time_key, str):
        raise TypeError(f"time_key must be the name of an obs column (str), got {type(time_key).__name__}.")
    if time_key not in adata.obs:
        cols = ", ".join(map(repr, list(adata.obs.columns)[:10])) or "none"
        raise KeyError(
            f"time_key {time_key!r} is not a column of adata.obs (columns: {cols}). "
            "Pass the obs column that holds each cell's sampling time, e.g. time_key='day'."
        )
    col = adata.obs[time_key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        try:
            num = pd.to_numeric(pd.Series(np.asarray(cats)), errors="raise").to_numpy(float)
        except (ValueError, TypeError):
            raise ValueError(
                f"adata.obs[{time_key!r}] is categorical with non-numeric categories ({list(cats)[:5]}). "
                "sctraj uses real time values: map them to numbers first, e.g. "
                f"adata.obs[{time_key!r}] = adata.obs[{time_key!r}].map({{'day2': 2.0, ...}}).astype(float)."
            ) from None
        codes = col.cat.codes.to_numpy()
        vals = np.where(codes >= 0, num[np.clip(codes, 0, None)], np.nan)
    elif pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        raise ValueError(
            f"adata.obs[{time_key!r}] has dtype {col.dtype}, not numbers. sctraj uses real time values: convert "
            f"it first, e.g. adata.obs[{time_key!r}] = pd.to_numeric(adata.obs[{time_key!r}])."
        )
    else:
        vals = col.to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(vals)
    if bad.any():
        raise ValueError(
            f"adata.obs[{time_key!r}] has {int(bad.sum())} missing or infinite values. Drop those cells first, "
            f"e.g. adata = adata[adata.obs[{time_key!r}].notna()].copy()."
        )
    return vals


def get_rep(adata, use_rep: str, n_dims: int | None = None) -> np.ndarray:
    """Return the embedding ``adata.obsm[use_rep][:, :n_dims]`` (or ``adata.X`` for ``use_rep="X"``) as float32."""
    if not isinstance(use_rep, str):
        raise TypeError(f"use_rep must be a key of adata.obsm (str), got {type(use_rep).__name__}.")
    if use_rep == "X":
        X = adata.X
        if X is None:
            raise KeyError("use_rep='X' but adata.X is None. Pass an obsm key, e.g. use_rep='X_pca'.")
    elif use_rep not in adata.obsm:
        keys = ", ".join(map(repr, adata.obsm.keys())) or "none"
        hint = " Compute one first, e.g. sc.pp.pca(adata)." if use_rep == "X_pca" else ""
        raise KeyError(f"use_rep {use_rep!r} is not in adata.obsm (keys: {keys}).{hint}")
    else:
        X = adata.obsm[use_rep]
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"adata.obsm[{use_rep!r}] must be 2-dimensional (cells x dims), got shape {X.shape}.")
    if n_dims is not None:
        if isinstance(n_dims, bool) or not isinstance(n_dims, int | np.integer) or n_dims < 1:
            raise ValueError(f"n_dims must be a positive integer or None, got {n_dims!r}.")
        if n_dims > X.shape[1]:
            raise ValueError(
                f"n_dims={n_dims} is larger than the {X.shape[1]} dimensions of {use_rep!r}. "
                f"Pass n_dims <= {X.shape[1]} or None for all of them."
            )
        X = X[:, :n_dims]
    X = X.astype(np.float32, copy=False)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} cells have NaN or infinite values in {use_rep!r}. Remove them or recompute the "
            f"embedding, e.g. adata = adata[np.isfinite(adata.obsm[{use_rep!r}]).all(1)].copy()."
        )
    return X


def positive_int(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_random_state(random_state) -> int:
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        raise ValueError(
            f"random_state must be a non-negative integer (it seeds numpy and torch), got {random_state!r}."
        )
    return int(random_state)


def _match_times(requested: Iterable, available: np.ndarray, what: str) -> list[float]:
    out = []
    for t in requested:
        try:
            tf = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be numeric times, got {t!r}.") from None
        hit = np.isclose(available, tf)
        if not hit.any():
            raise ValueError(f"{what} names time {t!r}, which is not observed. Observed times: {available.tolist()}.")
        out.append(float(available[hit][0]))
    return out


@dataclass
class TimeCourse:
    """Cells of an AnnData grouped by time point, as arrays (nothing below this sees AnnData)."""

    times: np.ndarray  # kept, sorted unique time values
    X: list[np.ndarray]  # per kept time: (n_t, d) float32
    index: list[np.ndarray]  # per kept time: integer positions into adata.obs
    all_times: np.ndarray  # every observed time (including excluded ones)
    cell_time: np.ndarray  # (n_obs,) time of each cell
    excluded: list[float] = field(default_factory=list)
    weights: list[np.ndarray] | None = None  # optional per-cell weights per kept time
    labels: list[np.ndarray] | None = None  # optional per-cell population labels per kept time

    @property
    def dim(self) -> int:
        return self.X[0].shape[1]


def time_course(
    adata,
    time_key: str,
    use_rep: str,
    n_dims: int | None = None,
    exclude_times=None,
    *,
    min_cells: int = 2,
) -> TimeCourse:
    """Validate the inputs of a fit and split the embedding by time point."""
    check_adata(adata)
    t = time_values(adata, time_key)
    X = get_rep(adata, use_rep, n_dims)
    all_times = np.unique(t)
    if len(all_times) < 2:
        raise ValueError(
            f"adata.obs[{time_key!r}] has a single time point ({all_times.tolist()}); trajectories need cells from "
            "at least two time points."
        )
    excluded: list[float] = []
    if exclude_times is not None:
        if np.isscalar(exclude_times):
            exclude_times = [exclude_times]
        excluded = _match_times(exclude_times, all_times, "exclude_times")
    kept = np.array([s for s in all_times if not np.isclose(excluded, s).any()]) if excluded else all_times
    if len(kept) < 2:
        raise ValueError(
            f"exclude_times={excluded} leaves {len(kept)} time point(s) of {all_times.tolist()}; at least two are needed."
        )
    idx = [np.flatnonzero(t == s) for s in kept]
    small = [(float(s), len(i)) for s, i in zip(kept, idx, strict=True) if len(i) < min_cells]
    if small:
        raise ValueError(
            f"time point(s) {small} (time, cells) have fewer than {min_cells} cells, the minimum for this method. "
            "Exclude them with exclude_times=[...] or merge them with a neighbouring time."
        )
    return TimeCourse(
        times=kept.astype(float),
        X=[X[i] for i in idx],
        index=idx,
        all_times=all_times.astype(float),
        cell_time=t,
        excluded=excluded,
    )
