"""CPU cost of every method's default fit, side by side in one process, with leave-one-out W1 (issue 15).

For each data set and method (defaults; only ``random_state`` varies):

* ``full``: one fit on every time point (``trajectory_n_grid=0``); CPU seconds of the process (all threads, so the
  background OT solves and BLAS threads count) and wall seconds;
* ``loo``: leave-one-out at one held-out time per data set (``sctraj.tl.leave_one_out``), W1 of the prediction
  (weighted by the predicted mass for growth-aware methods), for each seed, with the CPU seconds of that fit.

Data sets: ``hema`` (bundled hematopoiesis, ``X_emb`` 2-d, held-out day 4), ``eb5`` (bundled EB subset, first 5 PCs,
standardised by ``fit_flow``, held-out day 13.5), ``eb50`` (the same with 50 PCs). Methods run one after the other in
one process after a warm-up fit, so the ratios to ``otcfm`` compare like with like on a loaded machine; ``uptime``'s
load average is stored with every row. Rows are appended to ``benchmarks/results/speed_raw.json`` (keyed by
``--label``, data set, method, kind and seed; a rerun replaces its rows), and ``--report`` prints the tables.

Run from the repository root::

    nice -n 5 python benchmarks/bench_speed.py --datasets hema eb5 eb50 --seeds 0 1 2 --label after
    python benchmarks/bench_speed.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RAW = HERE / "results" / "speed_raw.json"
METHODS = ("icfm", "otcfm", "sbcfm", "vgfm", "metricfm")
DATA = {  # name: (loader, time key, use_rep, n_dims, held-out time)
    "hema": ("hematopoiesis", "day", "X_emb", None, 4.0),
    "eb5": ("eb", "day", "X_pca", 5, 13.5),
    "eb50": ("eb", "day", "X_pca", 50, 13.5),
}


def load(name: str):
    import sctraj

    loader, key, rep, n_dims, held = DATA[name]
    return getattr(sctraj.datasets, loader)(), key, rep, n_dims, held


def one(name: str, method: str, kind: str, seed: int) -> dict:
    import sctraj

    a, key, rep, n_dims, held = load(name)
    c0, w0 = time.process_time(), time.perf_counter()
    row = {"dataset": name, "method": method, "kind": kind, "seed": seed, "load": os.getloadavg()[0]}
    if kind == "full":
        m = sctraj.tl.fit_flow(a, key, method=method, use_rep=rep, n_dims=n_dims, random_state=seed, progress=False,
                               trajectory_n_grid=0)
        rec = a.uns["sctraj"]
        if "mass" in rec:
            err = np.asarray(rec["mass"]["relative_error"], float)[1:]
            row["mass_error"] = float(err.mean())
        row["fit_seconds"] = float(m.setup["fit_seconds"])
    else:
        df = sctraj.tl.leave_one_out(a, key, methods=[method], use_rep=rep, n_dims=n_dims, heldout=held,
                                     seeds=(seed,), references=False, progress=False)
        r = df[df["method"] == method].iloc[0]
        row["W1"] = float(r["W1"])
        row["fit_seconds"] = float(r["fit_seconds"])
    row["cpu_seconds"] = time.process_time() - c0
    row["wall_seconds"] = time.perf_counter() - w0
    return row


def store(rows: list[dict], label: str) -> None:
    old = json.loads(RAW.read_text()) if RAW.exists() else []
    keys = {(label, r["dataset"], r["method"], r["kind"], r["seed"]) for r in rows}
    old = [r for r in old if (r["label"], r["dataset"], r["method"], r["kind"], r["seed"]) not in keys]
    RAW.parent.mkdir(exist_ok=True)
    RAW.write_text(json.dumps(old + [dict(r, label=label) for r in rows], indent=1) + "\n")


def report(labels: list[str] | None) -> str:
    rows = json.loads(RAW.read_text())
    labels = labels or list(dict.fromkeys(r["label"] for r in rows))
    out = []
    for label in labels:
        rs = [r for r in rows if r["label"] == label]
        out += [f"### {label}", "",
                "| data | method | CPU s, full fit | ratio to otcfm | CPU s, LOO fit (mean) | ratio to otcfm | "
                "LOO W1 (mean, sd, seeds) | mass error, full fit | load |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for d in DATA:
            ref_full = [r["cpu_seconds"] for r in rs if r["dataset"] == d and r["method"] == "otcfm"
                        and r["kind"] == "full"]
            ref_loo = [r["cpu_seconds"] for r in rs if r["dataset"] == d and r["method"] == "otcfm"
                       and r["kind"] == "loo"]
            for m in METHODS:
                full = [r for r in rs if r["dataset"] == d and r["method"] == m and r["kind"] == "full"]
                loo = [r for r in rs if r["dataset"] == d and r["method"] == m and r["kind"] == "loo"]
                if not full and not loo:
                    continue
                cf = np.mean([r["cpu_seconds"] for r in full]) if full else np.nan
                cl = np.mean([r["cpu_seconds"] for r in loo]) if loo else np.nan
                w = np.array([r["W1"] for r in loo])
                me = [r["mass_error"] for r in full if "mass_error" in r]
                loads = [r["load"] for r in full + loo]
                out.append("| " + " | ".join([
                    d, m, f"{cf:.1f}" if full else "-", f"{cf / np.mean(ref_full):.2f}" if ref_full and full else "-",
                    f"{cl:.1f}" if loo else "-", f"{cl / np.mean(ref_loo):.2f}" if ref_loo and loo else "-",
                    f"{w.mean():.4f} ({w.std(ddof=1) if len(w) > 1 else 0:.4f}, {len(w)})" if len(w) else "-",
                    f"{np.mean(me):.3f}" if me else "-", f"{min(loads):.0f}-{max(loads):.0f}",
                ]) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=["full", "loo"], choices=["full", "loo"])
    ap.add_argument("--label", default="after")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--labels", nargs="+", default=None)
    args = ap.parse_args()
    if args.report:
        print(report(args.labels))
        return
    import sctraj

    warnings.filterwarnings("ignore")
    sctraj.settings.verbosity = "error"
    a = sctraj.datasets.eb()  # warm-up: imports and first-call costs stay out of the timed fits
    sctraj.tl.fit_flow(a, "day", method="otcfm", use_rep="X_pca", n_dims=5, n_steps=20, progress=False,
                       trajectory_n_grid=0)
    for d in args.datasets:
        for kind in args.kinds:
            for seed in (args.seeds if kind == "loo" else args.seeds[:1]):
                rows = []
                for m in args.methods:  # methods side by side for each (data, kind, seed)
                    rows.append(one(d, m, kind, seed))
                    print(json.dumps(rows[-1]), flush=True)
                store(rows, args.label)


if __name__ == "__main__":
    main()
