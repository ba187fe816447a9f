"""The label-transfer rule shared by the fate functions: where a pushed cell lands, read the observed cells nearby.

A pushed (or pulled) cell at position ``y`` is spread over its ``k`` nearest observed cells ``x_1..x_k`` at the other
time (scikit-learn :class:`~sklearn.neighbors.NearestNeighbors`, so memory is O(n * k), never n x n) with Gaussian
weights

    w_j  proportional to  exp(-(|y - x_j|^2 - |y - x_1|^2) / (2 sigma^2)),    sigma = median_j |y - x_j|,

i.e. an adaptive bandwidth (the median distance to the ``k`` neighbours, as in adaptive-kernel label transfer) and
distances offset by the nearest one, so that a cell that lands away from every observed cell still gets a proper
distribution over its nearest ones instead of underflowing to zero. Weights of one cell sum to 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def check_n_neighbors(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer (the number of neighbours of the label transfer), "
                         f"got {value!r}.")
    return int(value)


def kernel_weights(Y: np.ndarray, X_ref: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Sparse ``(len(Y), len(X_ref))`` matrix of label-transfer weights; every row sums to 1 and has ``k`` entries."""
    from sklearn.neighbors import NearestNeighbors

    k = min(int(n_neighbors), len(X_ref))
    nn = NearestNeighbors(n_neighbors=k).fit(np.asarray(X_ref, np.float32))
    dist, idx = nn.kneighbors(np.asarray(Y, np.float32))
    dist = dist.astype(np.float64)
    d2 = dist**2 - dist[:, :1] ** 2
    sigma = np.median(dist, axis=1, keepdims=True)
    sigma = np.where(sigma > 0, sigma, np.maximum(dist[:, -1:], 1e-12))
    w = np.exp(-d2 / (2.0 * sigma**2))
    w /= w.sum(axis=1, keepdims=True)
    n = len(Y)
    indptr = np.arange(0, n * k + 1, k)
    return sp.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(n, len(X_ref)))


def one_hot(codes: np.ndarray, n_categories: int) -> sp.csr_matrix:
    """Sparse indicator matrix of category codes (``-1`` = unlabelled: an empty row)."""
    ok = codes >= 0
    rows = np.flatnonzero(ok)
    return sp.csr_matrix((np.ones(len(rows)), (rows, codes[ok])), shape=(len(codes), n_categories))


def row_normalize(M: sp.spmatrix) -> sp.csr_matrix:
    M = sp.csr_matrix(M)
    s = np.asarray(M.sum(axis=1)).ravel()
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    return sp.csr_matrix(sp.diags(inv) @ M)
