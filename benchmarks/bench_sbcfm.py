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
* ``plans`` -> a section of ``speed_sbcfm.md``: per entropic plan at sbcfm's default ``reg = 2 * 0.1**2`` in
  ``fit_flow``'s internal coordinates (every EB 5-d and 50-d interval, 550 x 550 cells; one random 512 x 512 block
  per hematopoiesis interval), the CPU seconds (``time.thread_time``, one BLAS thread) of
  ``sctraj.engine.couplings.entropic_plan`` and of POT's ``sinkhorn_epsilon_scaling`` (the solver sctraj fell back to
  before), each plan's L1 marginal error and its L1 distance to a plan solved to ``tol = 1e-8``.
* ``sigma`` -> ``sbcfm_sigma.md``: leave-one-out W1 of ``sbcfm`` at several ``sigma`` (ODE and SDE predictions of the
  same fit) and of ``otcfm``, on EB 5-d (held-out 7.5, 13.5, 19.5), hematopoiesis (4) and iPSC (2, 4, 6), seeds 0-2.
  The default is the sigma with the lowest mean of W1 / W1(otcfm, same data, time and seed).

Usage::

    python benchmarks/bench_sbcfm.py --part speed --label after --seeds 0 1 2
    python benchmarks/bench_sbcfm.py --part plans
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
- Acceptance (issue 15, item 2: sbcfm <= 1.5x otcfm's CPU at the same W1): `after-45c99c6` (main's final solver)
  against `before-022dfd8`, seeds 0-2 each: hematopoiesis 1.62x / 0.97x -> 0.97x / 0.82x (full / LOO), EB 5-d
  1.96x / 1.88x -> 1.31x / 1.27x, EB 50-d 2.20x / 2.04x -> 1.34x / 1.36x. Met on all three data sets. The runs were
  30 minutes apart on the shared 2-core machine, at a 1-min load of 5.5-8.8 (before) and 11.5-13.5 (after): the
  ratios compare two fits of the same process, so the load moves both; `after-83aca3b` (the solver without the
  truncated last stage, load 8.4-9.3) had EB 50-d at 1.47x / 1.48x.
- W1 is unchanged: the means over seeds move by at most 0.001 (hematopoiesis ODE 0.3934 -> 0.3943, SDE 0.3885 ->
  0.3894; EB 5-d 3.9552 -> 3.9556 and 3.9484 -> 3.9486; EB 50-d 12.1791 -> 12.1786 and 12.1901 -> 12.1891), against
  seed-to-seed sd of 0.014-0.05. otcfm's W1 is identical in all runs (its code did not change).
- What changed (`sctraj.engine.couplings.entropic_plan`): the chain "plain Sinkhorn in single, then double precision,
  then POT's epsilon scaling" became one epsilon scaling over POT's plain Sinkhorn: stages at reg * 2^k from about
  the largest cost down to reg, each warm-started by absorbing the previous stage's dual potentials into the cost (so
  the kernel cannot under- or overflow and single precision is safe), the last stopped when the plan's marginals are
  within 1e-4 in L1. When the last stage's kernel is sparse (at most 10% of its entries above exp(-50): 5-16% on
  the EB 5-d intervals, so three of four; 0.5% on EB 50-d; 24-43% on hematopoiesis blocks, which stay dense) that
  stage iterates on the truncated kernel as a `scipy.sparse` matrix (`after-45c99c6`), and the dense plan rebuilt
  from its potentials must meet the same tolerance. At reg = 0.02 on EB the old plain attempts ran their full 2000 iterations without reaching the
  marginals, then POT's epsilon scaling ran at least 35 x 100 stabilised iterations (its fixed minimum) to an
  accuracy ten times finer than the one asked for: POT's epsilon scaling alone takes 0.28-0.83 CPU s per EB plan
  against 0.05-0.09 s for the new solver (table above; on hematopoiesis blocks the old chain's double-precision
  attempt converged, and the new solver takes 0.05-0.07 s). The plans differ from ones solved to 1e-8 by 3e-4 to
  1.4e-3 in L1 (a total-variation distance of the pair law below 7e-4; POT's epsilon scaling: 3e-5 to 2e-3).
  No POT warning reaches the user any more: the plans are solved in background threads, where the old chain's
  `warnings.catch_warnings()` raced (it is not thread-safe) and let "Sinkhorn did not converge" through
  (`tutorials/method_comparison.ipynb` filtered it); the new solver calls POT with `warn=False` on a kernel that
  cannot underflow, and `tests/test_engine.py` runs a fit with warnings as errors.
- Where the rest of sbcfm's cost goes (EB 50-d full fit, seed 0, one process, load ~9, three repeats, CPU s, with
  the solver of `83aca3b`): otcfm 3.8; sbcfm with its plans replaced by exact ones and no score head 3.9-4.1 (the
  Brownian-bridge path), with the score head 4.8-5.0, with its entropic plans (the default) 5.6-5.7. The score head
  doubles the output layer (50 -> 100 outputs beside 64 hidden units): a 3 x 64 MLP step on 1,024 rows takes 1.90
  instead of 1.70 ms, and the two losses add a few element-wise operations; merging the losses into one residual
  tensor saved nothing measurable and was not kept. At 2 or 5 dims the head costs little. With the truncated last
  stage the four EB 50-d plans cost about 0.35 s per fit, less than the score head.
- Protocol: each run first fits both methods once on 60 simulated cells, unmeasured (the first fit of a process
  imports torch's and POT's modules: this had added about 1 s to the first measured otcfm fit before). CPU seconds
  are process CPU time (all threads, so the background plan threads count); wall time measures the machine's load.
  The `after-83aca3b` run was labelled `after` on the command line and renamed in its raw rows. `45c99c6` was the
  branch commit measured; rebased onto main it is `7085c95`, with the same `sctraj/` code (`git diff 45c99c6
  7085c95 -- sctraj/engine/couplings.py sctraj/models/cfm.py` is empty; the branch commit is not on main).
- Earlier versions of this page (runs of 06:43 UTC at a load of 25-43 with 1-2 seeds, and the numbers quoted in
  issue 15) are superseded by these rows; their raw files are in git history (`sbcfm_raw_speed_*.json` at
  `022dfd8`)."""

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


def plans(args):
    import warnings

    import ot
    from threadpoolctl import threadpool_limits

    import sctraj
    from sctraj.engine import couplings
    from sctraj.tl._fit import internal_scale

    head = {"part": "plans", "label": args.label, "commit": commit(), "date": today(), "machine": machine(),
            "argv": "python benchmarks/bench_sbcfm.py " + " ".join(sys.argv[1:]),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    reg = 2 * 0.1**2
    rng = np.random.default_rng(0)

    def l1(P, a, b):
        return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())

    for name, a, key, rep, nd in datasets(args.datasets).values():
        t = a.obs[key].to_numpy(float)
        X = sctraj._validation.get_rep(a, rep, nd)
        Xs = [np.asarray(X[np.isclose(t, v)], np.float64) for v in np.unique(t)]
        mean, scale = internal_scale(Xs)  # fit_flow's internal coordinates
        Xs = [((x - mean) / scale).astype(np.float32) for x in Xs]
        for k in range(len(Xs) - 1):
            x0, x1 = Xs[k], Xs[k + 1]
            if len(x0) > 1024 or len(x1) > 1024:  # sbcfm's block plans: one random 512-cell block per side
                x0 = x0[np.sort(rng.choice(len(x0), min(512, len(x0)), replace=False))]
                x1 = x1[np.sort(rng.choice(len(x1), min(512, len(x1)), replace=False))]
            wa, wb = np.full(len(x0), 1 / len(x0)), np.full(len(x1), 1 / len(x1))
            with threadpool_limits(1, user_api="blas"):
                ref = couplings.entropic_plan(x0, x1, reg=reg, tol=1e-8, n_iter=100_000)
                c0 = time.thread_time()
                new = couplings.entropic_plan(x0, x1, reg=reg)
                c_new = time.thread_time() - c0
                M = couplings.sq_cost(x0, x1)
                M -= M.min(1, keepdims=True)
                M -= M.min(0, keepdims=True)
                c0 = time.thread_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    old = ot.sinkhorn(wa, wb, M, reg, method="sinkhorn_epsilon_scaling", numItermax=2000, stopThr=1e-6,
                                      warn=False)
                c_old = time.thread_time() - c0
            row = {**head, "dataset": name, "interval": k, "shape": f"{len(x0)} x {len(x1)}", "cpu_new": c_new,
                   "cpu_pot_eps": c_old, "marg_new": l1(new, wa, wb), "marg_pot_eps": l1(old, wa, wb),
                   "dist_new": float(np.abs(new - ref).sum()), "dist_pot_eps": float(np.abs(old - ref).sum()),
                   "marg_ref": l1(ref, wa, wb), "load": os.getloadavg()[0]}
            save(row)
            print(row, flush=True)
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
        pl = rows[rows["part"] == "plans"] if "part" in rows else rows.iloc[:0]
        if len(pl):
            pl = pl[pl["date"] == pl["date"].max()]
            lines += ["## One entropic plan: `entropic_plan` against POT's epsilon scaling", "",
                      f"- command: `{pl['argv'].iloc[-1]}`; sctraj commit `{pl['commit'].iloc[-1]}`, "
                      f"{pl['date'].iloc[-1]}; `uptime`: `{pl['uptime'].iloc[-1]}`", "",
                      "reg = 0.02 (sbcfm's default 2 sigma^2) in fit_flow's internal coordinates; CPU s of one solve "
                      "(`time.thread_time`, one BLAS thread); marginal error and distance in L1 (plans sum to 1); "
                      "`reference`: `entropic_plan(..., tol=1e-8, n_iter=100000)`. POT's "
                      "`sinkhorn_epsilon_scaling(numItermax=2000, stopThr=1e-6)` is the solver sctraj's chain ended "
                      "in before (after plain Sinkhorn attempts that stall on EB).", "",
                      "| dataset | interval | cells | CPU s: entropic_plan / POT eps. scaling | L1 marginal error: new / "
                      "POT | L1 distance to the reference: new / POT |",
                      "|---|---|---|---|---|---|"]
            for _, r in pl.iterrows():
                lines.append(f"| {r['dataset']} | {int(r['interval'])} | {r['shape']} | {r['cpu_new']:.3f} / "
                             f"{r['cpu_pot_eps']:.3f} | {r['marg_new']:.1e} / {r['marg_pot_eps']:.1e} | "
                             f"{r['dist_new']:.1e} / {r['dist_pot_eps']:.1e} |")
            lines.append("")
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
    ap.add_argument("--part", choices=["speed", "plans", "sigma"])
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
    elif args.part == "plans":
        args.datasets = args.datasets or ["eb5", "eb50", "hema"]
        plans(args)
    else:
        args.datasets = args.datasets or ["eb5", "hema", "ipsc"]
        sigma(args)


if __name__ == "__main__":
    main()
