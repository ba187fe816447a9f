"""Clonal truth on LARRY: do the fates read from each flow match where the cell's clone actually went?

Score, defined before measuring:

* evaluation cells: the day-2 and day-4 cells of ``sctraj.datasets.larry()`` whose clone (``obsm["X_clone"]``) has
  at least ``--min-day6`` (default 2) day-6 cells; also reported for clones with >= 1 day-6 cell;
* truth: the clone's observed day-6 cell-type distribution (``obs["cell_type"]`` of its day-6 cells);
* prediction: the cell's day-6 fate distribution;
* score: the mean total-variation distance ``0.5 * sum_c |p_c - q_c|`` over evaluation cells (0 = perfect,
  1 = disjoint; lower is better), and the share of cells whose most likely predicted fate is the clone's most
  common day-6 type.

Every row uses the same read-out, so only the transport differs: the day-6 cell types are read with the
label-transfer rule of ``tl.fate_probabilities`` (Gaussian kernel over ``--n-neighbors`` nearest day-6 cells) and
each cell's fate is averaged over its ``n_source_neighbors`` (default 5) nearest cells at its own time.

* ``no dynamics``: the cell's own position is read among the day-6 cells (no transport).
* ``static exact OT``: an exact OT plan (POT ``ot.emd``, squared Euclidean cost, uniform marginals) from the cells
  of each earlier day directly to the day-6 cells; a cell's fate is its plan row (normalised) applied to the day-6
  labels.
* each flow method: ``tl.fate_probabilities`` after ``tl.fit_flow`` with the method's defaults (several seeds).

The clones are never seen by any method. ``metafm`` is not run: it conditions on populations (replicates,
patients), which this data set does not have.

Usage: ``nice -n 5 python benchmarks/bench_fates_larry.py --seeds 0 1 2 `` (run from ``benchmarks/``; writes the result table).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

METHODS = ("icfm", "otcfm", "sbcfm", "vgfm", "metricfm")


def clonal_truth(adata, min_day6: int):
    """Evaluation cells (positions), and the clone's day-6 distribution over ``fates`` for each."""
    day = adata.obs["day"].to_numpy(float)
    C = adata.obsm["X_clone"].tocsr()
    has = np.asarray(C.sum(1)).ravel() > 0
    clone = np.asarray(C.argmax(1)).ravel()
    fates = [str(c) for c in pd.unique(adata.obs["cell_type"][day == 6].astype(str))]
    fates = sorted(fates)
    lab6 = adata.obs["cell_type"].astype(str).to_numpy()
    dist = {}
    for c in np.unique(clone[has & (day == 6)]):
        sel = has & (day == 6) & (clone == c)
        q = pd.Series(lab6[sel]).value_counts(normalize=True).reindex(fates, fill_value=0.0).to_numpy()
        dist[c] = (q, int(sel.sum()))
    ev = np.flatnonzero(has & (day < 6) & np.array([c in dist and dist[c][1] >= min_day6 for c in clone]))
    Q = np.stack([dist[clone[i]][0] for i in ev]) if len(ev) else np.zeros((0, len(fates)))
    return ev, Q, fates, clone


def scores(P: np.ndarray, Q: np.ndarray) -> tuple[float, float]:
    tv = 0.5 * np.abs(P - Q).sum(1)
    top = (P.argmax(1) == Q.argmax(1)).mean()
    return float(tv.mean()), float(top)


def baselines(adata, fates, n_neighbors: int, n_source_neighbors: int) -> dict[str, np.ndarray]:
    """No-dynamics and static exact-OT fate matrices (n_obs x fates, NaN outside days 2/4)."""
    import ot

    from sctraj.tl._transfer import kernel_weights, one_hot, row_normalize

    X = np.asarray(adata.obsm["X_pca"], np.float64)
    day = adata.obs["day"].to_numpy(float)
    lab = adata.obs["cell_type"].astype(str).to_numpy()
    tgt = np.flatnonzero(day == 6)
    L = one_hot(np.array([fates.index(v) for v in lab[tgt]]), len(fates))
    out = {k: np.full((adata.n_obs, len(fates)), np.nan) for k in ("no dynamics", "static exact OT")}
    for d in (2.0, 4.0):
        src = np.flatnonzero(day == d)
        A = row_normalize(kernel_weights(X[src], X[src], n_source_neighbors))
        P0 = kernel_weights(X[src], X[tgt], n_neighbors) @ L
        out["no dynamics"][src] = np.asarray((A @ P0).todense())
        M = ot.dist(X[src], X[tgt])
        G = ot.emd(np.full(len(src), 1 / len(src)), np.full(len(tgt), 1 / len(tgt)), M)
        Pot = (G / G.sum(1, keepdims=True)) @ L.toarray()
        out["static exact OT"][src] = A @ Pot
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--n-steps", type=int, default=None, help="training steps (method default when omitted)")
    ap.add_argument("--n-neighbors", type=int, default=30)
    ap.add_argument("--n-source-neighbors", type=int, default=5)
    ap.add_argument("--min-day6", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    args = ap.parse_args()

    import torch

    import sctraj

    torch.set_num_threads(1)
    adata = sctraj.datasets.larry()
    load0 = os.getloadavg()
    ev2, Q2, fates, _ = clonal_truth(adata, args.min_day6)
    ev1, Q1, _, _ = clonal_truth(adata, 1)
    day = adata.obs["day"].to_numpy(float)
    rows = []

    def add(name, P, seed, sec):
        s2 = scores(P[ev2], Q2)
        s1 = scores(P[ev1], Q1)
        rows.append({"method": name, "seed": seed, "TV": s2[0], "top-fate": s2[1], "TV (>=1)": s1[0],
                     "top-fate (>=1)": s1[1], "seconds": sec})
        print(rows[-1], flush=True)

    t0 = time.perf_counter()
    for name, P in baselines(adata, fates, args.n_neighbors, args.n_source_neighbors).items():
        add(name, P, "-", time.perf_counter() - t0)
    kw = {} if args.n_steps is None else {"n_steps": args.n_steps}
    for m in args.methods:
        for s in args.seeds:
            a = adata.copy()
            t0 = time.perf_counter()
            model = sctraj.tl.fit_flow(a, "day", method=m, use_rep="X_pca", random_state=s, progress=False,
                                       trajectory_n_grid=0, **kw)
            df = sctraj.tl.fate_probabilities(a, model, "cell_type", n_neighbors=args.n_neighbors,
                                              n_source_neighbors=args.n_source_neighbors)
            P = df.reindex(columns=fates).fillna(0.0).to_numpy()
            P[day == 6] = np.nan
            add(m, P, s, time.perf_counter() - t0)
    df = pd.DataFrame(rows)
    summ = (df.groupby("method", sort=False)
              .agg(**{"mean TV (lower is better)": ("TV", "mean"), "sd": ("TV", "std"),
                      "top-fate agreement": ("top-fate", "mean"), "mean TV, clones >= 1 day-6 cell": ("TV (>=1)", "mean"),
                      "seconds per run": ("seconds", "mean")})
              .reset_index())
    load1 = os.getloadavg()
    print(summ.to_markdown(index=False, floatfmt=".3f"))
    if not args.no_write:
        from _common import table, write_result

        cols = list(summ.columns)
        body = (f"Evaluation cells: {len(ev2)} day-2/day-4 cells ({int((day[ev2] == 2).sum())} day-2) whose clone has "
                f">= {args.min_day6} day-6 cells ({len(ev1)} cells for clones with >= 1). Fates: the {len(fates)} "
                f"cell types observed at day 6. Seeds {args.seeds}; `X_pca` (40 dims); default training settings; "
                f"n_neighbors={args.n_neighbors}, n_source_neighbors={args.n_source_neighbors} for every row. Load "
                f"average {load0[0]:.1f} at start, {load1[0]:.1f} at end (2 shared cores).\n\n"
                + table(summ.to_dict("records"), cols, {c: ".3f" for c in cols if c != "method"})
                + "\n\nPer run:\n\n"
                + table(df.to_dict("records"), list(df.columns), {c: ".3f" for c in df.columns
                                                                   if c not in ("method", "seed")}))
        write_result("fates_larry", "Fate probabilities vs clonal truth (LARRY subset)", body,
                     notes=__doc__.split("Usage:")[0].strip())


if __name__ == "__main__":
    main()
