"""Benchmark of ``metricfm`` (Metric Flow Matching, Kapusniak et al. 2024, arXiv:2405.14780) against ``otcfm``.

Three parts, each selectable with ``--part``:

* ``loo``:   leave-one-out W1 on the bundled EB subset (first 5 PCs standardised, held-out days 7.5, 13.5, 19.5)
             and on the bundled iPSC time course (``X_emb``, all interior time points), several seeds, defaults.
* ``arc``:   a curved 2-d toy: cells move along the unit half circle, the middle time is held out; cells of the
             first time pushed to the middle time by each method, and their mean distance to the arc.
* ``scale``: fit time and peak memory (RSS) of ``metricfm`` vs ``otcfm`` on 50-d data with tens of thousands of
             cells (RBF metric, picked by ``metric="auto"``).
* ``speed``: CPU seconds of one default fit (all time points) of ``otcfm`` and ``metricfm``, one after the other in
             one process, on hematopoiesis (2-d, 10,998 cells), EB (5 standardised PCs) and EB's first 50 PCs
             (standardised; RBF metric), per seed, and the ratio.

Usage: ``python benchmarks/bench_metricfm.py --part loo --seeds 0 1 2`` (writes nothing; prints Markdown tables).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def loo(seeds, n_steps=None, datasets=("eb", "ipsc"), ipsc_heldout=None):
    import sctraj

    out = []
    a = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(a, use_rep="X_pca", n_dims=5)
    b = sctraj.datasets.ipsc()
    h = sctraj.datasets.hematopoiesis()
    kw = {} if n_steps is None else {"n_steps": n_steps}
    for tag, name, ad, key, rep, held in (("eb", "EB (5-d)", a, "day", "X_pca_scaled", [7.5, 13.5, 19.5]),
                                          ("ipsc", "iPSC (4-d)", b, "time", "X_emb", ipsc_heldout),
                                          ("hema", "hematopoiesis (2-d)", h, "day", "X_emb", [4.0])):
        if tag not in datasets:
            continue
        df = sctraj.tl.leave_one_out(ad, key, methods=["otcfm", "metricfm"], use_rep=rep, heldout=held,
                                     seeds=tuple(seeds), progress=False, **kw)
        df.insert(0, "dataset", name)
        out.append(df)
        print(df.to_string(), flush=True)
    import pandas as pd

    df = pd.concat(out)
    fitted = df[df["method"].isin(["otcfm", "metricfm"])]
    per_seed = fitted.groupby(["dataset", "method", "seed"])["W1"].mean().unstack("method")
    per_seed["ratio"] = per_seed["metricfm"] / per_seed["otcfm"]
    print("\nMean W1 over held-out times, per seed\n")
    print(per_seed.round(4).to_markdown())
    refs = df[~df["method"].isin(["otcfm", "metricfm"])].groupby(["dataset", "method"])["W1"].mean()
    print("\nReferences (mean W1)\n")
    print(refs.round(4).to_markdown())
    summ = fitted.groupby(["dataset", "method"]).agg(W1=("W1", "mean"), W1_sd=("W1", "std"),
                                                    fit_s=("fit_seconds", "mean"))
    print("\nSummary over held-out times and seeds\n")
    print(summ.round(4).to_markdown())


def _toy_adata(X, t):
    import anndata as ad
    import pandas as pd

    t = np.concatenate(t)
    a = ad.AnnData(obs=pd.DataFrame({"time": t}, index=[f"c{i}" for i in range(len(t))]))
    a.obsm["X_pca"] = np.concatenate(X).astype(np.float32)
    return a


def arc_adata(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = {0.0: np.deg2rad(20), 1.0: np.deg2rad(90), 2.0: np.deg2rad(160)}
    X, t = [], []
    for tv, c in centres.items():
        th = c + rng.uniform(-np.deg2rad(35), np.deg2rad(35), n)
        r = 1 + 0.03 * rng.standard_normal(n)
        X.append(np.c_[r * np.cos(th), r * np.sin(th)])
        t.append(np.full(n, tv))
    return _toy_adata(X, t)


def arch_adata(n=1000, seed=0):
    """The arch toy of the Metric FM paper (Kapusniak et al. 2024, Sec. 5.1), re-implemented from its description.

    Positions along the unit half circle are ``u`` in [0, 1] (angle ``pi (1 - u)``): time 0 is ``|N(0, 1/(2 pi))|``
    (the left end, with a tail up the arch), time 2 its mirror ``1 - |N(0, 1/(2 pi))|``, time 1 the midpoints of the
    monotone (1-d exact OT) matching of the two, so it sits on top of the arch; radial noise ``1 + N(0, 0.1)``.
    Unlike :func:`arc_adata` the kept snapshots have thin tails over the whole arch, as in the paper.
    """
    rng = np.random.default_rng(seed)
    u0 = np.sort(np.abs(rng.normal(0, 1 / (2 * np.pi), n)))
    u2 = np.sort(1 - np.abs(rng.normal(0, 1 / (2 * np.pi), n)))
    u1 = (u0 + u2) / 2
    X, t = [], []
    for tv, u in ((0.0, u0), (1.0, u1), (2.0, u2)):
        th = np.pi * (1 - u)
        r = 1 + 0.1 * rng.standard_normal(n)
        X.append(np.c_[r * np.cos(th), r * np.sin(th)])
        t.append(np.full(n, tv))
    return _toy_adata(X, t)


def arc(seeds, n_steps=None, toy="sectors"):
    import sctraj

    rows = []
    for s in seeds:
        a = arc_adata(seed=s) if toy == "sectors" else arch_adata(seed=s)
        for m in ("otcfm", "metricfm"):
            kw = {} if n_steps is None else {"n_steps": n_steps}
            model = sctraj.tl.fit_flow(a, "time", method=m, exclude_times=[1.0], random_state=s, progress=False,
                                       trajectory_n_grid=0, **kw)
            p = sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0)
            Y = p.obsm["X_pca"]
            dist = np.abs(np.linalg.norm(Y, axis=1) - 1.0)  # distance to the unit circle
            true = a.obsm["X_pca"][a.obs["time"].to_numpy() == 1.0]
            w1 = sctraj.tl.evaluate(Y, true)["W1"]
            rows.append({"seed": s, "method": m, "dist_to_arc": float(dist.mean()), "W1_mid": w1,
                         "fit_s": model.setup["fit_seconds"]})
            print(rows[-1], flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    piv = df.pivot(index="seed", columns="method", values="dist_to_arc")
    piv["reduction"] = 1 - piv["metricfm"] / piv["otcfm"]
    print("\nMean distance to the arc of cells pushed to the held-out middle time\n")
    print(piv.round(4).to_markdown())
    print(df.groupby("method")[["dist_to_arc", "W1_mid", "fit_s"]].mean().round(4).to_markdown())


def scale(n_cells, dim, n_steps):
    """Run in a fresh process per method so that peak RSS is per method."""
    import subprocess
    import sys

    rows = []
    for m in ("otcfm", "metricfm"):
        code = (
            "import resource,time,numpy as np,anndata as ad,pandas as pd,sctraj,warnings;warnings.filterwarnings('ignore');"
            f"rng=np.random.default_rng(0);n={n_cells};d={dim};T=3;"
            "X=[];t=[]\n"
            "for k in range(T):\n"
            "    Z=rng.standard_normal((n//T,d)).astype(np.float32);Z[:,0]+=3*k;Z[:,1]+=np.sin(Z[:,0]);X.append(Z);t+= [float(k)]*(n//T)\n"
            "a=ad.AnnData(obs=pd.DataFrame({'time':t},index=[str(i) for i in range(len(t))]));a.obsm['X_pca']=np.concatenate(X)\n"
            "r0=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"m=sctraj.tl.fit_flow(a,'time',method='{m}',n_steps={n_steps},progress=False,trajectory_n_grid=0)\n"
            "print('RESULT',m.setup['fit_seconds'],resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,r0/1024,"
            "a.uns['sctraj'].get('metric','-'))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
        if not line:
            print(out.stdout[-2000:], out.stderr[-4000:])
            continue
        _, fs, peak, base, metric = line[0].split()
        rows.append({"method": m, "cells": n_cells, "dims": dim, "n_steps": n_steps, "fit_s": float(fs),
                     "peak_rss_MiB": float(peak), "rss_before_fit_MiB": float(base), "metric": metric})
        print(rows[-1], flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    print(df.round(1).to_markdown(index=False))
    if len(df) == 2:
        print(f"\nmetricfm / otcfm fit time: {df.fit_s.iloc[1] / df.fit_s.iloc[0]:.2f}x")


SPEED_VARIANTS = {
    "otcfm": ("otcfm", {}),
    "metricfm": ("metricfm", {}),
    "metricfm geopath_time=True": ("metricfm", {"geopath_time": True}),  # the path network input before 2026-12-02
    # issue 15 item 5 candidate: twice the stage-1 steps at half the stage-1 batch
    "metricfm g1000 gb128": ("metricfm", {"geopath_steps": 1000, "geopath_batch_size": 128}),
    "metricfm g1000": ("metricfm", {"geopath_steps": 1000}),
}


def speed(seeds, variants=None):
    """CPU seconds of one default fit on all time points, ``otcfm`` and each ``metricfm`` variant one after the other
    in one process (one torch thread), per dataset and seed; the ratio to ``otcfm`` of the same dataset and seed."""
    import os

    import torch

    import sctraj

    torch.set_num_threads(1)
    h = sctraj.datasets.hematopoiesis()
    e5 = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(e5, use_rep="X_pca", n_dims=5)
    e50 = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(e50, use_rep="X_pca", n_dims=50)
    sctraj.tl.fit_flow(h, "day", method="otcfm", use_rep="X_emb", n_steps=20, progress=False,
                       trajectory_n_grid=0, key_added="_warmup")  # imports and first-call costs, not measured
    rows = []
    for s in seeds:
        for name, a, key, rep in (("hematopoiesis 2-d", h, "day", "X_emb"), ("EB 5-d", e5, "day", "X_pca_scaled"),
                                  ("EB 50-d", e50, "day", "X_pca_scaled")):
            for label, (m, kw) in SPEED_VARIANTS.items():
                if variants and label not in variants and label != "otcfm":
                    continue
                c0, w0 = time.process_time(), time.perf_counter()
                sctraj.tl.fit_flow(a, key, method=m, use_rep=rep, random_state=s, progress=False,
                                   trajectory_n_grid=0, key_added="_speed", **kw)
                rows.append({"data": name, "seed": s, "method": label, "cpu_s": time.process_time() - c0,
                             "wall_s": time.perf_counter() - w0, "load": os.getloadavg()[0]})
                print(rows[-1], flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    df["ratio"] = df.cpu_s / df.groupby(["data", "seed"]).cpu_s.transform(lambda c: c[df.loc[c.index, "method"]
                                                                                     == "otcfm"].iloc[0])
    t = df.pivot_table(index="data", columns="method", values=["cpu_s", "ratio"], aggfunc="mean")
    print(t.round(2).to_markdown())
    print(f"seeds {list(seeds)}; load during the run: {df.load.min():.1f}-{df.load.max():.1f}")


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "loo", "arc", "scale", "speed"], default="all",
                    help="'all' (what make bench runs): arc (both toys), loo, scale")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=None, help="speed: these SPEED_VARIANTS only (and otcfm)")
    ap.add_argument("--n-steps", type=int, default=None)
    ap.add_argument("--n-cells", type=int, default=30_000)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--datasets", nargs="+", default=["eb", "ipsc", "hema"], choices=["eb", "ipsc", "hema"])
    ap.add_argument("--ipsc-heldout", type=float, nargs="+", default=None, help="iPSC times to hold out (all interior)")
    ap.add_argument("--toy", choices=["sectors", "arch"], default="sectors",
                    help="curved toy for --part arc: uniform sectors with an empty gap, or the paper's arch")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.part in ("arc", "all"):
        for toy in (args.toy,) if args.part == "arc" else ("arch", "sectors"):
            arc(args.seeds, args.n_steps, toy)
    if args.part in ("loo", "all"):
        loo(args.seeds, args.n_steps, args.datasets, args.ipsc_heldout)
    if args.part == "speed":
        speed(args.seeds, args.variants)
    if args.part in ("scale", "all"):
        scale(args.n_cells, args.dim, args.n_steps or 2000)
    print(f"\nwall {time.perf_counter() - t0:.0f}s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
