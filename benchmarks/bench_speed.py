"""CPU cost of every method's default fit, side by side in one process, with leave-one-out W1 (issue 15).

For each data set and method (defaults; only ``random_state`` varies):

* ``full``: one fit on every time point (``trajectory_n_grid=0``); CPU seconds of the process (all threads, so the
  background OT solves and BLAS threads count) and wall seconds;
* ``loo``: leave-one-out at one held-out time per data set (``sctraj.tl.leave_one_out``), W1 of the prediction
  (weighted by the predicted mass for growth-aware methods), for each seed, with the CPU seconds of that fit. With
  ``--loo-mass`` growth-aware methods are instead fitted without the held-out time by ``fit_flow`` itself and scored
  as ``leave_one_out`` scores them (the same fit, push and W1), so that the fit's mass report also gives the
  relative error of the predicted total mass at the fitted times (``loo_mass_error``).

``--variant NAME=METHOD:JSON`` adds a method run with other settings under its own name (e.g. the previous defaults,
``vgfm-old=vgfm:{"ode_steps": 10}``), side by side with the others in the same process.

Data sets: ``hema`` (bundled hematopoiesis, ``X_emb`` 2-d, held-out day 4), ``eb5`` (bundled EB subset, first 5 PCs,
standardised by ``fit_flow``, held-out day 13.5), ``eb50`` (the same with 50 PCs). Methods run one after the other in
one process after a warm-up fit, so the ratios to ``otcfm`` compare like with like on a loaded machine; ``uptime``'s
load average is stored with every row. Rows are appended to ``benchmarks/results/speed_raw.json`` (keyed by
``--label``, data set, method, kind and seed; a rerun replaces its rows), and ``--report`` prints the tables.

Run from the repository root::

    nice -n 5 python benchmarks/bench_speed.py --datasets hema eb5 eb50 --seeds 0 1 2 --label after
    nice -n 5 python benchmarks/bench_speed.py --datasets hema eb5 --methods vgfm otcfm --loo-mass \
        --variant 'vgfm-old=vgfm:{"ode_steps": 10}' --label vgfm
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


def loo_with_mass(a, key: str, method: str, rep: str, n_dims, held: float, seed: int, params: dict) -> dict:
    """``leave_one_out``'s fit and score for one held-out time, keeping the fit's mass report."""
    import sctraj
    from sctraj._validation import get_rep, time_mask, time_tolerance, time_values

    t = time_values(a, key)
    times = np.unique(t)
    prev = float(times[np.flatnonzero(np.isclose(times, held))[0] - 1])
    X = get_rep(a, rep, n_dims, dtype=None)
    X_true = X[time_mask(t, held, time_tolerance(times))]
    m = sctraj.tl.fit_flow(a, key, method=method, use_rep=rep, n_dims=n_dims, exclude_times=[held],
                           random_state=seed, progress=False, trajectory_n_grid=0, **params)
    out = {"fit_seconds": float(m.setup["fit_seconds"])}
    out.update({f"loo_{k}": v for k, v in mass_errors(a.uns["sctraj"]).items()})
    pred = sctraj.tl.predict(a, m, source_time=prev, target_time=held, n_steps=100)
    w = pred.obs["weight"].to_numpy() if m.has_growth else None
    P = np.asarray(pred.obsm[rep])[:, : m.dim]
    out["W1"] = float(sctraj.tl.evaluate(P, X_true, weights=w, max_cells=10_000, random_state=seed)["W1"])
    return out


def mass_errors(rec: dict) -> dict:
    """Mean relative and signed error of the predicted total mass after the first time point (growth methods)."""
    if "mass" not in rec:
        return {}
    mass = rec["mass"]
    signed = np.asarray(mass["predicted_at_observed"], float) / np.asarray(mass["observed"], float) - 1
    return {"mass_error": float(np.asarray(mass["relative_error"], float)[1:].mean()),
            "mass_signed": float(signed[1:].mean())}


def one(name: str, method: str, kind: str, seed: int, variants: dict | None = None, loo_mass: bool = False) -> dict:
    import sctraj

    a, key, rep, n_dims, held = load(name)
    label, params = method, {}
    if variants and method in variants:
        method, params = variants[label]
    c0, w0 = time.process_time(), time.perf_counter()
    row = {"dataset": name, "method": label, "kind": kind, "seed": seed, "load": os.getloadavg()[0]}
    if params:
        row["params"] = params
    if kind == "full":
        m = sctraj.tl.fit_flow(a, key, method=method, use_rep=rep, n_dims=n_dims, random_state=seed, progress=False,
                               trajectory_n_grid=0, **params)
        row.update(mass_errors(a.uns["sctraj"]))
        row["fit_seconds"] = float(m.setup["fit_seconds"])
    elif loo_mass and sctraj.models.get_method(method).has_growth:
        row.update(loo_with_mass(a, key, method, rep, n_dims, held, seed, params))
    else:
        df = sctraj.tl.leave_one_out(a, key, methods=[method], use_rep=rep, n_dims=n_dims, heldout=held,
                                     seeds=(seed,), references=False, progress=False, **params)
        r = df[df["method"] == method].iloc[0]
        row["W1"] = float(r["W1"])
        row["fit_seconds"] = float(r["fit_seconds"])
    row["cpu_seconds"] = time.process_time() - c0
    row["wall_seconds"] = time.perf_counter() - w0
    return row


def store(rows: list[dict], label: str, raw: Path = RAW) -> None:
    old = json.loads(raw.read_text()) if raw.exists() else []
    keys = {(label, r["dataset"], r["method"], r["kind"], r["seed"]) for r in rows}
    old = [r for r in old if (r["label"], r["dataset"], r["method"], r["kind"], r["seed"]) not in keys]
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps(old + [dict(r, label=label) for r in rows], indent=1) + "\n")


def report(labels: list[str] | None, raw: Path = RAW) -> str:
    rows = json.loads(raw.read_text())
    labels = labels or list(dict.fromkeys(r["label"] for r in rows))
    out = []
    for label in labels:
        rs = [r for r in rows if r["label"] == label]
        out += [f"### {label}", "",
                "| data | method | CPU s, full fit | ratio to otcfm | CPU s, LOO fit (mean) | ratio to otcfm | "
                "LOO W1 (mean, sd, seeds) | mass error, LOO | mass error, full fit | load |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for d in DATA:
            ref_full = [r["cpu_seconds"] for r in rs if r["dataset"] == d and r["method"] == "otcfm"
                        and r["kind"] == "full"]
            ref_loo = [r["cpu_seconds"] for r in rs if r["dataset"] == d and r["method"] == "otcfm"
                       and r["kind"] == "loo"]
            names = list(dict.fromkeys([*METHODS, *(r["method"] for r in rs)]))
            for m in names:
                full = [r for r in rs if r["dataset"] == d and r["method"] == m and r["kind"] == "full"]
                loo = [r for r in rs if r["dataset"] == d and r["method"] == m and r["kind"] == "loo"]
                if not full and not loo:
                    continue
                cf = np.mean([r["cpu_seconds"] for r in full]) if full else np.nan
                cl = np.mean([r["cpu_seconds"] for r in loo]) if loo else np.nan
                w = np.array([r["W1"] for r in loo])
                me = [r["mass_error"] for r in full if "mass_error" in r]
                ml = [r["loo_mass_error"] for r in loo if "loo_mass_error" in r]
                loads = [r["load"] for r in full + loo]
                out.append("| " + " | ".join([
                    d, m, f"{cf:.1f}" if full else "-", f"{cf / np.mean(ref_full):.2f}" if ref_full and full else "-",
                    f"{cl:.1f}" if loo else "-", f"{cl / np.mean(ref_loo):.2f}" if ref_loo and loo else "-",
                    f"{w.mean():.4f} ({w.std(ddof=1) if len(w) > 1 else 0:.4f}, {len(w)})" if len(w) else "-",
                    f"{np.mean(ml):.4f}" if ml else "-", f"{np.mean(me):.4f}" if me else "-",
                    f"{min(loads):.1f}-{max(loads):.1f}",
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
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:JSON",
                    help="a method with other settings, run under its own name beside the others")
    ap.add_argument("--loo-mass", action="store_true",
                    help="growth-aware methods: also record the leave-one-out fit's mass error")
    ap.add_argument("--full-seeds", type=int, nargs="+", default=None,
                    help="seeds of the full fits (default: the first of --seeds)")
    ap.add_argument("--raw", type=Path, default=RAW, help="JSON file of the raw rows (read by --report)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--labels", nargs="+", default=None)
    args = ap.parse_args()
    if args.report:
        print(report(args.labels, args.raw))
        return
    import sctraj

    variants = {}
    for v in args.variant:
        name, _, spec = v.partition("=")
        method, _, js = spec.partition(":")
        variants[name] = (method, json.loads(js) if js else {})
    methods = list(args.methods) + [n for n in variants if n not in args.methods]
    warnings.filterwarnings("ignore")
    sctraj.settings.verbosity = "error"
    a = sctraj.datasets.eb()  # warm-up: imports and first-call costs stay out of the timed fits
    sctraj.tl.fit_flow(a, "day", method="otcfm", use_rep="X_pca", n_dims=5, n_steps=20, progress=False,
                       trajectory_n_grid=0)
    for d in args.datasets:
        for kind in args.kinds:
            for seed in (args.seeds if kind == "loo" else (args.full_seeds or args.seeds[:1])):
                rows = []
                for m in methods:  # methods side by side for each (data, kind, seed)
                    rows.append(one(d, m, kind, seed, variants, args.loo_mass))
                    print(json.dumps(rows[-1]), flush=True)
                store(rows, args.label, args.raw)


if __name__ == "__main__":
    main()
