"""Up-front input checks shared by ``tl``, ``pl`` and the command line.

Every check raises an error that names the problem and the fix, and none of them touches the AnnData.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._times import is_label_column, string_times


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
    if is_label_column(col):  # "D2", "day 4.5", "E7.5": parsed to numbers (sctraj/_times.py)
        vals = string_times(col, time_key)
    elif isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        try:
            num = pd.to_numeric(pd.Series(np.asarray(cats)), errors="raise")
            if pd.api.types.is_complex_dtype(num) or pd.api.types.is_bool_dtype(num):
                raise TypeError
            num = num.to_numpy(float)
        except (ValueError, TypeError):
            raise ValueError(
                f"adata.obs[{time_key!r}] is categorical with non-numeric categories ({list(cats)[:5]}). "
                "sctraj uses real time values: map them to numbers first, e.g. "
                f"adata.obs[{time_key!r}] = adata.obs[{time_key!r}].map({{'day2': 2.0, ...}}).astype(float)."
            ) from None
        codes = col.cat.codes.to_numpy()
        vals = np.where(codes >= 0, num[np.clip(codes, 0, None)], np.nan)
    elif pd.api.types.is_complex_dtype(col):
        raise ValueError(
            f"adata.obs[{time_key!r}] holds complex numbers; times must be real. Keep the real part if that is the "
            f"time: adata.obs[{time_key!r}] = np.real(adata.obs[{time_key!r}])."
        )
    elif pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        raise ValueError(
            f"adata.obs[{time_key!r}] holds dates/durations ({col.dtype}). Convert them to numbers in the unit you want "
            f"rates in, e.g. days since the first sample: adata.obs[{time_key!r}] = "
            f"(adata.obs[{time_key!r}] - adata.obs[{time_key!r}].min()).dt.total_seconds() / 86400."
        )
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


def _rep_dtype(dtype) -> type:
    """Working precision of an embedding: float32 for float16/32, float64 for everything else (kept exact)."""
    return np.float32 if np.dtype(dtype) in (np.float16, np.float32) else np.float64


def get_rep(adata, use_rep: str, n_dims: int | None = None, *, dtype=np.float32, dims: int | None = None) -> np.ndarray:
    """Return the embedding ``adata.obsm[use_rep][:, :n_dims]`` (or ``adata.X`` for ``use_rep="X"``).

    Only the needed columns are read: a sparse or backed ``X`` is sliced before it is densified. ``dtype=None``
    keeps float64 (and integer) embeddings in float64, so large offsets or magnitudes beyond float32 survive;
    float16/32 embeddings come back as float32. ``dims``, when given, is the exact number of columns required (a
    fitted model's); more or fewer is an error.
    """
    if not isinstance(use_rep, str):
        raise TypeError(f"use_rep must be a key of adata.obsm (str), got {type(use_rep).__name__}.")
    where = "adata.X" if use_rep == "X" else f"adata.obsm[{use_rep!r}]"
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
    if isinstance(X, pd.DataFrame):
        bad_cols = [c for c in X.columns if pd.api.types.is_bool_dtype(X[c]) or not pd.api.types.is_numeric_dtype(X[c])
                    or pd.api.types.is_complex_dtype(X[c])]
        if bad_cols:
            raise ValueError(
                f"{where} is a DataFrame with non-numeric column(s) {[str(c) for c in bad_cols][:5]}. Store only the "
                f"numeric coordinates, e.g. adata.obsm[{use_rep!r}] = adata.obsm[{use_rep!r}].drop(columns=[...])."
            )
        X = X.to_numpy()
    shape = getattr(X, "shape", None)
    if shape is None:
        X = np.asarray(X)
        shape = X.shape
    if len(shape) != 2:
        raise ValueError(f"{where} must be 2-dimensional (cells x dims), got shape {tuple(shape)}.")
    if n_dims is not None:
        if isinstance(n_dims, bool) or not isinstance(n_dims, int | np.integer) or n_dims < 1:
            raise ValueError(f"n_dims must be a positive integer or None, got {n_dims!r}.")
        if n_dims > shape[1]:
            raise ValueError(
                f"n_dims={n_dims} is larger than the {shape[1]} dimensions of {use_rep!r}. "
                f"Pass n_dims <= {shape[1]} or None for all of them."
            )
    if dims is not None and n_dims is None and shape[1] != dims:
        raise ValueError(
            f"{where} has {shape[1]} dimensions, but the model was fitted on all {dims} dimensions of {use_rep!r}. "
            f"Pass the same embedding the model was fitted on (same {use_rep!r} computation, {dims} columns)."
        )
    k = shape[1] if n_dims is None else int(n_dims)
    if k < shape[1] or not isinstance(X, np.ndarray):
        X = X[:, :k]  # slice first: a sparse / backed X is densified only in the needed columns
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if X.dtype.kind not in "iuf":
        raise ValueError(
            f"{where} has dtype {X.dtype}; an embedding must hold real numbers (int or float). Convert it, e.g. "
            f"adata.obsm[{use_rep!r}] = np.asarray(adata.obsm[{use_rep!r}], dtype=float)."
        )
    out_dtype = _rep_dtype(X.dtype) if dtype is None else dtype
    if out_dtype == np.float32 and X.dtype.kind == "f" and X.dtype.itemsize > 4:
        big = np.abs(X[np.isfinite(X)]).max(initial=0.0)
        if big > np.finfo(np.float32).max:
            raise ValueError(
                f"{where} has values up to {big:.3g}, beyond single precision (3.4e38). Rescale the embedding "
                f"(e.g. divide by its standard deviation)."
            )
    X = X.astype(out_dtype, copy=False)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} cells have NaN or infinite values in {use_rep!r}. Remove them or recompute the "
            f"embedding, e.g. adata = adata[np.isfinite(adata.obsm[{use_rep!r}]).all(1)].copy()."
        )
    return X


def model_rep(adata, model) -> np.ndarray:
    """The embedding a fitted model works on, checked to have the model's dimensions (dtype kept, see get_rep)."""
    setup = model.setup
    rep_dims = setup.get("rep_dims")
    if rep_dims is not None and int(rep_dims) == model.dim:  # fitted on every column: require the same width
        return get_rep(adata, model.use_rep, None, dtype=None, dims=model.dim)
    X = adata.X if model.use_rep == "X" else adata.obsm.get(model.use_rep) if model.use_rep in adata.obsm else None
    if X is not None and getattr(X, "ndim", 2) == 2 and getattr(X, "shape", (0, model.dim))[1] < model.dim:
        raise ValueError(
            f"The model was fitted on the first {model.dim} dimensions of {model.use_rep!r}, but this AnnData's "
            f"{model.use_rep!r} has only {X.shape[1]}. Pass the embedding the model was fitted on."
        )
    return get_rep(adata, model.use_rep, model.dim, dtype=None)


def check_int(name: str, value, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """An integer (Python or NumPy, not bool) ``>= minimum``, returned as a Python int."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "positive" if minimum == 1 else ("non-negative" if minimum == 0 else f">= {minimum}")
        raise ValueError(f"{name} must be a {kind} integer{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


def positive_int(name: str, value, *, allow_none: bool = False) -> None:
    check_int(name, value, allow_none=allow_none)


MAX_SEED = 2**63 - 1  # stored as int64 in h5ad files and accepted by torch.manual_seed


def check_random_state(random_state) -> int:
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or \
            not 0 <= random_state <= MAX_SEED:
        raise ValueError(
            f"random_state must be a non-negative integer below 2**63 (it seeds numpy and torch), got {random_state!r}."
        )
    return int(random_state)


def check_key_added(key_added, name: str = "key_added") -> str:
    """A key sctraj may write under: a non-empty string that survives ``write_h5ad`` / ``read_h5ad``."""
    if not isinstance(key_added, str) or not key_added.strip():
        raise ValueError(f"{name} must be a non-empty string, got {key_added!r}.")
    if "/" in key_added or "\x00" in key_added or key_added != key_added.strip():
        raise ValueError(
            f"{name}={key_added!r} cannot be stored in an .h5ad file ('/' separates groups in HDF5; NUL and "
            f"leading/trailing spaces are not kept). Use letters, digits, '_' or '-', e.g. "
            f"{re.sub(r'[^0-9A-Za-z_-]+', '_', key_added.strip()) or 'sctraj'!r}."
        )
    return key_added


def config_params(Config, params: dict) -> dict:
    """Check and normalise method parameters against the fields of a method's config dataclass.

    NumPy scalars become Python ``int`` / ``float`` / ``bool`` (so the model saves as plain types); a string, a
    bool or an array where a number is expected, or a number where a name is expected, is an error naming the
    parameter and the expected type.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(Config)
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"Unknown parameter(s) {unknown} for this method. Valid method parameters: {sorted(names)}.")
    out = {}
    for name, v in params.items():
        kinds = set(typing.get_args(hints[name])) or {hints[name]}
        if isinstance(v, np.generic):
            v = v.item()
        if v is None and type(None) in kinds:
            out[name] = v
            continue
        if isinstance(v, bool):
            ok = bool in kinds
        elif isinstance(v, int):
            ok = bool(kinds & {int, float})
            v = float(v) if int not in kinds and float in kinds else v
        elif isinstance(v, float):
            ok = float in kinds
        elif isinstance(v, str):
            ok = str in kinds
        else:
            ok = False
        if not ok:
            want = " or ".join(sorted(("None" if k is type(None) else k.__name__) for k in kinds))
            fix = ""
            if isinstance(v, str) and kinds & {int, float}:
                fix = f" Pass a number, e.g. {name}={v.strip()}" if _is_number(v) else ""
            raise TypeError(f"{name} must be {want}, got {v!r} ({type(v).__name__}).{fix}")
        out[name] = v
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def summarize(values, n: int = 8) -> str:
    """A short list for messages: all values when few, else the first and last ones and the count."""
    vals = [f"{float(v):g}" if isinstance(v, float | np.floating | int | np.integer) else repr(v) for v in values]
    if len(vals) <= n:
        return "[" + ", ".join(vals) + "]"
    return "[" + ", ".join(vals[: n // 2]) + ", ..., " + ", ".join(vals[-2:]) + f"] ({len(vals)} values)"


# ---------------------------------------------------------------------------------------------------------------
# times: one tolerance for every comparison (fit, exclude_times, predict, interpolate, leave_one_out)
# ---------------------------------------------------------------------------------------------------------------
def time_tolerance(times) -> float:
    """Two times closer than this are the same time point.

    One millionth of the span of the observed times: relative to the span, not to the times' magnitude, so epoch
    seconds or nanoseconds work like days (an absolute or value-relative tolerance would merge epoch times hours
    apart). Floor: a few float64 units in the last place of the largest time.
    """
    t = np.asarray(times, np.float64)
    t = t[np.isfinite(t)]
    if t.size == 0:
        return 0.0
    span = float(t.max() - t.min())
    return max(1e-6 * span, 8 * float(np.spacing(np.abs(t).max())))


def match_time(available, t, tol: float) -> int | None:
    """Index of the time in ``available`` within ``tol`` of ``t`` (the nearest), or ``None``."""
    available = np.asarray(available, np.float64)
    if available.size == 0:
        return None
    d = np.abs(available - float(t))
    k = int(np.argmin(d))
    return k if d[k] <= tol else None


def time_mask(cell_times, t, tol: float) -> np.ndarray:
    """Cells whose time is ``t`` (within ``tol``)."""
    return np.abs(np.asarray(cell_times, np.float64) - float(t)) <= tol


def _as_time(t, what: str) -> float:
    if isinstance(t, complex | np.complexfloating | bool | np.bool_):
        raise ValueError(f"{what} must be real numbers, got {t!r}.")
    try:
        tf = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number (a time), got {t!r}.") from None
    if not np.isfinite(tf):
        raise ValueError(f"{what} must be finite, got {t!r}.")
    return tf


def _match_times(requested: Iterable, available: np.ndarray, what: str, tol: float | None = None) -> list[float]:
    tol = time_tolerance(available) if tol is None else tol
    out = []
    for t in requested:
        k = match_time(available, _as_time(t, what), tol)
        if k is None:
            raise ValueError(f"{what} names time {t!r}, which is not observed. Observed times: {summarize(available)}.")
        out.append(float(available[k]))
    return out


def check_distinct_times(all_times: np.ndarray, time_key: str, n_obs: int) -> None:
    """Refuse time columns that are not snapshots: near-duplicate times, or (nearly) one time per cell."""
    tol = time_tolerance(all_times)
    gaps = np.diff(all_times)
    close = np.flatnonzero(gaps <= tol)
    if close.size:
        a, b = all_times[close[0]], all_times[close[0] + 1]
        raise ValueError(
            f"adata.obs[{time_key!r}] has times {a!r} and {b!r} only {b - a:.3g} apart (less than the tolerance "
            f"{tol:.3g}, 1e-6 of the time span): they would be treated as different snapshots with an almost zero "
            f"interval. Round the time column, e.g. adata.obs[{time_key!r}] = adata.obs[{time_key!r}].round(6)."
        )


@dataclass
class TimeCourse:
    """Cells of an AnnData grouped by time point, as arrays (nothing below this sees AnnData)."""

    times: np.ndarray  # kept, sorted unique time values
    X: list[np.ndarray]  # per kept time: (n_t, d) in the embedding's working precision (see get_rep)
    index: list[np.ndarray]  # per kept time: integer positions into adata.obs
    all_times: np.ndarray  # every observed time (including excluded ones)
    cell_time: np.ndarray  # (n_obs,) time of each cell
    excluded: list[float] = field(default_factory=list)
    weights: list[np.ndarray] | None = None  # optional per-cell weights per kept time
    labels: list[np.ndarray] | None = None  # optional per-cell population labels per kept time
    rep_dims: int = 0  # columns of the whole embedding (before n_dims)

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
    X = get_rep(adata, use_rep, n_dims, dtype=None)
    rep = adata.X if use_rep == "X" else adata.obsm[use_rep]
    all_times = np.unique(t)
    if len(all_times) < 2:
        raise ValueError(
            f"adata.obs[{time_key!r}] has a single time point ({all_times.tolist()}); trajectories need cells from "
            "at least two time points."
        )
    check_distinct_times(all_times, time_key, adata.n_obs)
    excluded: list[float] = []
    if exclude_times is not None:
        if np.ndim(exclude_times) == 0:
            exclude_times = [exclude_times]
        excluded = _match_times(exclude_times, all_times, "exclude_times")
    kept = np.array([s for s in all_times if s not in excluded]) if excluded else all_times
    if len(kept) < 2:
        raise ValueError(
            f"exclude_times={excluded} leaves {len(kept)} time point(s) of {summarize(all_times)}; at least two are "
            "needed."
        )
    idx = [np.flatnonzero(t == s) for s in kept]
    small = [(float(s), len(i)) for s, i in zip(kept, idx, strict=True) if len(i) < min_cells]
    if small:
        if len(all_times) > adata.n_obs / 2:
            raise ValueError(
                f"adata.obs[{time_key!r}] looks continuous ({len(all_times)} distinct times for {adata.n_obs} cells, "
                f"{summarize(all_times)}); sctraj needs snapshots, with at least {min_cells} cells per time point. "
                f"Bin the times first, e.g. adata.obs[{time_key!r}] = adata.obs[{time_key!r}].round(0)."
            )
        raise ValueError(
            f"{len(small)} time point(s) have fewer than {min_cells} cells, the minimum for this method "
            f"((time, cells): {summarize(small) if len(small) > 8 else small}). Exclude them with exclude_times=[...] "
            "or merge them with a neighbouring time."
        )
    return TimeCourse(
        times=kept.astype(float),
        X=[X[i] for i in idx],
        index=idx,
        all_times=all_times.astype(float),
        cell_time=t,
        excluded=excluded,
        rep_dims=int(rep.shape[1]),
    )
