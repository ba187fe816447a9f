"""SB-CFM ([SF]2M): its cost next to OT-CFM, and the choice of the default ``sigma``.

Two parts (``--part``), each appending raw rows to ``benchmarks/results/sbcfm_raw_<part>_<label>.json`` and
rendering a table from all of them:

* ``speed`` -> ``speed_sbcfm.md``: CPU seconds of one default fit of ``otcfm`` and ``sbcfm`` on every time point
  (process CPU time, all threads, so the background OT threads count) and leave-one-out W1 (with that fit's CPU
  seconds; ``sbcfm`` by its ODE and by its SDE), the two methods one after the other in one process, on
  hematopoiesis (2-d, held-out day 4), EB 5-d and EB 50-d (first 5 / 50 PCs as they are, held-out day 13.5), seeds
  0-2: the data sets and protocol of ``bench_speed.py``. Each method first fits once on a few cells, unmeasured, so
  that no measured fit pays for importing torch's and POT's modules. Run it once on the old code (``--label
  before-<commit>``, ``PYTHONPATH`` at a checkout of it) and once on the new (``--label after``), e.g.
  ``OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_sbcfm.py --part speed --label after``.
* ``sigma`` -> ``sbcfm_sigma.md``: leave-one-out W1 of ``sbcfm`` at several ``sigma`` (ODE and SDE predictions of the
  same fit) and of ``otcfm``, on EB 5-d (held-out 7.5, 13.5, 19.5), hematopoiesis (4) and iPSC (2, 4, 6), seeds 0-2.
  The default is the sigma with the lowest mean of W1 / W1(otcfm, same data, time and seed).

Usage::

    python benchmarks/bench_sbcfm.py --part speed --label after --seeds 0 1 2
    python benchmarks/bench_sbcfm.py --part sigma --sigmas 0.1 0.25 0.5 1.0 --seeds 0 1 2
    python benchmarks/bench_sbcfm.py --render
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, today  # noqa: E402

RAW_GLOB = "sbcfm_raw_*.json"
RAW = RESULTS / "sbcfm_raw_unnamed.json"  # set per run in main(): one file per part and label


SPEED_NOTES = """\
- The runs were cut short by the session's deadline under a load average of 27-43 on 2 cores: fewer than the
  3 seeds the issue asks for (the `seeds` column), so these rows are indications, not the acceptance measurement.
  CPU seconds are process CPU time (all threads), which is what the ratio compares; wall time measured the load.
- `after` = sbcfm with the score head (one extra output head, the score loss) and the new entropic solver chain
  (`sctraj.engine.couplings.entropic_plan`): on hematopoiesis (block plans) sbcfm now costs about what otcfm does
  (1.06x on full fits, 2 seeds; was 1.35x here, 1.8x in issue 15's full fits). On EB 5-d (one full-data plan per interval, solved once) it
  was 1.5x before and 1.7x after on the one seed measured: there the plain Sinkhorn attempts at reg = 0.02 do not
  converge and the fall-back to epsilon scaling pays for them (a 550 x 550 EB plan took 0.52 CPU s against 0.35 with
  epsilon scaling alone). Not fixed in this session: capping the plain attempts' iterations, or going straight to
  epsilon scaling when the first plain attempt stalls, is the next step. EB 50-d: 1.9x after vs 1.8x before (1 seed).
- W1: the ODE's W1 is unchanged by the score head (hematopoiesis 0.3896 after vs 0.3881 before, same seed); the SDE's
  W1 (`stochastic=True`) is within seed noise of the ODE's at the default sigma = 0.1."""

SIGMA_NOTES = """\
- Complete: EB 5-d (held-out 13.5), hematopoiesis (4) and iPSC (4), sigma in {0.1, 0.25, 0.5, 1}, seeds 0-2, every
  sbcfm fit next to an otcfm fit of the same fold and seed: 9 folds x 5 fits, on 2026-12-02 08:17-08:19 UTC on a quiet
  machine (load average 2-4), one process per data set with one thread each (`OMP_NUM_THREADS=1 python
  benchmarks/bench_sbcfm.py --part sigma --label quiet --datasets eb5 --heldout 13.5 --seeds 0 1 2`, the same with
  `ipsc --heldout 4` and `hema --heldout 4`), main `ad420bd`. They replace the earlier, partial rows measured under a
  load of 28-43 (the table keeps the latest row of every fold; the `EB 5-d (standardised PCs)` denominator is a
  leftover of an earlier run with no sbcfm row beside it).
- Decision, by the mean over the 9 folds: the default stays `sigma = 0.1`. It has the best mean SDE ratio (1.005;
  0.25: 1.008, 0.5: 1.025, 1: 1.034), and its ODE ratio (1.008) is within 1% of the best (sigma = 1, 0.998).
  sigma = 1 helps hematopoiesis (0.93x by the ODE, 0.82x by the SDE) and iPSC's ODE (1.003 vs 1.034), but its SDE is
  1.15x on EB and 1.14x on iPSC and its EB ODE 1.06x; a user who picks the Schroedinger bridge for its stochastic
  dynamics samples the SDE, so the SDE mean decides.
- At sigma = 0.1 on standardised data the entropic plan (reg 0.02) is close to the exact OT plan and the SDE's noise
  is small, so sbcfm behaves much like otcfm (ratios near 1 above)."""


def datasets(names):
    import sctraj

    out = {}
    if "hema" in names:
        out["hema"] = ("hematopoiesis (2-d)", sctraj.datasets.hematopoiesis(), "day", "X_emb", None)
    if "eb5" in names or "eb50" in names:
        e = sctraj.datasets.eb()
        if "eb5" in names:
            out["eb5"] = ("EB 5-d", e, "day", "X_pca", 5)
        if "eb50" in names:
            out["eb50"] = ("EB 50-d (PCs as they are)", e, "day", "X_pca", 50)
    if "ipsc" in names:
        out["ipsc"] = ("iPSC (4-d)", sctraj.datasets.ipsc(), "time", "X_emb", None)
    return out


def fit_eval(a, key, rep, n_dims, heldout, method, seed, stochastic=False, **params):
    import sctraj
    from sctraj.tl import evaluate

    t = a.obs[key].to_numpy(float)
    times = np.unique(t)
    prev = times[times < heldout].max()
    X_true = sctraj._validation.get_rep(a, rep, n_dims)[np.isclose(t, heldout)]
    work = a.copy()
    c0 = time.process_time()
    model = sctraj.tl.fit_flow(work, key, method=method, use_rep=rep, n_dims=n_dims, exclude_times=[heldout],
                               random_state=seed, progress=False, trajectory_n_grid=0, key_added="_b", **params)
    cpu = time.process_time() - c0
    pred = sctraj.tl.predict(work, model, source_time=prev, target_time=heldout)
    res = {"W1": evaluate(pred.obsm[rep][:, : X_true.shape[1]], X_true, random_state=seed)["W1"], "cpu_s": cpu,
           "fit_s": float(model.setup["fit_seconds"])}
    if stochastic:
        pred = sctraj.tl.predict(work, model, source_time=prev, target_time=heldout, stochastic=True,
                                 random_state=seed)
        res["W1_sde"] = evaluate(pred.obsm[rep][:, : X_true.shape[1]], X_true, random_state=seed)["W1"]
    return res


def commit() -> str:
    import sctraj

    here = Path(sctraj.__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(row):
    rows = json.loads(RAW.read_text()) if RAW.exists() else []  # one process per file: no concurrent writers
    rows.append(row)
    RAW.write_text(json.dumps(rows, indent=1, default=float))


def has_sde() -> bool:
    import inspect

    import sctraj

    return "stochastic" in inspect.signature(sctraj.tl.predict).parameters


def full_fit_cpu(a, key, rep, n_dims, method, seed):
    import sctraj

    work = a.copy()
    c0 = time.process_time()
    sctraj.tl.fit_flow(work, key, method=method, use_rep=rep, n_dims=n_dims, random_state=seed, progress=False,
                       trajectory_n_grid=0, key_added="_b")
    return time.process_time() - c0


def warm_up():
    """One tiny unmeasured fit per method: the first fit of a process imports torch's and POT's modules."""
    import sctraj

    a = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), n_dims=3, random_state=0)
    for m in ("otcfm", "sbcfm"):
        fit = sctraj.tl.fit_flow(a.copy(), "time", method=m, use_rep="X_sim", n_steps=5, progress=False,
                                 trajectory_n_grid=0, key_added="_b")
        sctraj.tl.predict(a.copy(), fit, source_time=0.0, target_time=1.0, stochastic=m == "sbcfm", random_state=0)


def speed(args):
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    nice = os.nice(0)
    prefix = (env + " " if env else "") + (f"nice -n {nice} " if nice else "")
    head = {"part": "speed", "label": args.label, "commit": commit(), "date": today(), "machine": machine(),
            "argv": prefix + "python benchmarks/bench_sbcfm.py " + " ".join(sys.argv[1:]),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    held = {"hema": 4.0, "eb5": 13.5, "eb50": 13.5}
    warm_up()
    for seed in args.seeds:
        for tag, (name, a, key, rep, nd) in datasets(args.datasets).items():
            for m in ("otcfm", "sbcfm"):
                full = full_fit_cpu(a, key, rep, nd, m, seed)
                r = fit_eval(a, key, rep, nd, held[tag], m, seed, stochastic=(m == "sbcfm" and has_sde()))
                save({**head, "dataset": name, "heldout": held[tag], "method": m, "seed": seed, "full_cpu_s": full,
                      **r, "load": os.getloadavg()[0]})
                print(f"{args.label} {name} seed={seed} {m}: full {full:.1f}s {r} load={os.getloadavg()[0]:.1f}",
                      flush=True)
    render()


def sigma(args):
    head = {"part": "sigma", "label": args.label, "commit": commit(), "date": today(), "machine": machine(),
            "argv": " ".join(sys.argv[1:])}
    held = {"eb5": [7.5, 13.5, 19.5], "hema": [4.0], "ipsc": [2.0, 4.0, 6.0]}
    for tag, (name, a, key, rep, nd) in datasets(args.datasets).items():
        for h in (args.heldout or held[tag]):
            for seed in args.seeds:
                runs = [("otcfm", None)] + [("sbcfm", s) for s in args.sigmas]
                for m, sg in runs:
                    kw = {} if sg is None else {"sigma": sg}
                    r = fit_eval(a, key, rep, nd, h, m, seed, stochastic=m == "sbcfm", **kw)
                    save({**head, "dataset": name, "heldout": h, "method": m, "sigma": sg, "seed": seed, **r,
                          "load": os.getloadavg()[0]})
                    print(f"{name} h={h} seed={seed} {m} sigma={sg}: {r}", flush=True)
    render()


def render():
    import pandas as pd

    rows = pd.DataFrame([r for f in sorted(RESULTS.glob(RAW_GLOB)) for r in json.loads(f.read_text())])
    sp = rows[rows["part"] == "speed"]
    if len(sp):
        lines = ["# SB-CFM cost next to OT-CFM (issue 15, item 2)", "",
                 "CPU seconds of one default fit on every time point (`full`) and of one leave-one-out fit (`LOO`: "
                 "hematopoiesis without day 4, EB without day 13.5), `otcfm` and `sbcfm` one after the other in one "
                 "process; the ratio is the mean over seeds of sbcfm / otcfm (same seed, same process). W1: "
                 "leave-one-out W1 of the held-out time, mean ± sd over seeds; sbcfm's by its ODE (`stochastic=False`, "
                 "the default) and by its SDE (`stochastic=True`). Latest run first.", ""]
        order = sp.groupby("label", sort=False)["date"].max().sort_values(ascending=False).index
        for label in order:
            g = sp[sp["label"] == label]
            up = g["uptime"].dropna().iloc[-1] if "uptime" in g and g["uptime"].notna().any() else None
            lines += [f"## `{label}`: sctraj commit `{g['commit'].iloc[-1]}`, {g['date'].min()}", "",
                      f"- command: `{g['argv'].iloc[-1]}`",
                      f"- machine: {g['machine'].iloc[-1]}",
                      (f"- `uptime` at the start: `{up}`; " if up else "- ")
                      + f"1-min load average after each fit: {g['load'].min():.1f}-{g['load'].max():.1f} (2 cores, "
                      "shared with other jobs: the CPU seconds, not wall time, are the measure)", ""]
            tab = ["| dataset | seeds | otcfm CPU s (full / LOO) | sbcfm CPU s (full / LOO) | ratio (full / LOO) "
                   "| otcfm W1 | sbcfm W1 (ODE) | sbcfm W1 (SDE) |",
                   "|---|---|---|---|---|---|---|---|"]
            for ds, d in g.groupby("dataset", sort=False):
                o, s = d[d["method"] == "otcfm"].set_index("seed"), d[d["method"] == "sbcfm"].set_index("seed")
                # ratio of the per-seed CPU times, then the mean: both fits of a seed ran back to back
                rf, rl = (s["full_cpu_s"] / o["full_cpu_s"]).mean(), (s["cpu_s"] / o["cpu_s"]).mean()
                sde = (f"{s['W1_sde'].mean():.4f} ± {s['W1_sde'].std():.4f}"
                       if "W1_sde" in s and s["W1_sde"].notna().any() else "–")
                tab.append(f"| {ds} | {len(s)} | {o['full_cpu_s'].mean():.2f} / {o['cpu_s'].mean():.2f} | "
                           f"{s['full_cpu_s'].mean():.2f} / {s['cpu_s'].mean():.2f} | **{rf:.2f}× / {rl:.2f}×** | "
                           f"{o['W1'].mean():.4f} ± {o['W1'].std():.4f} | {s['W1'].mean():.4f} ± {s['W1'].std():.4f} | "
                           f"{sde} |")
            lines += tab + [""]
        lines += ["## Notes", "", SPEED_NOTES, ""]
        (RESULTS / "speed_sbcfm.md").write_text("\n".join(lines))
        print("\n".join(lines))
    sg = rows[rows["part"] == "sigma"]
    if len(sg):
        # the latest row of every fold and setting: a later run replaces an earlier one
        sg = sg.assign(_sigma=sg["sigma"].fillna(-1)).sort_values("date", kind="stable").drop_duplicates(
            ["dataset", "heldout", "method", "_sigma", "seed"], keep="last")
        ot = sg[sg["method"] == "otcfm"].set_index(["dataset", "heldout", "seed"])["W1"]
        sb = sg[sg["method"] == "sbcfm"].copy()
        idx = pd.MultiIndex.from_frame(sb[["dataset", "heldout", "seed"]])
        sb["r_ode"] = sb["W1"].to_numpy() / ot.reindex(idx).to_numpy()
        sb["r_sde"] = sb["W1_sde"].to_numpy() / ot.reindex(idx).to_numpy()
        lines = ["# SB-CFM: choosing the default sigma", "",
                 f"- command: `python benchmarks/bench_sbcfm.py {sg['argv'].iloc[-1]}`",
                 f"- sctraj commit `{sg['commit'].iloc[-1]}`, {sg['date'].iloc[-1]}; machine: {sg['machine'].iloc[-1]}",
                 f"- load average (1 min) during the fits: {sg['load'].min():.1f}-{sg['load'].max():.1f}", "",
                 "Leave-one-out W1 divided by otcfm's W1 on the same data, held-out time and seed (lower is better); "
                 "`ODE` pushes the held-out time's predecessor with the learned probability-flow ODE, `SDE` samples "
                 "the learned SDE (`stochastic=True`) from the same fit. Mean over held-out times and seeds.", ""]
        per_ds = sb.groupby(["sigma", "dataset"])[["r_ode", "r_sde"]].mean().unstack("dataset")
        n_ds = sb.groupby(["sigma", "dataset"])["r_ode"].count().unstack("dataset")
        # the overall mean only over (data set, held-out time, seed) folds that every sigma completed
        folds = sb.groupby(["dataset", "heldout", "seed"])["sigma"].nunique()
        full = folds[folds == sb["sigma"].nunique()].index
        sbf = sb.set_index(["dataset", "heldout", "seed"]).loc[lambda d: d.index.isin(full)]
        allm = sbf.groupby("sigma")[["r_ode", "r_sde"]].mean()
        cols = list(dict.fromkeys(sb["dataset"]))
        lines.append("| sigma | " + " | ".join(f"{c} ODE / SDE (n)" for c in cols)
                     + f" | mean ODE ({len(full)} common folds) | mean SDE | CPU s (mean) |")
        lines.append("|---" * (len(cols) + 4) + "|")
        cpu = sb.groupby("sigma")["cpu_s"].mean()
        for s in sorted(sb["sigma"].unique()):
            cells = [f"{per_ds.loc[s, ('r_ode', c)]:.3f} / {per_ds.loc[s, ('r_sde', c)]:.3f} ({int(n_ds.loc[s, c]) if c in n_ds and n_ds.loc[s, c] == n_ds.loc[s, c] else 0})"
                     if c in n_ds and n_ds.loc[s, c] == n_ds.loc[s, c] else "–" for c in cols]
            mo = allm.loc[s, "r_ode"] if s in allm.index else float("nan")
            ms = allm.loc[s, "r_sde"] if s in allm.index else float("nan")
            lines.append(f"| {s:g} | " + " | ".join(cells) + f" | {mo:.3f} | {ms:.3f} | {cpu.loc[s]:.1f} |")
        otw = sg[sg["method"] == "otcfm"].groupby("dataset")["W1"].mean()
        lines += ["", "otcfm mean W1 (the denominators): " + ", ".join(f"{k} {v:.4f}" for k, v in otw.items()),
                  f"; otcfm CPU s (mean) {sg[sg['method'] == 'otcfm']['cpu_s'].mean():.1f}.", ""]
        lines += ["## Notes (2026-12-02)", "", SIGMA_NOTES, ""]
        (RESULTS / "sbcfm_sigma.md").write_text("\n".join(lines))
        print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["speed", "sigma"])
    ap.add_argument("--label", default="after")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--heldout", nargs="+", type=float, default=None, help="sigma part: held-out times (all datasets)")
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    global RAW
    RAW = RESULTS / f"sbcfm_raw_{args.part}_{args.label}_{'_'.join(args.datasets or [])}.json"
    if args.render or args.part is None:
        render()
    elif args.part == "speed":
        args.datasets = args.datasets or ["hema", "eb5", "eb50"]
        speed(args)
    else:
        args.datasets = args.datasets or ["eb5", "hema", "ipsc"]
        sigma(args)


if __name__ == "__main__":
    main()
