"""From flows to fates: fate probabilities, cell-type transitions and push / pull of cell sets, read in cell types.

Every function pushes observed cells through the learned flow (forward, or backward for ``pull`` and backward
transitions) and reads where they land among the cells observed at the other time with the label-transfer rule of
:mod:`sctraj.tl._transfer` (Gaussian kernel over the ``n_neighbors`` nearest observed cells, adaptive bandwidth).
For growth-aware methods (``vgfm``) a pushed cell carries its predicted mass ``exp(int g dt)``, so aggregates count
progeny, not ancestors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._validation import check_adata, get_rep, time_values
from ._store import resolve_model
from ._transfer import check_n_neighbors, kernel_weights, one_hot, row_normalize
from ._utils import h5ad_safe, population_groups


# ---------------------------------------------------------------------------------------------------------------
# checks shared by the fate functions (all raise before anything is written)
# ---------------------------------------------------------------------------------------------------------------
def _setup(adata, model, key: str):
    """The model (``None``: the one stored in ``adata.uns[key]``), each cell's time and the embedding in its dims."""
    check_adata(adata)
    _check_key(key, "key")
    model = resolve_model(adata, model, key)
    t = time_values(adata, model.time_key)
    use_rep, dim = model.use_rep, model.dim
    if use_rep != "X" and use_rep not in adata.obsm:
        keys = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise KeyError(
            f"The model was fitted on adata.obsm[{use_rep!r}] ({dim} dims), which this AnnData lacks (obsm keys: "
            f"{keys}). Pass the AnnData the model was fitted on (or one with the same embedding), or refit on this "
            f"one with sctraj.tl.fit_flow(adata, {model.time_key!r}, use_rep=...)."
        )
    M = adata.X if use_rep == "X" else adata.obsm[use_rep]
    n_have = M.shape[1] if getattr(M, "ndim", 0) == 2 else None
    if n_have is not None and n_have < dim:
        raise ValueError(
            f"The model was fitted on {dim} dims of {use_rep!r}, but adata.obsm[{use_rep!r}] here has {n_have}: "
            f"it is a different embedding. Use the embedding the model was fitted on, or refit on this one with "
            f"sctraj.tl.fit_flow(adata, {model.time_key!r}, use_rep={use_rep!r})."
        )
    return model, t, get_rep(adata, use_rep, dim)


def _observed_time(t: np.ndarray, model, value, what: str) -> float:
    v = model.check_time(value, what)
    if not np.isclose(t, v).any():
        raise ValueError(
            f"No cells at {what}={value!r} in adata.obs[{model.time_key!r}] (observed: "
            f"{np.unique(t).tolist()}). Pass an observed time point."
        )
    return float(t[np.isclose(t, v)][0])


def _labels(adata, key, what: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes (``-1`` = unlabelled: NaN or empty) and category names of ``adata.obs[key]``."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be the name of an obs column (str), got {type(key).__name__}.")
    if key not in adata.obs:
        cols = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
        raise KeyError(
            f"{what}={key!r} is not a column of adata.obs (columns: {cols}). Pass the obs column with the cell "
            f"annotation, e.g. {what}='cell_type'."
        )
    col = adata.obs[key]
    lab = col.astype(object).to_numpy()
    missing = pd.isna(lab) | np.array([isinstance(v, str) and not v.strip() for v in lab], bool)
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories if not (isinstance(c, str) and not c.strip())]
    else:
        cats = sorted({str(v) for v, m in zip(lab, missing, strict=True) if not m})
    index = {c: i for i, c in enumerate(cats)}
    codes = np.array([-1 if m else index.get(str(v), -1) for v, m in zip(lab, missing, strict=True)], np.int64)
    return codes, cats


def _present(codes: np.ndarray, cats: list[str], here: np.ndarray, key: str, time_key: str, tv: float, role: str):
    """Codes restricted to the categories present among the cells ``here`` (re-numbered) and those categories."""
    used = np.unique(codes[here & (codes >= 0)])
    if len(used) == 0:
        raise ValueError(
            f"adata.obs[{key!r}] has no labels among the {int(here.sum())} cells at {time_key}={tv:g}, the "
            f"{role}. Annotate those cells, or choose a time point whose cells are annotated."
        )
    remap = np.full(len(cats), -1, np.int64)
    remap[used] = np.arange(len(used))
    new = np.where(codes >= 0, remap[np.clip(codes, 0, None)], -1)
    return new, [cats[i] for i in used]


def _selection(adata, sel, what: str) -> np.ndarray:
    """A boolean mask from a mask or an ``(obs column, category)`` pair."""
    if isinstance(sel, tuple) and len(sel) == 2 and isinstance(sel[0], str):
        key, cat = sel
        if key not in adata.obs:
            raise KeyError(f"{what}=({key!r}, {cat!r}): {key!r} is not a column of adata.obs.")
        vals = adata.obs[key].astype(str).to_numpy()
        mask = vals == str(cat)
        if not mask.any():
            present = sorted(set(vals.tolist()))[:12]
            raise ValueError(f"{what}=({key!r}, {cat!r}) selects no cells; categories of {key!r}: {present}.")
        return mask
    arr = np.asarray(sel.to_numpy() if isinstance(sel, pd.Series) else sel)
    if arr.dtype != bool:
        raise TypeError(
            f"{what} must be a boolean mask over the cells or an (obs column, category) pair such as "
            f"('cell_type', 'Neutrophil'), got {type(sel).__name__} of dtype {arr.dtype}."
        )
    if arr.shape != (adata.n_obs,):
        raise ValueError(
            f"The {what} mask has shape {arr.shape} but adata has {adata.n_obs} cells. Build it from this AnnData, "
            f"e.g. {what} = (adata.obs['cell_type'] == 'Neutrophil').to_numpy()."
        )
    if not arr.any():
        raise ValueError(f"The {what} mask selects no cells.")
    return arr


def _at_time(t: np.ndarray, mask: np.ndarray, tv: float, what: str) -> np.ndarray:
    out = mask & np.isclose(t, tv)
    if not out.any():
        raise ValueError(f"None of the {what} cells is observed at time {tv:g}.")
    return out


def _one_time(t: np.ndarray, mask: np.ndarray, model, what: str, arg: str) -> float:
    tv = np.unique(t[mask])
    if len(tv) > 1:
        raise ValueError(
            f"The {what} cells come from several time points ({tv.tolist()}); pass {arg}=<one of them> to keep "
            f"the cells of one time point."
        )
    return model.check_time(tv[0], f"time of the {what} cells")


def _check_key(key, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string, got {key!r}.")
    return key


def _push(adata, model, X, pos, t_from, t_to, n_steps, solver) -> tuple[np.ndarray, np.ndarray]:
    """Positions and log-masses of the cells ``pos`` (sorted) pushed from ``t_from`` to ``t_to``."""
    mask = np.zeros(adata.n_obs, bool)
    mask[pos] = True
    Y = np.empty((len(pos), model.dim), np.float32)
    lw = np.zeros(len(pos), np.float64)
    for p, cond in population_groups(adata, model, mask):
        ys, lws = model.push(X[p], t_from, t_to, n_steps=n_steps, solver=solver, cond=cond)
        k = np.searchsorted(pos, p)
        Y[k], lw[k] = ys, lws
    return Y, lw


def _forward(adata, model, t, X, codes, n_cat, src, tgt, n_neighbors, n_source_neighbors, n_steps, solver):
    """Fate distribution (rows sum to 1) and log-mass of every cell at ``src``, pushed to ``tgt``."""
    src_pos = np.flatnonzero(np.isclose(t, src))
    tgt_pos = np.flatnonzero(np.isclose(t, tgt) & (codes >= 0))
    Y, lw = _push(adata, model, X, src_pos, src, tgt, n_steps, solver)
    W = kernel_weights(Y, X[tgt_pos], n_neighbors)
    P = W @ one_hot(codes[tgt_pos], n_cat)
    if n_source_neighbors > 1 and len(src_pos) > 1:
        A = kernel_weights(X[src_pos], X[src_pos], n_source_neighbors)
        m = np.exp(lw - lw.max())
        P = row_normalize(A.multiply(m[None, :])) @ P
    return np.asarray(P.todense()), lw, src_pos


def _check_common(n_neighbors, n_source_neighbors, n_steps, solver):
    from ..engine.solvers import check_solver

    check_n_neighbors("n_neighbors", n_neighbors)
    if n_source_neighbors is not None:
        check_n_neighbors("n_source_neighbors", n_source_neighbors)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}.")
    check_solver(solver)


_DOC_RULE = """\
n_neighbors
    Label transfer: a pushed cell is spread over its ``n_neighbors`` nearest observed cells at the other time with
    Gaussian weights (bandwidth: the median distance to them; see :doc:`/fates`).
n_steps, solver
    ODE steps and solver of the push, as in :func:`sctraj.tl.predict`."""


# ---------------------------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------------------------
def fate_probabilities(
    adata,
    model,
    groupby: str,
    *,
    target_time: float | None = None,
    source_times: float | Sequence[float] | None = None,
    n_neighbors: int = 30,
    n_source_neighbors: int = 5,
    n_steps: int = 100,
    solver: str = "euler",
    key_added: str = "sctraj",
) -> pd.DataFrame:
    """Probability that each earlier cell ends in each cell type observed at ``target_time``.

    Each cell observed before ``target_time`` is pushed through the learned flow to ``target_time`` and its fate is
    the label distribution of the observed ``target_time`` cells where it lands (a soft kNN label transfer, rule in
    :doc:`/fates`). The cell is resolved at the scale of its ``n_source_neighbors`` nearest cells at its own time:
    its fate is the kernel-weighted average over that neighbourhood (itself included). For growth-aware methods
    (``vgfm``) each neighbour is weighted by its predicted mass at ``target_time`` (``exp(int g dt)``), so a fate
    probability is the **share of the cell's ``target_time`` progeny** in that cell type, not the chance that one
    ancestor ends there; mass-conserving methods weight every cell equally.

    Labels are read only among the cells observed at ``target_time``: labels at other times are ignored and may be
    NaN or empty. Only the categories present at ``target_time`` become columns.

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]``, ``obsm[model.use_rep]`` and ``obs[groupby]``.
    model
        A fitted :class:`~sctraj.models.TrajectoryModel` (from :func:`sctraj.tl.fit_flow`); ``None`` uses the one
        stored in ``adata.uns[key_added]`` (see :func:`sctraj.tl.get_model`).
    groupby
        Column of ``adata.obs`` with the cell types (annotated at least at ``target_time``).
    target_time
        Observed time whose cell types are the fates; the last fitted time by default.
    source_times
        Observed time point(s) whose cells get fates; every observed fitted time before ``target_time`` by default.
    {rule}
    n_source_neighbors
        Size of the neighbourhood (the cell included) at the cell's own time whose progeny defines its fate; ``1``
        uses the cell alone.
    key_added
        Prefix of the keys written (and where the model is read from when ``model=None``).

    Returns
    -------
    :class:`pandas.DataFrame` indexed by ``adata.obs_names`` with one column per fate; rows of source cells sum to
    1, other rows are NaN. Also sets:

    `adata.obsm[f"{{key_added}}_fate_probabilities"]`
        That DataFrame.
    `adata.uns[key_added]["fate_probabilities"]`
        The settings (``groupby``, ``target_time``, ``source_times``, neighbours, steps, method, ...).

    Examples
    --------
    >>> import scanpy as sc, sctraj
    >>> adata = sctraj.datasets.larry()
    >>> model = sctraj.tl.fit_flow(adata, "day", method="otcfm")
    >>> fates = sctraj.tl.fate_probabilities(adata, model, "cell_type")
    >>> sctraj.pl.fate_probabilities(adata, basis="emb")
    """
    key_added = _check_key(key_added, "key_added")
    model, t, X = _setup(adata, model, key_added)
    _check_common(n_neighbors, n_source_neighbors, n_steps, solver)
    if key_added in adata.uns and not isinstance(adata.uns[key_added], Mapping):
        raise TypeError(f"adata.uns[{key_added!r}] exists and is not a dict; pass another key_added.")
    from ._write import check_derived

    check_derived(adata, key_added, f"{key_added}_fate_probabilities", "fate_probabilities")  # never a user's key
    codes, cats = _labels(adata, groupby, "groupby")
    tgt = float(model.times[-1]) if target_time is None else _observed_time(t, model, target_time, "target_time")
    if not np.isclose(t, tgt).any():
        raise ValueError(f"No cells at target_time={tgt:g} in adata.obs[{model.time_key!r}]; pass target_time=...")
    codes, fates = _present(codes, cats, np.isclose(t, tgt), groupby, model.time_key, tgt, "target_time")
    observed = np.unique(t)
    if source_times is None:
        srcs = [float(s) for s in observed if model.times[0] - 1e-9 <= s < tgt - 1e-9]
        if not srcs:
            raise ValueError(
                f"No observed time point of the fit lies before target_time={tgt:g}; pass a later target_time."
            )
    else:
        srcs = []
        for s in np.atleast_1d(np.asarray(source_times, dtype=object)).tolist():
            sv = _observed_time(t, model, s, "source_times")
            if sv >= tgt - 1e-9:
                raise ValueError(
                    f"source time {sv:g} is not before target_time={tgt:g}: fates look forward in time. Pass source "
                    f"times before target_time (to find the ancestors of later cells, use sctraj.tl.pull)."
                )
            srcs.append(sv)
        srcs = sorted(set(srcs))
    out = np.full((adata.n_obs, len(fates)), np.nan)
    for s in srcs:
        F, _, pos = _forward(adata, model, t, X, codes, len(fates), s, tgt, n_neighbors, n_source_neighbors,
                             n_steps, solver)
        out[pos] = F
    df = pd.DataFrame(out, index=adata.obs_names.copy(), columns=pd.Index(fates, dtype=object))
    settings = h5ad_safe({
        "groupby": groupby,
        "target_time": tgt,
        "source_times": srcs,
        "fates": fates,
        "n_neighbors": int(n_neighbors),
        "n_source_neighbors": int(n_source_neighbors),
        "n_steps": int(n_steps),
        "solver": solver,
        "method": model.method_name,
        "growth_weighted": model.has_growth,
    })
    rec = dict(adata.uns[key_added]) if key_added in adata.uns else {}
    rec["fate_probabilities"] = settings
    adata.obsm[f"{key_added}_fate_probabilities"] = df
    adata.uns[key_added] = rec
    return df.copy()


def cell_transition(
    adata,
    model,
    source_time: float,
    target_time: float,
    source_groups: str,
    target_groups: str,
    *,
    forward: bool = True,
    key: str = "sctraj",
    n_neighbors: int = 30,
    n_source_neighbors: int = 5,
    n_steps: int = 100,
    solver: str = "euler",
) -> pd.DataFrame:
    """Cell-type transition table between two time points, from the flow (moscot's ``cell_transition``
    :cite:p:`Klein2025`).

    ``forward=True``: each source cell's fates are computed as in :func:`fate_probabilities` and averaged over the
    cells of each source type, weighted by predicted mass for growth-aware methods: entry ``(a, b)`` is the share of
    type ``a``'s ``target_time`` progeny that is of type ``b`` (rows sum to 1). ``forward=False``: each target cell
    is integrated backward to ``source_time`` and its ancestor type read by the same label transfer among the source
    cells; entry ``(a, b)`` is the share of type-``b`` cells whose ancestors are of type ``a`` (columns sum to 1).

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]``.
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` uses the one stored in ``adata.uns[key]``.
    source_time, target_time
        Observed time points, ``source_time < target_time``.
    source_groups, target_groups
        Columns of ``adata.obs`` with the cell types at the source and at the target time (may be the same column).
    forward
        Direction, as above.
    key
        ``key_added`` of the fit whose stored model is used when ``model=None``.
    {rule}
    n_source_neighbors
        As in :func:`fate_probabilities` (forward only).

    Returns
    -------
    :class:`pandas.DataFrame`, rows: source types present at ``source_time``, columns: target types present at
    ``target_time``.

    Examples
    --------
    >>> tab = sctraj.tl.cell_transition(adata, model, 4, 6, "cell_type", "cell_type")
    >>> sctraj.pl.cell_transition(tab)
    """
    model, t, X = _setup(adata, model, key)
    _check_common(n_neighbors, n_source_neighbors, n_steps, solver)
    if not isinstance(forward, bool):
        raise TypeError(f"forward must be True or False, got {forward!r}.")
    src = _observed_time(t, model, source_time, "source_time")
    tgt = _observed_time(t, model, target_time, "target_time")
    if src >= tgt:
        raise ValueError(
            f"source_time={src:g} must be before target_time={tgt:g}. For the other direction use forward=False "
            f"with source_time={tgt:g}, target_time={src:g}."
        )
    s_codes, s_cats = _labels(adata, source_groups, "source_groups")
    t_codes, t_cats = _labels(adata, target_groups, "target_groups")
    s_codes, s_cats = _present(s_codes, s_cats, np.isclose(t, src), source_groups, model.time_key, src, "source_time")
    t_codes, t_cats = _present(t_codes, t_cats, np.isclose(t, tgt), target_groups, model.time_key, tgt, "target_time")
    tab = np.zeros((len(s_cats), len(t_cats)))
    if forward:
        F, lw, pos = _forward(adata, model, t, X, t_codes, len(t_cats), src, tgt, n_neighbors, n_source_neighbors,
                              n_steps, solver)
        m = np.exp(lw - lw.max())
        lab = s_codes[pos]
        for a in range(len(s_cats)):
            sel = lab == a
            tab[a] = (m[sel] @ F[sel]) / m[sel].sum()
    else:
        tgt_pos = np.flatnonzero(np.isclose(t, tgt) & (t_codes >= 0))
        src_pos = np.flatnonzero(np.isclose(t, src) & (s_codes >= 0))
        Z, _ = _push(adata, model, X, tgt_pos, tgt, src, n_steps, solver)
        Q = np.asarray((kernel_weights(Z, X[src_pos], n_neighbors) @ one_hot(s_codes[src_pos], len(s_cats))).todense())
        lab = t_codes[tgt_pos]
        for b in range(len(t_cats)):
            tab[:, b] = Q[lab == b].mean(0)
    return pd.DataFrame(tab, index=pd.Index(s_cats, name=source_groups), columns=pd.Index(t_cats, name=target_groups))


def _write_distribution(adata, key, pos, values) -> pd.Series:
    col = np.full(adata.n_obs, np.nan)
    col[pos] = values
    adata.obs[key] = col
    return pd.Series(values, index=adata.obs_names[pos].copy(), name=key)


def push(
    adata,
    model,
    source,
    target_time: float,
    *,
    source_time: float | None = None,
    key: str = "sctraj",
    n_neighbors: int = 30,
    n_steps: int = 100,
    solver: str = "euler",
    key_added: str = "sctraj_push",
) -> pd.Series:
    """Where a set of cells goes: their descendants' distribution over the cells observed at ``target_time``.

    The source cells (all from one time point) are pushed forward through the flow and each is spread over the
    observed ``target_time`` cells by the label-transfer kernel; for growth-aware methods each cell counts with its
    predicted mass, so the result is the distribution of the set's progeny (moscot's ``push``
    :cite:p:`Klein2025`).

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]``.
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` uses the one stored in ``adata.uns[key]``.
    source
        Boolean mask over ``adata.obs_names`` or an ``(obs column, category)`` pair, e.g. ``("cell_type", "undiff")``.
    target_time
        Observed time after the source cells' time.
    source_time
        Keep only the selected cells observed at this time; needed when the selection spans several time points.
    key
        ``key_added`` of the fit whose stored model is used when ``model=None``.
    {rule}
    key_added
        Column of ``adata.obs`` to write.

    Returns
    -------
    :class:`pandas.Series` over the ``target_time`` cells, summing to 1. Also sets ``adata.obs[key_added]`` (that
    distribution; NaN for cells at other times).

    Examples
    --------
    >>> sctraj.tl.push(adata, model, ("cell_type", "undiff"), target_time=6, source_time=4)
    >>> sc.pl.embedding(adata, basis="emb", color="sctraj_push")
    """
    model, t, X = _setup(adata, model, key)
    _check_common(n_neighbors, None, n_steps, solver)
    _check_key(key_added, "key_added")
    mask = _selection(adata, source, "source")
    if source_time is not None:
        mask = _at_time(t, mask, _observed_time(t, model, source_time, "source_time"), "source")
    src = _one_time(t, mask, model, "source", "source_time")
    tgt = _observed_time(t, model, target_time, "target_time")
    if tgt <= src:
        raise ValueError(
            f"target_time={tgt:g} must be after the source cells' time {src:g}: push goes forward in time. "
            "To find where cells came from, use sctraj.tl.pull."
        )
    pos = np.flatnonzero(mask)
    tgt_pos = np.flatnonzero(np.isclose(t, tgt))
    Y, lw = _push(adata, model, X, pos, src, tgt, n_steps, solver)
    m = np.exp(lw - lw.max())
    d = np.asarray(kernel_weights(Y, X[tgt_pos], n_neighbors).T @ m).ravel() / m.sum()
    return _write_distribution(adata, key_added, tgt_pos, d)


def pull(
    adata,
    model,
    target,
    source_time: float,
    *,
    target_time: float | None = None,
    key: str = "sctraj",
    n_neighbors: int = 30,
    n_steps: int = 100,
    solver: str = "euler",
    key_added: str = "sctraj_pull",
) -> pd.Series:
    """Where a set of cells came from: their ancestors' distribution over the cells observed at ``source_time``.

    The target cells (all from one time point) are integrated **backward** through the flow to ``source_time`` and
    each is spread over the observed ``source_time`` cells by the label-transfer kernel; every target cell counts
    once, so the result is the share of the set descending from each earlier cell (moscot's ``pull``).

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]``.
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` uses the one stored in ``adata.uns[key]``.
    target
        Boolean mask over ``adata.obs_names`` or an ``(obs column, category)`` pair.
    source_time
        Observed time before the target cells' time.
    target_time
        Keep only the selected cells observed at this time; needed when the selection spans several time points.
    key
        ``key_added`` of the fit whose stored model is used when ``model=None``.
    {rule}
    key_added
        Column of ``adata.obs`` to write.

    Returns
    -------
    :class:`pandas.Series` over the ``source_time`` cells, summing to 1. Also sets ``adata.obs[key_added]``.

    Examples
    --------
    >>> sctraj.tl.pull(adata, model, ("cell_type", "Neutrophil"), source_time=4, target_time=6)
    """
    model, t, X = _setup(adata, model, key)
    _check_common(n_neighbors, None, n_steps, solver)
    _check_key(key_added, "key_added")
    mask = _selection(adata, target, "target")
    if target_time is not None:
        mask = _at_time(t, mask, _observed_time(t, model, target_time, "target_time"), "target")
    tgt = _one_time(t, mask, model, "target", "target_time")
    src = _observed_time(t, model, source_time, "source_time")
    if src >= tgt:
        raise ValueError(
            f"source_time={src:g} must be before the target cells' time {tgt:g}: pull goes backward in time. "
            "To find where cells go, use sctraj.tl.push."
        )
    pos = np.flatnonzero(mask)
    src_pos = np.flatnonzero(np.isclose(t, src))
    Z, _ = _push(adata, model, X, pos, tgt, src, n_steps, solver)
    d = np.asarray(kernel_weights(Z, X[src_pos], n_neighbors).mean(axis=0)).ravel()
    return _write_distribution(adata, key_added, src_pos, d / d.sum())


def couplings(
    adata,
    model,
    *,
    times: Sequence[float] | None = None,
    key: str = "sctraj",
    n_neighbors: int = 30,
    n_steps: int = 100,
    solver: str = "euler",
) -> dict:
    """Sparse transition matrices between consecutive observed time points, from the flow, for CellRank.

    For each consecutive pair ``(t_a, t_b)`` every cell observed at ``t_a`` is pushed to ``t_b`` and spread over the
    observed ``t_b`` cells by the label-transfer kernel: an ``n_a x n_b`` :class:`scipy.sparse.csr_matrix` with
    ``n_neighbors`` entries per row, rows summing to 1 (rows and columns in ``adata`` order of those cells). Hand
    the result to :class:`cellrank.kernels.RealTimeKernel` (``pip install 'sctraj[cellrank]'``) for GPCCA terminal
    states, fate probabilities and driver genes :cite:p:`Weiler2024`; CellRank needs a categorical time column.
    Predicted growth (``vgfm``) is not in these matrices: CellRank row-normalises transition matrices, so a cell's
    mass would be lost there; use :func:`fate_probabilities` or :func:`cell_transition` for progeny shares.

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]``.
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` uses the one stored in ``adata.uns[key]``.
    times
        Observed time points to chain (at least two); every observed time inside the fitted range by default.
    key
        ``key_added`` of the fit whose stored model is used when ``model=None``.
    {rule}

    Returns
    -------
    ``{{(t_a, t_b): csr_matrix}}``. Keys are the values of ``adata.obs[model.time_key]``: its categories when the
    column is categorical (what CellRank looks up), floats otherwise.

    Examples
    --------
    >>> import cellrank as cr
    >>> adata.obs["day"] = adata.obs["day"].astype("category")
    >>> rtk = cr.kernels.RealTimeKernel(adata, time_key="day", couplings=sctraj.tl.couplings(adata, model))
    >>> rtk.compute_transition_matrix(self_transitions="all", conn_weight=0.2, threshold="auto")
    >>> g = cr.estimators.GPCCA(rtk)
    """
    model, t, X = _setup(adata, model, key)
    _check_common(n_neighbors, None, n_steps, solver)
    inside = [float(s) for s in np.unique(t) if model.times[0] - 1e-9 <= s <= model.times[-1] + 1e-9]
    if times is None:
        ts = inside
    else:
        ts = sorted({_observed_time(t, model, s, "times") for s in np.atleast_1d(np.asarray(times, object))})
    if len(ts) < 2:
        raise ValueError(f"couplings need at least two observed time points inside the fitted range, got {ts}.")
    col = adata.obs[model.time_key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = list(col.cat.categories)
        num = pd.to_numeric(pd.Series(np.asarray(cats)), errors="coerce").to_numpy(float)
        key_of = {s: cats[int(np.flatnonzero(np.isclose(num, s))[0])] for s in ts}
    else:
        key_of = {s: float(s) for s in ts}
    out = {}
    for a, b in zip(ts[:-1], ts[1:], strict=True):
        pa, pb = np.flatnonzero(np.isclose(t, a)), np.flatnonzero(np.isclose(t, b))
        Y, _ = _push(adata, model, X, pa, a, b, n_steps, solver)
        out[(key_of[a], key_of[b])] = kernel_weights(Y, X[pb], n_neighbors)
    return out


for _fn in (fate_probabilities, cell_transition, push, pull, couplings):
    _fn.__doc__ = _fn.__doc__.replace("{rule}", _DOC_RULE.replace("\n", "\n    ")).replace("{{", "{").replace("}}", "}")

__all__ = ["fate_probabilities", "cell_transition", "push", "pull", "couplings"]
