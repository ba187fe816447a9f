"""Project velocities from the fitted representation onto a 2-d embedding (scVelo's key layout)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _keys
from .._settings import logger
from .._validation import check_adata


def _model_key(vkey: str) -> str:
    return vkey[: -len("_velocity")] if vkey.endswith("_velocity") else vkey


def velocity_embedding(
    adata,
    *,
    basis: str = "umap",
    vkey: str = "sctraj_velocity",
    use_rep: str | None = None,
    n_neighbors: int = 30,
    ridge: float = 1e-3,
    copy: bool = False,
):
    """Project the fitted velocities onto a 2-d embedding such as a UMAP.

    For every cell a local linear map from the fitted representation to the embedding is estimated by weighted least
    squares over its ``n_neighbors`` nearest cells (scikit-learn neighbours in the fitted representation): the
    displacements to the neighbours in the embedding are regressed on their displacements in the representation.
    The cell's velocity is then sent through that map, so the arrow on the UMAP is the direction the cell moves on
    the UMAP to first order. When ``basis`` *is* the fitted representation (e.g. ``"pca"`` after fitting on
    ``X_pca``), its first two coordinates are copied exactly.

    The keys follow scVelo, so ``scv.pl.velocity_embedding_stream(adata, basis=basis, vkey=vkey)`` also works.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow` with ``obsm[f"X_{{basis}}"]``.
    basis
        Embedding to project onto (``"umap"`` or ``"X_umap"``; any 2-d or larger obsm key).
    vkey
        Velocity key prefix: ``f"{{key_added}}_velocity"`` of the fit (``"sctraj_velocity"`` by default).
    use_rep
        Representation the velocities live in; read from ``uns[key_added]["params"]["use_rep"]`` when ``None``.
    n_neighbors
        Neighbours of the local linear map.
    ridge
        Ridge regularisation of the local least squares (relative to the neighbourhood's spread).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns ``None`` if ``copy=False``, else an :class:`~anndata.AnnData`. Sets:

    `adata.obsm[f"{{vkey}}_{{basis}}"]` : :class:`numpy.ndarray` (n_obs x 2, float32)
        Velocity of each cell on the embedding (NaN where the fitted velocity is NaN).
    `adata.uns[f"{{vkey}}_params"]` : :class:`dict`
        ``embeddings`` (the bases projected to, read by scVelo), ``use_rep`` and ``model_key``.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.eb()  # doctest: +SKIP
    >>> sctraj.tl.fit_flow(adata, "day", use_rep="X_pca", n_dims=10)  # doctest: +SKIP
    >>> sctraj.tl.velocity_embedding(adata, basis="umap")  # doctest: +SKIP
    >>> sctraj.pl.velocity_stream(adata, basis="umap", color="day")  # doctest: +SKIP
    """
    from sklearn.neighbors import NearestNeighbors

    from ..pl._utils import basis_key, basis_name

    check_adata(adata)
    if not isinstance(vkey, str) or not vkey:
        raise ValueError(f"vkey must be a non-empty string such as 'sctraj_velocity', got {vkey!r}.")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 3:
        raise ValueError(f"n_neighbors must be an integer >= 3, got {n_neighbors!r}.")
    if not (isinstance(ridge, int | float) and ridge >= 0):
        raise ValueError(f"ridge must be a non-negative number, got {ridge!r}.")
    key = _model_key(vkey)
    if use_rep is None:
        rec = adata.uns.get(key)
        if not isinstance(rec, Mapping) or "params" not in rec:
            raise KeyError(
                f"adata.uns[{key!r}] (the fit record) was not found, so the velocities' representation is unknown. "
                f"Run sctraj.tl.fit_flow(adata, time_key, key_added={key!r}) first, or pass use_rep=..."
            )
        use_rep = str(rec["params"]["use_rep"])
    src_key = f"{vkey}_{_keys.rep_name(use_rep)}"
    if src_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{src_key!r}] (velocities in {use_rep!r}) was not found. Run "
            f"sctraj.tl.fit_flow(adata, time_key, use_rep={use_rep!r}, key_added={key!r}) first."
        )
    bkey = basis_key(adata, basis)
    bname = basis_name(bkey)
    E = np.asarray(adata.obsm[bkey], np.float64)
    if E.ndim != 2 or E.shape[1] < 2:
        raise ValueError(f"adata.obsm[{bkey!r}] must have at least 2 columns, got shape {E.shape}.")
    E = E[:, :2]
    V = np.asarray(adata.obsm[src_key], np.float64)
    d = V.shape[1]

    if bkey == use_rep:
        out = V[:, :2].copy()
    else:
        from .._validation import get_rep

        X = get_rep(adata, use_rep, d, dtype=np.float64)  # only the d needed columns (a sparse X is not densified)
        if not np.isfinite(X).all() or not np.isfinite(E).all():
            raise ValueError(f"adata.obsm[{use_rep!r}] or adata.obsm[{bkey!r}] has NaN values; recompute them.")
        k = min(int(n_neighbors), adata.n_obs - 1)
        dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
        dist, idx = dist[:, 1:], idx[:, 1:]
        out = np.full((adata.n_obs, 2), np.nan)
        ok = np.isfinite(V).all(1)
        for s in range(0, adata.n_obs, 4096):
            sl = np.arange(s, min(s + 4096, adata.n_obs))
            sl = sl[ok[sl]]
            if not len(sl):
                continue
            D = X[idx[sl]] - X[sl, None]  # (b, k, d) displacements in the representation
            F = E[idx[sl]] - E[sl, None]  # (b, k, 2) displacements on the embedding
            h = np.median(dist[sl], axis=1, keepdims=True)
            w = np.exp(-((dist[sl] / np.maximum(h, 1e-12)) ** 2))  # Gaussian weights, local bandwidth
            DtW = np.transpose(D * w[..., None], (0, 2, 1))  # (b, d, k)
            A = DtW @ D  # (b, d, d)
            lam = ridge * np.trace(A, axis1=1, axis2=2) / d + 1e-12
            A = A + lam[:, None, None] * np.eye(d)
            J = np.linalg.solve(A, DtW @ F)  # (b, d, 2): local least-squares map representation -> embedding
            out[sl] = np.einsum("bd,bdc->bc", V[sl], J)
        out[~ok] = np.nan

    if copy:
        adata = adata.copy()
    okey = f"{vkey}_{bname}"
    adata.obsm[okey] = out.astype(np.float32)
    pkey = f"{vkey}_params"
    prev = adata.uns.get(pkey, {})
    embs = [str(e) for e in np.atleast_1d(prev.get("embeddings", []))] if isinstance(prev, Mapping) else []
    if bname not in embs:
        embs.append(bname)
    adata.uns[pkey] = {"embeddings": np.asarray(embs, dtype=object), "use_rep": use_rep, "model_key": key}
    logger.info(f"velocity_embedding: wrote obsm[{okey!r}] and uns[{pkey!r}]")
    return adata if copy else None
