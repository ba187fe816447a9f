"""Gene-level velocities: the fitted flow mapped back to genes through the PCA loadings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _keys
from .._settings import logger
from .._validation import check_adata


def gene_velocity_key(key_added: str) -> str:
    return f"{key_added}_velocity"


def _fit_params(adata, key_added: str) -> Mapping:
    rec = adata.uns.get(key_added)
    if not isinstance(rec, Mapping) or "params" not in rec:
        raise KeyError(
            f"adata.uns[{key_added!r}] (the fit record) was not found. Run "
            f"sctraj.tl.fit_flow(adata, time_key, use_rep='X_pca', key_added={key_added!r}) first."
        )
    return rec["params"]


def _loadings_key(adata, use_rep: str, loadings: str | None) -> str:
    if loadings is not None:
        if not isinstance(loadings, str) or loadings not in adata.varm:
            keys = ", ".join(map(repr, adata.varm.keys())) or "none"
            raise KeyError(f"loadings={loadings!r} is not a key of adata.varm (keys: {keys}).")
        return loadings
    cands = (["PCs"] if use_rep == "X_pca" else []) + [use_rep, _keys.rep_name(use_rep)]
    for c in cands:
        if c in adata.varm:
            return c
    keys = ", ".join(map(repr, adata.varm.keys())) or "none"
    raise KeyError(
        f"No gene loadings for use_rep={use_rep!r} in adata.varm (keys: {keys}). Gene velocities need a linear "
        "embedding with loadings, such as scanpy's PCA: run sc.pp.pca(adata) (it stores varm['PCs']) and fit with "
        "use_rep='X_pca'. Non-linear or corrected embeddings (UMAP, scVI, Harmony) have no linear map back to "
        "genes; if yours is a linear function of a PCA, pass loadings='PCs'."
    )


def _loadings_mismatch(adata, use_rep: str, Wg: np.ndarray, genes: np.ndarray, d: int) -> float | None:
    """Relative error of ``obsm[use_rep]`` rebuilt as ``X @ W`` (both centred) on up to 500 cells; ``None`` if unknown."""
    if use_rep not in adata.obsm or adata.X is None:
        return None
    idx = np.linspace(0, adata.n_obs - 1, min(adata.n_obs, 500)).astype(int)
    X = adata.X[idx][:, np.flatnonzero(genes)]
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, np.float64)
    Z = np.asarray(adata.obsm[use_rep], np.float64)[idx, :d]
    Zh = X @ Wg
    Z, Zh = Z - Z.mean(0), Zh - Zh.mean(0)
    norm = np.linalg.norm(Z)
    if not np.isfinite(Zh).all() or norm == 0:
        return None
    return float(np.linalg.norm(Z - Zh) / norm)


def gene_velocity(
    adata,
    *,
    key_added: str = "sctraj",
    loadings: str | None = None,
    expression_layer: str | None = "Ms",
    copy: bool = False,
):
    """Map the fitted velocities back to genes through the loadings of a linear embedding (scanpy's PCA).

    When the flow was fitted in PCA coordinates, ``z = (x - mean) @ W`` for a cell's expression ``x`` and the
    loadings ``W`` (``adata.varm["PCs"]``, genes x components), a cell's velocity ``dz/dt`` corresponds in gene space
    to ``dx/dt = dz/dt @ pinv(W)``, which is ``dz/dt @ W.T`` for PCA's orthonormal loadings: the smallest change of
    expression that moves the cell as fitted. Only the fitted ``n_dims`` components are used.

    **Caveat.** This is only the part of the dynamics that lies inside the PCA space: a gene whose change is not
    captured by the first ``n_dims`` components gets (nearly) zero velocity, and genes outside the PCA's gene set
    (e.g. not highly variable when ``sc.pp.pca`` ran on HVGs) get exactly zero. The values are in the units of the
    matrix the PCA was computed on (log-normalised expression in the usual scanpy pipeline; z-scores if it was
    scaled) per unit of time.

    The layout is scVelo's, so ``scv.tl.velocity_graph(adata, vkey=f"{key_added}_velocity")`` and
    ``scv.pl.velocity_embedding_stream(adata, vkey=f"{key_added}_velocity", basis="umap")`` work as they are:
    scVelo compares each cell's velocity with the expression differences to its neighbours in
    ``layers["Ms"]``, which this function fills with the expression decoded from the same PCA (``mean + z @ W.T``)
    unless an ``Ms`` layer is already there (scVelo's own moments are never overwritten).

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow` fitted on a PCA (``use_rep="X_pca"``), with the loadings in
        ``adata.varm``.
    key_added
        ``key_added`` of the fit; also the prefix of the keys written here.
    loadings
        Key of ``adata.varm`` with the loadings (genes x components). By default ``"PCs"`` for ``use_rep="X_pca"``,
        else the ``use_rep`` key itself (``sc.pp.pca(adata, key_added=...)`` stores both under one name).
    expression_layer
        Layer that receives the PCA-decoded expression scVelo's ``velocity_graph`` reads (``"Ms"``, its default
        ``xkey``); ``None`` writes none. An existing layer of that name is left unchanged unless this function wrote
        it.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns ``None`` if ``copy=False``, else an :class:`~anndata.AnnData`. Sets (all at once, after every check
    passed):

    `adata.layers[f"{key_added}_velocity"]` : :class:`numpy.ndarray`
        Gene velocity of each cell (cells x genes, dense float32 as scVelo needs; expression units per unit time),
        0 for genes outside the PCA's gene set and for cells outside the fitted time range (which have no velocity;
        scVelo would drop every gene with a NaN).
    `adata.var[f"{key_added}_velocity_genes"]` : :class:`bool`
        Genes with non-zero loadings (the PCA's gene set): the genes scVelo uses.
    `adata.layers[expression_layer]` : :class:`numpy.ndarray`
        Expression decoded from the fitted PCA coordinates (0 for genes outside the PCA's gene set), unless a layer
        of that name already existed.
    `adata.uns[key_added]["gene_velocity"]` : :class:`dict`
        ``loadings``, ``n_dims``, ``n_genes`` and ``expression_layer`` (empty string when none was written).

    Examples
    --------
    >>> import scanpy as sc, sctraj
    >>> adata = sctraj.datasets.klein_mesc()
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)
    >>> sc.pp.highly_variable_genes(adata, n_top_genes=500); sc.pp.pca(adata, n_comps=30)
    >>> model = sctraj.tl.fit_flow(adata, "day", method="otcfm", use_rep="X_pca", n_steps=200)  # doctest: +SKIP
    >>> sctraj.tl.gene_velocity(adata)  # doctest: +SKIP
    >>> adata.layers["sctraj_velocity"].shape  # doctest: +SKIP
    (1000, 900)
    """
    check_adata(adata)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    if expression_layer is not None and (not isinstance(expression_layer, str) or not expression_layer):
        raise ValueError(f"expression_layer must be a layer name such as 'Ms', or None; got {expression_layer!r}.")
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be True or False, got {copy!r}.")
    params = _fit_params(adata, key_added)
    use_rep = str(params["use_rep"])
    d = int(params["n_dims"])
    vkey = _keys.velocity_key(key_added, use_rep)
    if vkey not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{vkey!r}] (the fitted velocities) was not found. Run "
            f"sctraj.tl.fit_flow(adata, time_key, use_rep={use_rep!r}, key_added={key_added!r}) first."
        )
    lkey = _loadings_key(adata, use_rep, loadings)
    W = np.asarray(adata.varm[lkey], np.float64)
    if W.ndim != 2 or W.shape[1] < d:
        raise ValueError(
            f"adata.varm[{lkey!r}] has shape {W.shape}, but the fit used {d} dimensions of {use_rep!r}: the loadings "
            f"must have at least {d} columns. Was the PCA recomputed with fewer components after the fit?"
        )
    if use_rep in adata.obsm and np.asarray(adata.obsm[use_rep]).shape[1] != W.shape[1]:
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has {np.asarray(adata.obsm[use_rep]).shape[1]} columns but the loadings "
            f"adata.varm[{lkey!r}] have {W.shape[1]}: they do not come from the same PCA. Recompute the PCA and refit."
        )
    W = W[:, :d]
    if not np.isfinite(W).all():
        raise ValueError(f"adata.varm[{lkey!r}] has NaN or infinite loadings; recompute the PCA.")
    genes = np.abs(W).sum(1) > 0
    if not genes.any():
        raise ValueError(f"adata.varm[{lkey!r}] is all zeros in its first {d} columns; recompute the PCA.")
    # decoder: pinv(W) restricted to the PCA's genes (W.T itself for orthonormal PCA loadings)
    Wg = W[genes]
    D = np.linalg.pinv(Wg)  # (d, n_genes_in_pca)
    mismatch = _loadings_mismatch(adata, use_rep, Wg, genes, d)

    V = np.asarray(adata.obsm[vkey], np.float64)[:, :d]
    no_vel = ~np.isfinite(V).all(1)
    V = np.where(no_vel[:, None], 0.0, V)
    G = (V @ D).astype(np.float32)

    def full(block):  # dense: scVelo's velocity_embedding reads layers[vkey] with np.array (no sparse support)
        out = np.zeros((adata.n_obs, adata.n_vars), np.float32)
        out[:, genes] = block
        return out

    layer_v = full(G)
    rec = adata.uns[key_added]
    prev = rec.get("gene_velocity", {}) if isinstance(rec, Mapping) else {}
    ours = isinstance(prev, Mapping) and str(prev.get("expression_layer", "")) == expression_layer
    write_x = expression_layer is not None and (expression_layer not in adata.layers or ours)
    layer_x = None
    if write_x:
        if use_rep not in adata.obsm:
            raise KeyError(f"adata.obsm[{use_rep!r}] is missing; it is needed to decode the expression.")
        Z = np.asarray(adata.obsm[use_rep], np.float64)[:, :d]
        X = adata.X
        if X is None:
            raise ValueError("adata.X is None; the decoded expression needs the gene means of adata.X.")
        mu = np.asarray(X[:, np.flatnonzero(genes)].mean(0), np.float64).ravel()
        layer_x = full((mu + Z @ D).astype(np.float32))
    elif expression_layer is not None:
        logger.info(
            f"gene_velocity: adata.layers[{expression_layer!r}] already exists and was left unchanged; scVelo's "
            "velocity_graph will compare the gene velocities with it. Pass expression_layer='sctraj_Ms' and "
            "xkey='sctraj_Ms' to scVelo to use sctraj's PCA-decoded expression instead."
        )

    if copy:
        adata = adata.copy()
    gkey = gene_velocity_key(key_added)
    adata.layers[gkey] = layer_v
    adata.var[f"{gkey}_genes"] = genes
    if layer_x is not None:
        adata.layers[expression_layer] = layer_x
    adata.uns[key_added]["gene_velocity"] = {
        "loadings": lkey,
        "n_dims": d,
        "n_genes": int(genes.sum()),
        "expression_layer": expression_layer if write_x else "",
    }
    if mismatch is not None and mismatch > 0.05:
        logger.warning(
            f"gene_velocity: the loadings adata.varm[{lkey!r}] applied to adata.X do not reproduce "
            f"adata.obsm[{use_rep!r}] (relative error {mismatch:.2f} on up to 500 cells): adata.X was changed after "
            "the PCA, or the embedding is not this PCA (e.g. rescaled per dimension). Gene velocities are only "
            "right for the PCA itself: fit on use_rep='X_pca' with adata.X as the PCA saw it."
        )
    if no_vel.any():
        logger.warning(
            f"gene_velocity: {int(no_vel.sum())} cells lie outside the fitted time range and have no velocity; "
            "their gene velocity is set to 0."
        )
    logger.info(
        f"gene_velocity: wrote layers[{gkey!r}] ({int(genes.sum())} genes from varm[{lkey!r}], {d} components), "
        f"var[{gkey + '_genes'!r}]" + (f", layers[{expression_layer!r}]" if write_x else "")
    )
    return adata if copy else None
