"""A gene's expression along the predicted cell paths, against the observed snapshots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _utils as U


def _path_expression(adata, P: np.ndarray, gidx: np.ndarray, *, use_rep: str, n_dims: int, how: str, layer,
                     n_neighbors: int) -> np.ndarray:
    """Expression of genes ``gidx`` at points ``P`` (m x g x d, fitted coordinates): (m, g, n_genes)."""
    flat = P.reshape(-1, P.shape[-1])
    if how == "decode":
        from ..tl._gene_velocity import _loadings_key

        lkey = _loadings_key(adata, use_rep, None)
        W = np.asarray(adata.varm[lkey], np.float64)[:, :n_dims]
        genes = np.abs(W).sum(1) > 0
        outside = [str(adata.var_names[j]) for j in gidx if not genes[j]]
        if outside:
            raise ValueError(
                f"gene(s) {outside} lie outside the PCA's gene set (zero loadings), so they cannot be decoded from "
                "the paths; use expression='neighbors'."
            )
        D = np.linalg.pinv(W[genes])  # (d, n_pca_genes)
        col = {j: k for k, j in enumerate(np.flatnonzero(genes))}
        Dg = D[:, [col[j] for j in gidx]]
        X = adata.X if layer is None else adata.layers[layer]
        mu = np.asarray(X[:, np.flatnonzero(genes)].mean(0), np.float64).ravel()[[col[j] for j in gidx]]
        out = mu + flat @ Dg
    else:
        from sklearn.neighbors import NearestNeighbors

        from .._validation import get_rep

        ref = get_rep(adata, use_rep, n_dims, dtype=np.float64)  # only the needed columns
        X = adata.X if layer is None else adata.layers[layer]
        E = X[:, gidx]
        E = np.asarray(E.toarray() if hasattr(E, "toarray") else E, np.float64)
        k = min(n_neighbors, len(ref))
        dist, idx = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(flat)
        w = 1.0 / np.maximum(dist, 1e-12)
        w /= w.sum(1, keepdims=True)
        out = np.einsum("nk,nkg->ng", w, E[idx])
    return out.reshape(*P.shape[:-1], len(gidx))


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def gene_trends(
    adata,
    genes,
    *,
    key: str = "sctraj",
    groupby: str | None = None,
    expression: str = "neighbors",
    layer: str | None = None,
    n_paths: int = 100,
    max_cells: int = 3000,
    n_neighbors: int = 15,
    random_state: int = 0,
    ncols: int = 3,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """A gene's expression along the predicted cell paths, with the observed snapshots.

    Each cell's path to the next time point (``obsm[f"{{key}}_trajectory"]``, written by
    :func:`sctraj.tl.fit_flow`) is read as a time course of the gene: thin lines are individual paths, bold lines
    the mean over paths (per group of the starting cells with ``groupby``), and black points with bars the mean and
    standard deviation of the cells observed at each time point. Where the bold line meets the next black point,
    the flow carries the gene's level from one snapshot to the next.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow` (fitted on a PCA for ``expression="decode"``).
    genes
        A gene name or a list of them (``adata.var_names``); one panel per gene.
    key
        ``key_added`` of the fit.
    groupby
        Categorical obs column (e.g. ``"leiden"``, ``"cell_type"``): paths are coloured, and averaged, by the group
        of the cell they start from. One colour when ``None``.
    expression
        How the expression at a point of a path is read: ``"neighbors"`` (default), the distance-weighted mean
        expression of its ``n_neighbors`` nearest observed cells in the fitted representation (any gene); or
        ``"decode"``, the linear map back through the PCA loadings as in :func:`sctraj.tl.gene_velocity` (genes of
        the PCA only; smooth, but only what the PCA captures).
    layer
        Layer with the expression (``adata.X`` when ``None``; the same matrix the PCA used for ``"decode"``).
    n_paths
        Thin lines drawn (a random subset of the cells that have a path).
    max_cells
        Paths averaged into the bold lines (a random subset when more cells have one).
    n_neighbors
        Neighbours for ``expression="neighbors"``.
    random_state
        Seed of the subsets.
    ncols
        Panels per row.
    {show_save_ax}
        ``ax`` needs exactly one gene.

    Returns
    -------
    {returns}

    Examples
    --------
    >>> sctraj.pl.gene_trends(adata, ["Krt8", "Zfp42"], groupby="leiden")  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    U.check_common(show, return_fig, ax, save)
    rec, tkey = U.trajectory_record(adata, key)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("genes is empty: pass a gene name or a list of them.")
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise KeyError(f"{missing} is not a gene of adata.var_names (e.g. {list(adata.var_names[:3])}).")
    if expression not in ("neighbors", "decode"):
        raise ValueError(f"expression must be 'neighbors' or 'decode', got {expression!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    for name, v in (("n_paths", n_paths), ("max_cells", max_cells), ("n_neighbors", n_neighbors), ("ncols", ncols)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if ax is not None and len(genes) != 1:
        raise ValueError(f"ax= draws one panel, but {len(genes)} genes were given; pass one gene.")
    if groupby is not None:
        if not isinstance(groupby, str) or groupby not in adata.obs:
            raise KeyError(f"groupby {groupby!r} is not a column of adata.obs.")
        if not isinstance(adata.obs[groupby].dtype, pd.CategoricalDtype):
            raise TypeError(
                f"adata.obs[{groupby!r}] must be categorical to colour paths by it; convert it with "
                f"adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype('category')."
            )

    use_rep = str(rec["params"]["use_rep"])
    n_dims = int(rec["params"]["n_dims"])
    time_key, t, times = U.fit_times(adata, key)
    T = np.asarray(adata.obsm[tkey], np.float64)
    frac = np.asarray(rec["trajectory"]["fractions"], float)
    has = np.isfinite(T).all((1, 2))
    if not has.any():
        raise ValueError(f"adata.obsm[{tkey!r}] holds no finite paths (all cells at the last time point?).")
    # every check passed: only now may scanpy's default category colours be written (as scanpy does)
    if groupby is not None:
        colors = U.category_colors(adata, groupby)
        labels = adata.obs[groupby].astype(str).to_numpy()
    else:
        colors, labels = {"all cells": "#3b6fb6"}, np.full(adata.n_obs, "all cells", dtype=object)
    rng = np.random.default_rng(random_state)
    cand = np.flatnonzero(has)
    pick = cand if len(cand) <= max_cells else np.sort(rng.choice(cand, max_cells, replace=False))
    thin = pick if len(pick) <= n_paths else np.sort(rng.choice(pick, n_paths, replace=False))
    gidx = np.array([adata.var_names.get_loc(g) for g in genes])
    Y = _path_expression(adata, T[pick], gidx, use_rep=use_rep, n_dims=n_dims, how=expression, layer=layer,
                         n_neighbors=n_neighbors)  # (m, n_grid, n_genes)
    nxt = np.array([times[times > tv + 1e-12][0] for tv in t[pick]])
    tt = t[pick, None] + frac[None] * (nxt - t[pick])[:, None]
    is_thin = np.isin(pick, thin)
    Xobs = adata.X if layer is None else adata.layers[layer]

    n = len(genes)
    fig, axs = U.panel_grid(n, ncols, (4.2, 3.3), ax)
    src_times = np.unique(t[pick])
    for gi, (a, g) in enumerate(zip(axs, genes, strict=True)):
        for lab, colr in colors.items():
            sel = labels[pick] == lab
            if not sel.any():
                continue
            for k in np.flatnonzero(sel & is_thin):
                a.plot(tt[k], Y[k, :, gi], color=colr, lw=0.5, alpha=0.25, zorder=1)
            for s in src_times:  # mean path of this group per interval
                m = sel & np.isclose(t[pick], s)
                if m.sum() >= 3:
                    a.plot(tt[m][0], Y[m, :, gi].mean(0), color=colr, lw=2.2, zorder=3)
        ex = Xobs[:, gidx[gi]]
        ex = np.asarray(ex.toarray() if hasattr(ex, "toarray") else ex, np.float64).ravel()
        mu = [ex[np.isclose(t, s)].mean() for s in times]
        sd = [ex[np.isclose(t, s)].std() for s in times]
        a.errorbar(times, mu, yerr=sd, fmt="o", color="k", ms=5, capsize=3, zorder=4)
        a.set_title(g, fontsize="medium")
        a.set_xlabel(U.time_unit(adata, time_key))
        a.set_ylabel("expression" + (" (decoded from PCA)" if expression == "decode" else ""))
        a.set_xticks(times)
        a.set_xticklabels([U.fmt_time(x) for x in times])
    handles = [Line2D([], [], color=c, lw=2.2, label=lab) for lab, c in colors.items() if (labels[pick] == lab).any()]
    handles.append(Line2D([], [], ls="", marker="o", color="k", label="observed mean ± sd"))
    axs[-1].legend(handles=handles, fontsize="x-small", frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return U.finish(fig, axs if len(axs) > 1 else axs[0], show=show, save=save, return_fig=return_fig,
                    name='gene_trends')
