"""Scale: fit_flow on 1,000,000 cells x 50 dims (4 time points) - peak memory and time per step (issue 7).

Each (method, n_cells) runs in a fresh process so that its peak resident memory (``ru_maxrss``) is its own; the
AnnData (X and the ``X_emb`` embedding, both float32) is built inside it and counted. ``n_steps`` is small: the
point is that the time per step does not grow with the number of cells (pairs come from block plans of at most
``ot_block_size`` cells per side; nothing builds an n x n matrix) and that memory stays a few copies of the data.
``trajectory_n_grid=0``: the per-cell velocities are still computed for every cell, in chunks. Time per step is
the marginal cost: ``fit_flow`` runs with ``steps`` and ``3 * steps`` steps and the difference of the fit times is
divided by ``2 * steps``, so one-time costs (copying the cells, the first OT plans) cancel.

Run: ``python benchmarks/bench_scale.py [--cells 100000 1000000] [--steps 100] [--methods ...] [--report]``
(each row is stored in ``benchmarks/_work``; the table is written from every stored row).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from _common import WORK, table, write_result


def make(n: int, d: int = 50, n_times: int = 4, seed: int = 0):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = np.empty((n, d), np.float32)
    t = np.repeat(np.arange(n_times, dtype=float), -(-n // n_times))[:n]
    centres = rng.normal(size=(3, d)).astype(np.float32) * 3
    for s in range(0, n, 100_000):  # chunks: no float64 n x d temporary
        m = min(100_000, n - s)
        branch = rng.integers(3, size=m)
        tt = t[s : s + m, None].astype(np.float32) / (n_times - 1)
        X[s : s + m] = tt * centres[branch] + rng.normal(size=(m, d)).astype(np.float32)
    # population labels for metafm: 64 populations, each observed at every time point
    pop = pd.Categorical(rng.integers(64, size=n).astype(str))
    a = ad.AnnData(X, obs=pd.DataFrame({"time": t, "population": pop}, index=[f"c{i}" for i in range(n)]))
    a.obsm["X_emb"] = X  # same buffer; the fit copies what it needs
    return a


def one(method: str, n: int, steps: int) -> dict:
    import ot  # noqa: F401 - imports are one-time costs, not part of the fit
    import torch

    import sctraj
    import sctraj.models  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)  # imports torch._dynamo once
    a = make(n)
    kw = {"population_key": "population"} if method == "metafm" else {}
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fits = []
    for k in (1, 3):  # the marginal cost of 2 * steps extra steps: one-time O(n) set-up cancels out
        t0 = time.perf_counter()
        model = sctraj.tl.fit_flow(a, "time", method=method, use_rep="X_emb", n_steps=k * steps, progress=False,
                                   trajectory_n_grid=0, **kw)
        total = time.perf_counter() - t0
        fits.append(float(model.setup["fit_seconds"]))
    fit = fits[-1]
    return {"method": method, "cells": n, "steps": 3 * steps, "ms/step": 1e3 * (fits[1] - fits[0]) / (2 * steps),
            "fit s": fit, "fit_flow total s": total, "outputs s": total - fit,
            "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "data RSS GB": rss_data / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=["icfm", "otcfm", "sbcfm"])
    ap.add_argument("--report", action="store_true", help="only write the table from the stored rows")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "N", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    for m in [] if args.report else args.methods:
        for n in args.cells:
            out = subprocess.run([sys.executable, __file__, "--one", m, str(n), str(args.steps)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
            WORK.mkdir(exist_ok=True)
            (WORK / f"scale_{m}_{n}.json").write_text(json.dumps(r))
            print(r, flush=True)
    # the table holds every stored row (rows of several invocations, e.g. one method re-run after a change)
    order = ["icfm", "otcfm", "sbcfm", "vgfm", "metricfm", "metafm"]
    rows = [json.loads(p.read_text()) for p in WORK.glob("scale_*_*.json")]
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["cells"]))
    for r in rows:  # time per step relative to the smallest size, same method
        valid = [x for x in rows if x["method"] == r["method"] and x["ms/step"] > 0] or [r]
        ref = min(valid, key=lambda x: x["cells"])  # the smallest size with a measurable marginal
        r["ms/step vs smallest"] = r["ms/step"] / ref["ms/step"]
    for r in rows:  # a marginal below zero: the run is too short, one-time plan solves dominate both fits
        if r["ms/step"] <= 0 or r["ms/step vs smallest"] <= 0:
            r["ms/step"] = r["ms/step vs smallest"] = "n/a (too few steps)"
    cols = ["method", "cells", "steps", "ms/step", "ms/step vs smallest", "fit s", "outputs s", "peak RSS GB",
            "data RSS GB"]
    f = dict.fromkeys(cols[3:], ".2f")
    write_result("scale", "fit_flow at 1,000,000 cells x 50 dims, 4 time points (issue 7)", table(rows, cols, f),
                 "Defaults of each method except `n_steps` ('steps' = the larger run); `trajectory_n_grid=0`. 'data RSS GB' is the peak after "
                 "building the AnnData (the user's data), 'peak RSS GB' the process peak after fit_flow wrote its "
                 "outputs. Wall times on a shared machine; compare rows of one run.")


if __name__ == "__main__":
    main()
