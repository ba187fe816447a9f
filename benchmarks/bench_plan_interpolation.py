"""W1 at held-out day 4 of hematopoiesis for OT *interpolations* (no model), under two weightings (issue 3).

Day 2 (all 1,429 cells) and a seeded subsample of 2,048 day-6 cells are coupled by a plan; cells at day 4 are the
midpoints ``(x_i + y_j) / 2`` of the plan's pairs, weighted

* by the plan's mass ``P_ij`` ("plan weights": what sampling interpolated cells from the plan gives, as moscot's
  ``compute_interpolated_distance`` does; for a plan with a hard target marginal this is the mass at day 6), or
* by the mass at day 4 under constant exponential growth, ``P_ij / r_i * (n0 r_i) ** 0.5`` with row sums ``r_i``
  ("growth weights": what a continuous model with constant growth rates along each path predicts).

Plans: exact OT, and the semi-relaxed unbalanced plan of ``vgfm`` (squared cost divided by its mean, ``reg``, KL
relaxation ``tau`` of the source marginal only). Up to 20,000 pairs are drawn from the plan (weighted draw) before
the exact W1 (POT) against all observed day-4 cells.

Usage: ``python benchmarks/bench_plan_interpolation.py [--taus 1 0.1] [--reg 0.05]`` (a few minutes per plan).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import ot

    import sctraj

    ap = argparse.ArgumentParser()
    ap.add_argument("--taus", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--reg", type=float, default=0.05)
    args = ap.parse_args()
    a = sctraj.datasets.hematopoiesis()
    X = a.obsm["X_emb"].astype(np.float64)
    d = a.obs["day"].astype(float).to_numpy()
    x0, xm, x1 = X[d == 2], X[d == 4], X[d == 6]
    x1 = x1[np.random.default_rng(0).choice(len(x1), 2048, replace=False)]
    n0, n1 = len(x0), len(x1)
    C = ot.dist(x0, x1)

    def w1(P, s=0.5, max_pairs=20_000):
        rng = np.random.default_rng(0)
        flat = (P / P.sum()).ravel()
        idx = np.flatnonzero(flat > 1e-12 * flat.max())
        w = flat[idx]
        if len(idx) > max_pairs:
            idx, w = idx[rng.choice(len(idx), max_pairs, p=w / w.sum())], np.ones(max_pairs)
        i, j = np.unravel_index(idx, P.shape)
        pts = (1 - s) * x0[i] + s * x1[j]
        M = ot.dist(pts, xm, metric="euclidean")
        return ot.emd2(w / w.sum(), np.full(len(xm), 1 / len(xm)), M, numItermax=10**7)

    def growth_weighted(P, s=0.5):
        r = P.sum(1)
        return (P / r[:, None]) * ((n0 * r / P.sum()) ** s)[:, None]

    P = ot.emd(np.full(n0, 1 / n0), np.full(n1, 1 / n1), C, numItermax=10**7)
    print(f"exact OT: W1 {w1(P):.4f} (balanced: both weightings coincide)", flush=True)
    for tau in args.taus:
        Pu = ot.unbalanced.sinkhorn_unbalanced(np.full(n0, 1 / n0), np.full(n1, 1 / n1), C / C.mean(), args.reg,
                                               (tau, np.inf), numItermax=3000, stopThr=1e-6)
        print(f"semi-relaxed reg {args.reg} tau {tau}: plan weights {w1(Pu):.4f}, growth weights "
              f"{w1(growth_weighted(Pu)):.4f}", flush=True)


if __name__ == "__main__":
    main()
