"""Agreement of ``tl.cell_transition`` (day 10 -> 10.5) with moscot's own table on the Schiebinger subset.

``sctraj.datasets.reprogramming()`` carries moscot's ``cell_transition_10_105_forward`` / ``_backward`` (computed by
moscot's ``TemporalProblem`` on the full data set) and its transport map ``tmap_10_105``. We compute the same tables

* from each flow (``tl.fit_flow`` on 30 PCs of the log-normalised expression, then ``tl.cell_transition``),
* from a static exact-OT plan between the two days in the same PCs (POT ``ot.emd``, uniform marginals),
* from moscot's stored map, aggregated by cell type (checks that our aggregation reproduces moscot's table).

Agreement, per direction: the mean total-variation distance between our rows (forward; columns, backward) and
moscot's, over the types present on both days, and the Pearson correlation of all entries of those rows/columns.

Usage: ``nice -n 5 python benchmarks/bench_fates_moscot.py --seeds 0 1 2 `` (run from ``benchmarks/``; writes the result table).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def agreement(ours: pd.DataFrame, ref: pd.DataFrame, forward: bool) -> tuple[float, float]:
    """Mean TV distance and Pearson r between our and moscot's rows (forward) or columns (backward)."""
    if not forward:
        ours, ref = ours.T, ref.T
    keep = [r for r in ours.index if r in ref.index and np.isfinite(ref.loc[r].to_numpy(float)).all()
            and ref.loc[r].sum() > 0]
    cols = list(dict.fromkeys([*ours.columns, *ref.columns]))
    a = ours.reindex(index=keep, columns=cols).fillna(0.0).to_numpy(float)
    b = ref.reindex(index=keep, columns=cols).fillna(0.0).to_numpy(float)
    a = a / np.maximum(a.sum(1, keepdims=True), 1e-12)
    b = b / np.maximum(b.sum(1, keepdims=True), 1e-12)
    return float(0.5 * np.abs(a - b).sum(1).mean()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def table_from_plan(G: np.ndarray, s_lab: np.ndarray, t_lab: np.ndarray, s_cats, t_cats, forward: bool):
    S = np.stack([(s_lab == c).astype(float) for c in s_cats], 1)
    T = np.stack([(t_lab == c).astype(float) for c in t_cats], 1)
    M = S.T @ G @ T
    M = M / M.sum(1, keepdims=True) if forward else M / M.sum(0, keepdims=True)
    return pd.DataFrame(M, index=s_cats, columns=t_cats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["otcfm", "vgfm"])
    ap.add_argument("--n-steps", type=int, default=None)
    ap.add_argument("--n-pcs", type=int, default=30)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    args = ap.parse_args()

    import ot
    import scanpy as sc
    import torch

    import sctraj

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    adata = sctraj.datasets.reprogramming()
    sc.pp.pca(adata, n_comps=args.n_pcs, random_state=0)
    ref = {True: adata.uns["cell_transition_10_105_forward"], False: adata.uns["cell_transition_10_105_backward"]}
    day = adata.obs["day"].to_numpy(float)
    lab = adata.obs["cell_type"].astype(str).to_numpy()
    s, t = day == 10.0, day == 10.5
    s_cats = [c for c in adata.obs["cell_type"].cat.categories if (lab[s] == c).any()]
    t_cats = [c for c in adata.obs["cell_type"].cat.categories if (lab[t] == c).any()]
    rows, tables = [], {}

    def add(name, seed, fwd, bwd, sec):
        f, b = agreement(fwd, ref[True], True), agreement(bwd, ref[False], False)
        rows.append({"source": name, "seed": seed, "forward TV": f[0], "forward r": f[1], "backward TV": b[0],
                     "backward r": b[1], "seconds": sec})
        tables.setdefault(name, fwd)
        print(rows[-1], flush=True)

    G = np.asarray(adata.uns["tmap_10_105"], float)
    add("moscot's map, our aggregation", "-", table_from_plan(G, lab[s], lab[t], s_cats, t_cats, True),
        table_from_plan(G, lab[s], lab[t], s_cats, t_cats, False), 0.0)
    X = adata.obsm["X_pca"].astype(np.float64)
    t0 = time.perf_counter()
    E = ot.emd(np.full(s.sum(), 1 / s.sum()), np.full(t.sum(), 1 / t.sum()), ot.dist(X[s], X[t]))
    add("static exact OT", "-", table_from_plan(E, lab[s], lab[t], s_cats, t_cats, True),
        table_from_plan(E, lab[s], lab[t], s_cats, t_cats, False), time.perf_counter() - t0)
    kw = {} if args.n_steps is None else {"n_steps": args.n_steps}
    for m in args.methods:
        for seed in args.seeds:
            a = adata.copy()
            t0 = time.perf_counter()
            model = sctraj.tl.fit_flow(a, "day", method=m, use_rep="X_pca", random_state=seed, progress=False,
                                       trajectory_n_grid=0, **kw)
            fwd = sctraj.tl.cell_transition(a, model, 10, 10.5, "cell_type", "cell_type")
            bwd = sctraj.tl.cell_transition(a, model, 10, 10.5, "cell_type", "cell_type", forward=False)
            add(m, seed, fwd, bwd, time.perf_counter() - t0)
    df = pd.DataFrame(rows)
    summ = df.groupby("source", sort=False)[["forward TV", "forward r", "backward TV", "backward r", "seconds"]].mean()
    print(summ.round(3).to_markdown())
    load1 = os.getloadavg()
    if not args.no_write:
        from _common import table, write_result

        summ = summ.reset_index()
        fmt = {c: ".3f" for c in summ.columns if c != "source"}
        shown = "\n\n".join(f"**{k}** (forward, rows sum to 1):\n\n" + v.round(3).to_markdown()
                            for k, v in tables.items() if k in ("moscot's map, our aggregation", "otcfm", "vgfm",
                                                                   "static exact OT"))
        body = (f"Day 10 ({int(s.sum())} cells) -> day 10.5 ({int(t.sum())} cells); {args.n_pcs} PCs of the stored "
                f"log-normalised expression; seeds {args.seeds}, default training settings. Reference: moscot's "
                f"stored `cell_transition_10_105_forward` / `_backward`. Load average {load0[0]:.1f} at start, "
                f"{load1[0]:.1f} at end (2 shared cores).\n\n"
                + table(summ.to_dict("records"), list(summ.columns), fmt)
                + "\n\nmoscot's forward table:\n\n" + ref[True].round(3).to_markdown() + "\n\n" + shown)
        write_result("fates_moscot", "cell_transition vs moscot (Schiebinger reprogramming subset)", body,
                     notes=__doc__.split("Usage:")[0].strip())


if __name__ == "__main__":
    main()
