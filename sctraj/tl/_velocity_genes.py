"""Rank genes by their mean gene velocity within groups of cells (cell types, clusters, time points)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._validation import check_adata
from ._gene_velocity import gene_velocity_key


def velocity_genes(
    adata,
    groupby: str | Sequence[str] | None = None,
    *,
    key: str = "sctraj",
    n_genes: int = 10,
    direction: str = "both",
    min_cells: int = 10,
) -> pd.DataFrame:
    """The genes that change fastest along the learned flow, per group of cells.

    For each group (a cell type, a cluster, a time point, or a combination) the gene velocities of
    :func:`sctraj.tl.gene_velocity` are averaged over the group's cells, and the genes with the largest mean are
    listed. ``frac_same_sign`` (the share of the group's cells whose velocity has the sign of the mean) tells a
    shared trend from a few cells moving fast.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.gene_velocity`.
    groupby
        obs column(s) defining the groups, e.g. ``"leiden"``, ``"cell_type"``, ``["cell_type", "day"]``; the time
        column of the fit when ``None``. Time columns are ordered by their numbers.
    key
        ``key_added`` of the fit and of :func:`~sctraj.tl.gene_velocity`.
    n_genes
        Genes listed per group (and per direction).
    direction
        ``"up"`` (largest positive mean: genes being switched on), ``"down"`` (most negative: switched off) or
        ``"both"`` (largest absolute mean, the sign in ``mean_velocity``).
    min_cells
        Groups with fewer cells with a velocity are skipped.

    Returns
    -------
    :class:`pandas.DataFrame`, one row per group and listed gene, with the groupby column(s), ``rank`` (1 = fastest),
    ``gene``, ``mean_velocity`` (expression units per unit time), ``frac_same_sign``, ``mean_expression`` (of the
    group's cells in ``adata.X``) and ``n_cells``. Genes outside the PCA's gene set (zero velocity) are never listed.
    ``adata`` is not modified.

    Examples
    --------
    >>> top = sctraj.tl.velocity_genes(adata, "leiden", n_genes=5)  # doctest: +SKIP
    >>> top.pivot(index="rank", columns="leiden", values="gene")  # doctest: +SKIP
    """
    import scipy.sparse as sp

    check_adata(adata)
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be the key_added of the fit, got {key!r}.")
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}.")
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}.")
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 1:
        raise ValueError(f"min_cells must be a positive integer, got {min_cells!r}.")
    gkey = gene_velocity_key(key)
    if gkey not in adata.layers or f"{gkey}_genes" not in adata.var:
        raise KeyError(
            f"adata.layers[{gkey!r}] (gene velocities) was not found. Run sctraj.tl.gene_velocity(adata, "
            f"key_added={key!r}) after sctraj.tl.fit_flow(..., use_rep='X_pca')."
        )
    time_key = None
    rec = adata.uns.get(key)
    if isinstance(rec, Mapping) and "params" in rec:
        time_key = str(rec["params"]["time_key"])
    if groupby is None:
        if time_key is None:
            raise ValueError("groupby=None uses the fit's time column, but adata.uns[key] has no fit record; pass groupby.")
        groupby = [time_key]
    cols = [groupby] if isinstance(groupby, str) else list(groupby)
    if not cols:
        raise ValueError("groupby is empty: pass an obs column such as 'leiden'.")
    for c in cols:
        if not isinstance(c, str) or c not in adata.obs:
            raise KeyError(f"groupby column {c!r} is not in adata.obs (columns: {list(adata.obs.columns)[:10]}).")

    # group labels; a time column is ordered by its numbers, categoricals by their categories, others as sorted
    keys = []
    orders = []
    for c in cols:
        col = adata.obs[c]
        if c == time_key:
            from .._validation import time_values

            vals = time_values(adata, c)
            keys.append(pd.Series(vals, index=adata.obs_names))
            orders.append(np.unique(vals))
        elif isinstance(col.dtype, pd.CategoricalDtype):
            keys.append(col)
            orders.append(list(col.cat.categories))
        else:
            keys.append(col)
            orders.append(sorted(pd.unique(col.dropna())))
    genes_mask = np.asarray(adata.var[f"{gkey}_genes"], bool)
    gidx = np.flatnonzero(genes_mask)
    G = adata.layers[gkey]
    G = G[:, gidx].toarray() if sp.issparse(G) else np.asarray(G)[:, gidx]
    X = adata.X
    has = np.abs(G).sum(1) > 0  # cells with a velocity
    names = np.asarray(adata.var_names)[gidx]
    frame = pd.DataFrame({f"_k{i}": k.to_numpy() for i, k in enumerate(keys)}, index=np.arange(adata.n_obs))
    import itertools

    rows = []
    for combo in itertools.product(*orders):
        m = np.ones(adata.n_obs, bool)
        for i, v in enumerate(combo):
            m &= (frame[f"_k{i}"] == v).to_numpy()
        m &= has
        n = int(m.sum())
        if n < min_cells:
            continue
        mean = G[m].mean(0)
        same = (np.sign(G[m]) == np.sign(mean)[None]).mean(0)
        if direction == "up":
            order = np.argsort(-mean, kind="stable")
            order = order[mean[order] > 0]
        elif direction == "down":
            order = np.argsort(mean, kind="stable")
            order = order[mean[order] < 0]
        else:
            order = np.argsort(-np.abs(mean), kind="stable")
            order = order[mean[order] != 0]
        order = order[:n_genes]
        sub = X[np.flatnonzero(m)][:, gidx[order]]
        expr = np.asarray(sub.mean(0)).ravel() if len(order) else np.zeros(0)
        for r, j in enumerate(order):
            row = {c: (float(v) if c == time_key else v) for c, v in zip(cols, combo, strict=True)}
            row.update(rank=r + 1, gene=str(names[j]), mean_velocity=float(mean[j]), frac_same_sign=float(same[j]),
                       mean_expression=float(expr[r]), n_cells=n)
            rows.append(row)
    if not rows:
        raise ValueError(
            f"No group of {cols} has at least min_cells={min_cells} cells with a gene velocity; lower min_cells."
        )
    out = pd.DataFrame(rows)
    for c, order in zip(cols, orders, strict=True):
        if c != time_key and isinstance(adata.obs[c].dtype, pd.CategoricalDtype):
            out[c] = pd.Categorical(out[c], categories=order)
    return out
