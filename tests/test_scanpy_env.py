"""The scanpy pipeline works inside sctraj's own environment on more cells than scanpy's brute-force kNN handles.

scanpy computes neighbours by brute force below 8,192 cells (euclidean; 4,096 for other metrics) and with
pynndescent above. pynndescent 0.7.0 returns sparse arrays there, on which scanpy 1.11 calls ``.getnnz()`` and
fails (issue 14, item 7); ``pyproject.toml`` keeps ``pynndescent<0.7``. This runs the failing call as reported.
"""

from __future__ import annotations

import numpy as np
import scanpy as sc

import sctraj


def test_neighbors_umap_leiden_on_the_pynndescent_path():
    adata = sctraj.datasets.hematopoiesis()  # 10,998 cells: above both thresholds
    assert adata.n_obs > 8192
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=10)
    D = adata.obsp["distances"]
    assert D.shape == (adata.n_obs, adata.n_obs)
    assert (np.diff(D.indptr) >= 9).all()  # every cell has at least its 9 nearest other cells
    # the approximate neighbours agree with exact ones on most cells
    from sklearn.neighbors import NearestNeighbors

    X = adata.obsm["X_emb"]
    _, exact = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(X[:500])
    hits = [len(set(D[i].indices) & set(exact[i, 1:])) / 9 for i in range(500)]
    assert np.mean(hits) > 0.9
    sc.tl.umap(adata, maxiter=20, random_state=0)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2) and np.isfinite(adata.obsm["X_umap"]).all()
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=0)
    assert 2 <= adata.obs["leiden"].nunique() < 1000
