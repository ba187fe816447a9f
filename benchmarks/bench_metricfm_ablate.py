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

# rows measured with code before the fused LAND sum (commit 993d074), which changes fits at the rounding level only,
# are marked in the report
OLD_CODES = {"022dfd8", "c99d5c5"}

# Every configuration states ``geopath_time`` explicitly: the default changed from ``True`` ("previous", the defaults
# until 2026-12-02) to ``False`` ("default"), and rows are compared with the configuration they change one thing of.
_T = {"geopath_time": True}
CONFIGS: dict[str, dict] = {
    "default": {},  # the current defaults (geopath_time=False)
    "previous": dict(_T),  # the defaults before 2026-12-02
    # one change each from "previous":
    # LAND bandwidth rule
    "gamma0.125": {**_T, "land_gamma": 0.125},
    "gamma0.2": {**_T, "land_gamma": 0.2},
    "scott0.4": {**_T, "land_gamma_scale": 0.4},
    "scott1.0": {**_T, "land_gamma_scale": 1.0},
    # exponent and epsilon
    "alpha2": {**_T, "metric_alpha": 2.0},
    "eps1e-2": {**_T, "metric_eps": 1e-2},
    "eps1e-1": {**_T, "metric_eps": 1e-1},
    "alpha2_eps1e-2": {**_T, "metric_alpha": 2.0, "metric_eps": 1e-2},
    # long intervals: the metric from every fitted snapshot
    "cells_all": {**_T, "metric_cells": "all"},
    # stage 1: normalisation, steps, early stopping
    "norm_global": {**_T, "geopath_normalise": "global"},
    "early_stop": {**_T, "geopath_val_fraction": 0.1},
    "geo_steps_0": {**_T, "geopath_steps": 0},
    "geo_lr1e-4": {**_T, "geopath_lr": 1e-4},
    # path network
    "geo_width256": {**_T, "geopath_width": 256},
    "geo_notime": {"geopath_time": False},  # = "default"
    # coupling
    "metric_ot": {**_T, "coupling": "metric_ot"},
    # sigma
    "sigma0.05": {**_T, "sigma": 0.05},
    "sigma0.2": {**_T, "sigma": 0.2},
    # cost: learned-path samples shared by two flow-matching steps, fewer LAND landmarks
    "path_reuse2": {**_T, "path_reuse": 2},
    "landmarks512": {**_T, "land_max_points": 512},
    "fast": {**_T, "path_reuse": 2, "land_max_points": 512},
    # one or more changes from "geo_notime" (the current defaults):
    "notime_eps1e-2": {"geopath_time": False, "metric_eps": 1e-2},
    "notime_reuse2": {"geopath_time": False, "path_reuse": 2},
    "notime_reuse2_gb128": {"geopath_time": False, "path_reuse": 2, "geopath_batch_size": 128},
    "notime_lm512": {"geopath_time": False, "land_max_points": 512},
    "notime_fast": {"geopath_time": False, "path_reuse": 2, "land_max_points": 512},
    "notime_fast_g250": {"geopath_time": False, "path_reuse": 2, "land_max_points": 512, "geopath_steps": 250},
    # issue 15, stage-1 cost (one change each from "default", measured with the exact speed-ups of 2026-12-02):
    # a cosine learning-rate decay in stage 1, and fewer / smaller stage-1 steps with it
    "geo_cos": {"geopath_lr_schedule": "cosine"},
    "geo_cos_g250": {"geopath_lr_schedule": "cosine", "geopath_steps": 250},
    "geo_g250": {"geopath_steps": 250},
    "geo_cos_g250_gb128": {"geopath_lr_schedule": "cosine", "geopath_steps": 250, "geopath_batch_size": 128},
    # LAND anchors: cells pooled into the landmarks (centroid, count, variance) instead of a rescaled subsample
    "land_pool1024": {"land_pool": True},
    "land_pool768": {"land_pool": True, "land_max_points": 768},
    "land_pool512": {"land_pool": True, "land_max_points": 512},
    "land_sub512": {"land_max_points": 512},
    # the reference's coupling: a fresh 128 x 128 minibatch OT plan every step (both stages)
    "land_mbot128": {"ot_block_size": 128, "ot_refresh": 1, "ot_full_size": 128},
    # stage-1 gradient-norm clipping against its heavy-tailed loss (hematopoiesis)
    "land_clip1": {"geopath_grad_clip": 1.0},
    "land_clip0.1": {"geopath_grad_clip": 0.1},
    # measured with options that were removed again for lack of effect (their rows in metricfm_ablate_s23_zero_*.json
    # and _ema_*.json): the path network's output layer started at zero, "land_zero" ({"geopath_zero_init": True},
    # commit 392ddfc), and Polyak averaging of the stage-1 iterates, "land_ema0.99" ({"geopath_ema": 0.99}, commit
    # 1dd978c)
    # issue 15 item 5: early stopping as the reference does it, on the current defaults (no time input)
    "land_es": {"geopath_val_fraction": 0.1},
    # stage 2: the field with the lowest held-out flow-matching loss (10 % of the cells held out), and a cosine decay
    "land_fval": {"flow_val_fraction": 0.1},
    "land_es_fval": {"geopath_val_fraction": 0.1, "flow_val_fraction": 0.1},
    "land_cos": {"lr_schedule": "cosine"},
    # stage 1 further converged: twice the steps, a larger learning rate, twice the steps at half the batch (same cost)
    "land_g1000": {"geopath_steps": 1000},
    "land_glr2e-3": {"geopath_lr": 2e-3},
    "land_g1000_gb128": {"geopath_steps": 1000, "geopath_batch_size": 128},
    # the reference builds its metric from equally many cells of each snapshot: snapshot-balanced LAND weights,
    # "land_bal" ({"land_balance": True}, commit 68c35f7; rows in metricfm_ablate_s24_bal_hema.json), removed again
    # four times the stage-1 steps at a quarter of the batch (same number of metric evaluations)
    "land_g2000_gb64": {"geopath_steps": 2000, "geopath_batch_size": 64},
    # the reference's whole stage 1 (its lead over straight paths on hematopoiesis comes from that stage, section 4):
    # Adam 1e-4, batch 128, validated every 10 steps (one of its epochs there), patience 5, best state kept; with its
    # metric and time input ("ref_stage1") and on sctraj's metric without the time input ("ref_es_lr1e-4")
    "ref_stage1": {**_T, "land_gamma": 0.125, "metric_alpha": 2.0, "metric_eps": 1e-3, "geopath_normalise": "global",
                   "geopath_lr": 1e-4, "geopath_batch_size": 128, "geopath_val_fraction": 0.1,
                   "geopath_eval_every": 10, "geopath_patience": 5, "geopath_steps": 2000},
    "ref_stage1_notime": {"land_gamma": 0.125, "metric_alpha": 2.0, "metric_eps": 1e-3, "geopath_normalise": "global",
                          "geopath_lr": 1e-4, "geopath_batch_size": 128, "geopath_val_fraction": 0.1,
                          "geopath_eval_every": 10, "geopath_patience": 5, "geopath_steps": 2000},
    "ref_es_lr1e-4": {"geopath_lr": 1e-4, "geopath_batch_size": 128, "geopath_val_fraction": 0.1,
                      "geopath_eval_every": 10, "geopath_patience": 5, "geopath_steps": 2000},
    # the reference's EB configuration, as far as it maps onto sctraj
    "reference_eb": {**_T, "land_gamma": 0.125, "metric_alpha": 2.0, "metric_eps": 1e-3,
                     "geopath_normalise": "global", "geopath_lr": 1e-4},
}


def base_of(config: str) -> str:
    """The configuration a row changes one thing of (for the ratio column)."""
    if config in ("otcfm", "previous", "default", "geo_notime"):
        return "previous"
    if config.startswith(("geo_cos", "geo_g250", "land_")):
        return "default"
    return "previous" if CONFIGS[config].get("geopath_time", False) else "geo_notime"



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
    import subprocess

    import sctraj

    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
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
                    rows.append({"config": cname, "dataset": name, "heldout": float(r.heldout), "seed": s, "code": code,
                                 "W1": float(r.W1), "fit_s": float(r.fit_seconds), "cpu_s_total": cpu,
                                 "n_steps": int(r.n_train_steps), "load": os.getloadavg()[0]})
                print(f"{cname:>16} {name:>5} seed={s} W1={df.W1.mean():.4f} cpu={cpu:.1f}s "
                      f"load={os.getloadavg()[0]:.1f}", flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows))
    summarise(rows)


def summarise(rows, markdown=False):
    """Mean W1 per config and dataset (over held-out times and seeds) and its ratios to ``otcfm`` and to the
    configuration it changes (``base_of``), each ratio on the folds (held-out time, seed) both have.

    A fold measured twice keeps its latest row. Rows whose ``code`` is not ``NEW_CODE`` are marked with a dagger.
    """
    import pandas as pd

    df = pd.DataFrame(rows).drop_duplicates(["config", "dataset", "heldout", "seed"], keep="last")
    if "code" not in df:
        df["code"] = ""
    w = df.set_index(["config", "dataset", "heldout", "seed"])["W1"]
    old = df[df.code.isin(OLD_CODES)].groupby(["config", "dataset"]).size()

    def ratio(cfg, other, ds):
        a = w.xs((cfg, ds), level=("config", "dataset"))
        if (other, ds) not in w.index.droplevel(["heldout", "seed"]):
            return float("nan")
        b = w.xs((other, ds), level=("config", "dataset"))
        common = a.index.intersection(b.index)
        return float(a[common].mean() / b[common].mean()) if len(common) else float("nan")

    configs = list(dict.fromkeys(df.config))
    cols = [c for c in ("eb", "ipsc", "hema") if c in set(df.dataset)]
    names = {"eb": "EB 5-d", "ipsc": "iPSC", "hema": "hematopoiesis"}
    table = []
    for cfg in configs:
        cells, r_ot, r_base = [], [], []
        for ds in cols:
            sub = df[(df.config == cfg) & (df.dataset == ds)]
            if sub.empty:
                cells.append("–")
                continue
            ro, rb = ratio(cfg, "otcfm", ds), ratio(cfg, base_of(cfg), ds)
            r_ot.append(ro)
            r_base.append(rb)
            mark = "†" if (cfg, ds) in old.index else ""
            cells.append(f"{sub.W1.mean():.4f}{mark} ({ro:.3f} / {rb:.3f}) [{sub.seed.nunique()}]")
        table.append((cfg, cells, float(np.nanmean(r_ot)), float(np.nanmean(r_base))))
    table.sort(key=lambda r: r[2])
    if not markdown:
        for cfg, cells, ro, rb in table:
            print(f"{cfg:>22} " + " | ".join(cells) + f" | {ro:.3f} | {rb:.3f}")
        return
    head = ["config", "change", "base"] + [f"{names[c]}: W1 (/ otcfm / base) [seeds]" for c in cols] + [
        "mean / otcfm", "mean / base"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cfg, cells, ro, rb in table:
        base = CONFIGS.get(base_of(cfg), {})
        params = {k: v for k, v in CONFIGS.get(cfg, {}).items() if base.get(k, "unset") != v}  # what differs from base
        change = "`otcfm` (defaults)" if cfg == "otcfm" else (
            ", ".join(f"`{k}={v!r}`" for k, v in params.items()) or "–")
        print(f"| `{cfg}` | {change} | `{base_of(cfg)}` | " + " | ".join(cells) + f" | {ro:.3f} | {rb:.3f} |")


if __name__ == "__main__":
    main()
