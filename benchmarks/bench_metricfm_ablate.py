"""Ablations of ``metricfm`` against ``otcfm`` in one run: leave-one-out W1 over datasets, held-out times and seeds.

Every configuration is a named set of ``metricfm`` parameters (``CONFIGS``); ``otcfm`` (defaults) runs in the same
process with the same seeds, and each row reports the mean W1 over held-out times and seeds and the ratio to
``otcfm``, per dataset and averaged over datasets (the criterion defaults are chosen by: never one held-out answer).

Usage::

    python benchmarks/bench_metricfm_ablate.py --configs default alpha2 --seeds 0 1 2 --out results.json
    python benchmarks/bench_metricfm_ablate.py --report results.json more.json   # the markdown table

Datasets: EB (bundled subset, first 5 PCs standardised, held-out days 7.5 / 13.5 / 19.5), iPSC (``X_emb``, 4-d,
held-out 1-6), hematopoiesis (``X_emb``, 2-d, held-out day 4). Writes raw rows to ``--out`` (JSON) as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

CONFIGS: dict[str, dict] = {
    "default": {},
    # LAND bandwidth rule
    "gamma0.125": {"land_gamma": 0.125},
    "gamma0.2": {"land_gamma": 0.2},
    "scott0.4": {"land_gamma_scale": 0.4},
    "scott1.0": {"land_gamma_scale": 1.0},
    # exponent and epsilon
    "alpha1": {"metric_alpha": 1.0},
    "alpha2": {"metric_alpha": 2.0},
    "eps1e-2": {"metric_eps": 1e-2},
    "eps1e-1": {"metric_eps": 1e-1},
    "alpha2_eps1e-2": {"metric_alpha": 2.0, "metric_eps": 1e-2},
    # long intervals: the metric from every fitted snapshot
    "cells_all": {"metric_cells": "all"},
    # stage 1: normalisation and steps
    "norm_global": {"geopath_normalise": "global"},
    "no_early_stop": {"geopath_val_fraction": 0.0},
    "geo_steps_0": {"geopath_steps": 0},
    "geo_lr1e-4": {"geopath_lr": 1e-4},
    # path network
    "geo_width256": {"geopath_width": 256},
    "geo_notime": {"geopath_time": False},
    # coupling
    "metric_ot": {"coupling": "metric_ot"},
    # sigma
    "sigma0.05": {"sigma": 0.05},
    "sigma0.2": {"sigma": 0.2},
    # cost: learned-path samples shared by two flow-matching steps, fewer LAND landmarks
    "path_reuse2": {"path_reuse": 2},
    "landmarks512": {"land_max_points": 512},
    "fast": {"path_reuse": 2, "land_max_points": 512},
    "notime_reuse2": {"geopath_time": False, "path_reuse": 2},
    "notime_reuse2_gb128": {"geopath_time": False, "path_reuse": 2, "geopath_batch_size": 128},
    "notime_lm512": {"geopath_time": False, "land_max_points": 512},
    "notime_fast": {"geopath_time": False, "path_reuse": 2, "land_max_points": 512},
    "notime_fast_g250": {"geopath_time": False, "path_reuse": 2, "land_max_points": 512, "geopath_steps": 250},
    # the reference's EB configuration, as far as it maps onto sctraj
    "reference_eb": {"land_gamma": 0.125, "metric_alpha": 2.0, "metric_eps": 1e-3, "geopath_normalise": "global",
                     "geopath_lr": 1e-4},
}


def datasets(names):
    import sctraj

    out = {}
    if "eb" in names:
        a = sctraj.datasets.eb()
        sctraj.pp.scale_embedding(a, use_rep="X_pca", n_dims=5)
        out["eb"] = (a, "day", "X_pca_scaled", None)
    if "ipsc" in names:
        out["ipsc"] = (sctraj.datasets.ipsc(), "time", "X_emb", None)
    if "hema" in names:
        out["hema"] = (sctraj.datasets.hematopoiesis(), "day", "X_emb", [4.0])
    return out


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["default"])
    ap.add_argument("--datasets", nargs="+", default=["eb", "ipsc", "hema"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-steps", type=int, default=None)
    ap.add_argument("--no-otcfm", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="print the markdown table of these raw-row files and exit (no fits)")
    args = ap.parse_args()
    if args.report:
        rows = [r for f in args.report for r in json.loads(Path(f).read_text())]
        summarise(rows, markdown=True)
        return
    import sctraj

    rows = []
    if args.out and os.path.exists(args.out):
        rows = json.loads(Path(args.out).read_text())
    done = {(r["config"], r["dataset"], r["heldout"], r["seed"]) for r in rows}
    kw = {} if args.n_steps is None else {"n_steps": args.n_steps}
    todo = ([] if args.no_otcfm else [("otcfm", "otcfm", {})]) + [("metricfm", c, CONFIGS[c]) for c in args.configs]
    for name, (ad, key, rep, held) in datasets(args.datasets).items():
        for method, cname, params in todo:
            for s in args.seeds:
                t = np.unique(ad.obs[key].to_numpy())[1:-1] if held is None else held
                if all((cname, name, float(h), s) in done for h in t):
                    continue
                c0 = time.process_time()
                df = sctraj.tl.leave_one_out(ad, key, methods=[method], use_rep=rep, heldout=held, seeds=[s],
                                             references=False, progress=False, **kw, **params)
                cpu = time.process_time() - c0
                for r in df.itertuples():
                    rows.append({"config": cname, "dataset": name, "heldout": float(r.heldout), "seed": s,
                                 "W1": float(r.W1), "fit_s": float(r.fit_seconds), "cpu_s_total": cpu,
                                 "n_steps": int(r.n_train_steps), "load": os.getloadavg()[0]})
                print(f"{cname:>16} {name:>5} seed={s} W1={df.W1.mean():.4f} cpu={cpu:.1f}s "
                      f"load={os.getloadavg()[0]:.1f}", flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows))
    summarise(rows)


def summarise(rows, markdown=False):
    """Mean W1 per config and dataset (over held-out times and seeds), its ratio to ``otcfm`` and to ``default``.

    A row's latest measurement wins when a (config, dataset, held-out, seed) fold appears twice (runs are
    deterministic per seed, so repeats agree).
    """
    import pandas as pd

    df = pd.DataFrame(rows).drop_duplicates(["config", "dataset", "heldout", "seed"], keep="last")
    per = df.groupby(["config", "dataset"])["W1"].mean().unstack("dataset")
    if "otcfm" not in per.index:
        print(per.round(4).to_markdown())
        return
    seeds = df.groupby(["config", "dataset"])["seed"].nunique().unstack("dataset")
    ratio = per / per.loc["otcfm"]
    mean_ratio = ratio.mean(1)
    if not markdown:
        out = per.round(4).astype(str) + " (" + ratio[per.columns].round(3).astype(str) + ")"
        out["mean ratio"] = mean_ratio.round(3)
        print(out.sort_values("mean ratio").to_markdown())
        return
    cols = [c for c in ("eb", "ipsc", "hema") if c in per.columns]
    names = {"eb": "EB 5-d", "ipsc": "iPSC", "hema": "hematopoiesis"}
    head = ["config", "change"] + [f"{names[c]}: W1 (/ otcfm) [seeds]" for c in cols] + ["mean / otcfm",
                                                                                         "mean / default"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cfg in mean_ratio.sort_values().index:
        change = "–" if cfg in ("default", "otcfm") else ", ".join(f"`{k}={v!r}`" for k, v in CONFIGS[cfg].items())
        if cfg == "otcfm":
            change = "`otcfm` (defaults)"
        cells = [f"{per.loc[cfg, c]:.4f} ({ratio.loc[cfg, c]:.3f}) [{int(seeds.loc[cfg, c])}]"
                 if pd.notna(per.loc[cfg, c]) else "–" for c in cols]
        rel = f"{mean_ratio[cfg] / mean_ratio['default']:.3f}" if "default" in mean_ratio else "–"
        print(f"| `{cfg}` | {change} | " + " | ".join(cells) + f" | {mean_ratio[cfg]:.3f} | {rel} |")


if __name__ == "__main__":
    main()
