"""Distances between predicted and observed cell populations: W1, W2 (exact OT, POT) and Gaussian-kernel MMD."""

from __future__ import annotations

import numpy as np


def _subsample(X, w, n_max, rng):
    if len(X) <= n_max:
        return X, w
    idx = rng.choice(len(X), size=n_max, replace=False, p=None if w is None else w / w.sum())
    # sampling proportionally to the weights keeps the weighted distribution (unbiased), then weights are uniform
    return X[idx], None


def evaluate(
    predicted,
    observed,
    *,
    weights=None,
    max_cells: int = 10_000,
    mmd_cells: int = 2_000,
    random_state: int = 0,
) -> dict[str, float]:
    """Compare predicted cells with observed cells.

    Parameters
    ----------
    predicted, observed
        Arrays ``(n, d)`` and ``(m, d)`` in the same coordinates.
    weights
        Optional non-negative mass of each predicted cell (growth-aware predictions); normalised to sum to one.
    max_cells
        Larger sets are subsampled to this many cells (weighted sampling for weighted sets) before the exact OT
        solve; reported distances are then subsample estimates. This cap bounds the memory: the exact solve
        (:func:`ot.emd2`, network simplex) needs the ``n x m`` float64 cost matrix plus about 33 bytes per pair of
        its own (the plan, arc costs and flows), so the peak is about ``41 x n x m`` bytes: 4.1 GB at the default
        10,000 x 10,000, 1 GB at 5,000 (``benchmarks/results/evaluate_memory.md``). The cost matrix is built in
        row blocks (no ``n x m`` temporaries) and reused for W2 and W1 (squared, then square-rooted in place).
    mmd_cells
        Cells per side used for the MMD (memory about ``12 x (2 mmd_cells)^2`` bytes, computed in row blocks).
    random_state
        Seed of the subsampling.

    Returns
    -------
    ``{"W1": ..., "W2": ..., "MMD": ...}``: exact 1- and 2-Wasserstein distances with the Euclidean cost
    (:func:`ot.emd2`), and the RBF-kernel maximum mean discrepancy averaged over bandwidths ``{0.5, 1, 2}`` x the
    median pairwise distance.

    Examples
    --------
    >>> import numpy as np
    >>> import sctraj
    >>> rng = np.random.default_rng(0)
    >>> scores = sctraj.tl.evaluate(rng.normal(size=(100, 2)), rng.normal(size=(120, 2)))
    >>> sorted(scores)
    ['MMD', 'W1', 'W2']
    """
    import ot

    from .._validation import check_int, check_random_state

    max_cells, mmd_cells = check_int("max_cells", max_cells), check_int("mmd_cells", mmd_cells)
    random_state = check_random_state(random_state)
    P = np.asarray(predicted, np.float64)
    Q = np.asarray(observed, np.float64)
    if P.ndim != 2 or Q.ndim != 2 or P.shape[1] != Q.shape[1]:
        raise ValueError(f"predicted and observed must be 2-d arrays with equal dims, got {P.shape} and {Q.shape}.")
    if len(P) == 0 or len(Q) == 0:
        raise ValueError("predicted and observed must each hold at least one cell.")
    w = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        if w.shape != (len(P),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative, one per predicted cell, with a positive sum.")
    rng = np.random.default_rng(random_state)
    P, w = _subsample(P, w, max_cells, rng)
    Q, _ = _subsample(Q, None, max_cells, rng)
    a = np.full(len(P), 1 / len(P)) if w is None else w / w.sum()
    b = np.full(len(Q), 1 / len(Q))
    M = sq_dists(P, Q)  # the one n x m array of ours; POT works on it without a copy (float64, C order)
    w2 = float(np.sqrt(max(ot.emd2(a, b, M, numItermax=10_000_000), 0.0)))
    np.sqrt(M, out=M)
    w1 = float(ot.emd2(a, b, M, numItermax=10_000_000))
    del M
    return {"W1": w1, "W2": w2, "MMD": mmd(P, Q, weights=a, max_cells=mmd_cells, rng=rng)}


def sq_dists(P: np.ndarray, Q: np.ndarray, *, block_bytes: int = 2**25) -> np.ndarray:
    """Squared Euclidean distances ``(n, m)`` in float64, filled in row blocks of at most ``block_bytes`` of
    temporaries (exact differences, not the ``|x|^2 + |y|^2 - 2 x.y`` expansion)."""
    n, m, d = len(P), len(Q), P.shape[1]
    out = np.empty((n, m), np.float64)
    rows = max(1, min(block_bytes, 2 * n * m) // (8 * max(1, m * d)))  # temporaries <= 1/4 of the result
    for s in range(0, n, rows):
        diff = P[s : s + rows, None, :] - Q[None, :, :]
        np.einsum("ijk,ijk->ij", diff, diff, out=out[s : s + rows])
    return out


def mmd(P, Q, *, weights=None, max_cells: int = 2000, rng=None) -> float:
    """Gaussian-kernel MMD (square root of the biased MMD^2), bandwidths 0.5, 1, 2 x the median distance."""
    rng = np.random.default_rng(0) if rng is None else rng
    a = np.full(len(P), 1 / len(P)) if weights is None else np.asarray(weights) / np.sum(weights)
    if len(P) > max_cells:
        idx = rng.choice(len(P), size=max_cells, replace=False, p=a)
        P, a = P[idx], np.full(max_cells, 1 / max_cells)
    if len(Q) > max_cells:
        Q = Q[rng.choice(len(Q), size=max_cells, replace=False)]
    b = np.full(len(Q), 1 / len(Q))
    Z = np.concatenate([P, Q])
    N = len(Z)
    c = np.concatenate([a, -b])
    z2 = (Z**2).sum(1)
    rows = max(1, 2**22 // max(1, N))  # row blocks of 4M entries: no N x N temporaries

    def block(s):
        return np.maximum(z2[s : s + rows, None] + z2[None] - 2 * Z[s : s + rows] @ Z.T, 0)

    # median of the pairwise squared distances (upper triangle), gathered once into one array of N(N-1)/2 values
    upper = np.empty(N * (N - 1) // 2, np.float64)
    k = 0
    for s in range(0, N, rows):
        sq = block(s)
        for i in range(sq.shape[0]):
            row = sq[i, s + i + 1 :]
            upper[k : k + len(row)] = row
            k += len(row)
    med = float(np.median(upper, overwrite_input=True)) if N > 1 else 1.0
    del upper
    med = med if med > 0 else 1.0
    val = 0.0
    for s in range(0, N, rows):
        sq = block(s)
        val += sum(float(c[s : s + rows] @ np.exp(-sq / (2 * bw**2 * med)) @ c) for bw in (0.5, 1.0, 2.0)) / 3
    return float(np.sqrt(max(val, 0.0)))


def ot_interpolation(X0, X1, s: float, *, max_cells: int = 10_000, random_state: int = 0):
    """McCann displacement interpolation at fraction ``s`` of the exact OT plan between ``X0`` and ``X1``.

    Returns ``(points, weights)``: one point ``(1-s) x_i + s y_j`` per non-zero entry of the plan, weighted by it.
    """
    import ot

    rng = np.random.default_rng(random_state)
    X0, _ = _subsample(np.asarray(X0, np.float64), None, max_cells, rng)
    X1, _ = _subsample(np.asarray(X1, np.float64), None, max_cells, rng)
    plan = ot.emd(np.full(len(X0), 1 / len(X0)), np.full(len(X1), 1 / len(X1)), ot.dist(X0, X1),
                  numItermax=10_000_000)
    i, j = np.nonzero(plan)
    return (1 - s) * X0[i] + s * X1[j], plan[i, j]
