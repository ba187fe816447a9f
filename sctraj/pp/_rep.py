"""Embedding preparation."""

from __future__ import annotations

import numpy as np

from .._validation import check_adata, get_rep


def scale_embedding(
    adata,
    *,
    use_rep: str = "X_pca",
    n_dims: int | None = None,
    key_added: str | None = None,
    copy: bool = False,
):
    """Standardise each dimension of an embedding (zero mean, unit variance over all cells).

    This is the "whitening" of the TrajectoryNet / TorchCFM / Metric FM benchmarks (e.g. EB: first 5 PCs,
    standardised). Per-dimension scaling changes the geometry, so it is a modelling choice: sctraj does not do it
    inside ``fit_flow`` (which only centres and divides by one global scale, keeping distances and OT plans).

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        Key of ``adata.obsm`` to standardise.
    n_dims
        Keep only the first ``n_dims`` dimensions.
    key_added
        Key of the result in ``adata.obsm``; ``f"{use_rep}_scaled"`` by default.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else an :class:`~anndata.AnnData`. Sets `adata.obsm[key_added]`.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.eb()
    >>> sctraj.pp.scale_embedding(adata, use_rep="X_pca", n_dims=5, key_added="X_pca5")
    >>> adata.obsm["X_pca5"].shape[1]
    5
    """
    check_adata(adata)
    X = get_rep(adata, use_rep, n_dims).astype(np.float64)
    sd = X.std(0)
    Z = ((X - X.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added or f"{use_rep}_scaled"] = Z
    return adata if copy else None
