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
        solve, whose memory is ``n x m`` floats; reported distances are then subsample estimates.
    mmd_cells
        Cells per side used for the MMD.
    random_state
        Seed of the subsampling.

    Returns
    -------
    ``{"W1": ..., "W2": ..., "MMD": ...}``: exact 1- and 2-Wasserstein distances with the Euclidean cost
    (:func:`ot.emd2`), and the RBF-kernel maximum mean discrepancy averaged over bandwidths ``{0.5, 1, 2}`` x the
    median pairwise distance.
    """
    import ot

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
    M = ot.dist(P, Q, metric="euclidean")
    w1 = float(ot.emd2(a, b, M, numItermax=10_000_000))
    w2 = float(np.sqrt(max(ot.emd2(a, b, M**2, numItermax=10_000_000), 0.0)))
    return {"W1": w1, "W2": w2, "MMD": mmd(P, Q, weights=a, max_cells=mmd_cells, rng=rng)}


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
    sq = np.maximum((Z**2).sum(1)[:, None] + (Z**2).sum(1)[None] - 2 * Z @ Z.T, 0)
    med = np.median(sq[np.triu_indices(len(Z), 1)]) if len(Z) > 1 else 1.0
    med = med if med > 0 else 1.0
    c = np.concatenate([a, -b])
    val = np.mean([c @ np.exp(-sq / (2 * s**2 * med)) @ c for s in (0.5, 1.0, 2.0)])
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
