"""VGFM acceptance benchmark: simulated growth, hematopoiesis mass + leave-one-out W1 vs otcfm, CytoBridge side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_vgfm.py [--seeds 0 1 2] [--out benchmarks/results/vgfm_raw.csv]

Every method runs with its defaults (no per-dataset tuning). Peak memory is the growth of the process's peak RSS
during the fit (``resource.getrusage``), measured in a fresh subprocess per fit so fits do not hide each other.
CytoBridge is compared by ``benchmarks/bench_cytobridge.py`` (its own venv, ``benchmarks/_venvs/cytobridge``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, numpy as np, torch
import sctraj
task, method, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"task": task, "method": method, "seed": seed}
if task == "simulate":
    import scipy.stats as ss
    a = sctraj.datasets.simulate(growth=True, n_cells=300, random_state=seed)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = sctraj.tl.fit_flow(a, "time", method=method, use_rep="X_sim", random_state=seed, progress=False)
    true = np.asarray(a.uns["simulate"]["true_mass"])
    pred = np.asarray(a.uns["sctraj"]["mass"]["predicted_at_observed"])
    out["max_rel_mass_err_vs_truth"] = float(np.max(np.abs(pred - true) / true))
    out["growth_r"] = float(ss.pearsonr(a.obs["sctraj_growth_rate"], a.obs["true_growth_rate"])[0])
elif task == "hema_full":
    a = sctraj.datasets.hematopoiesis()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = sctraj.tl.fit_flow(a, "day", method=method, use_rep="X_emb", random_state=seed, progress=False)
    rec = a.uns["sctraj"]["mass"]
    err = np.asarray(rec["relative_error"])
    out["rel_mass_err_day4"], out["rel_mass_err_day6"] = float(err[1]), float(err[2])
elif task == "hema_loo":
    a = sctraj.datasets.hematopoiesis()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    df = sctraj.tl.leave_one_out(a, "day", methods=[method], use_rep="X_emb", heldout=[4.0], seeds=(seed,),
                                 progress=False)
    for _, r in df.iterrows():
        out[f"W1_{r['method']}"] = float(r["W1"])
        if r["method"] == method:
            out["fit_seconds"] = float(r["fit_seconds"])
    m = None
if m is not None:
    out["fit_seconds"] = float(m.setup["fit_seconds"])
out["peak_rss_growth_MB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print("RESULT " + json.dumps(out))
"""


def run(task, method, seed):
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, task, method, str(seed)], capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(p.stderr[-3000:])
    res = json.loads(line[0][7:])
    res["wall_seconds"] = time.perf_counter() - t
    print(res, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="benchmarks/results/vgfm_raw.json")
    ap.add_argument("--tasks", nargs="+", default=["simulate", "hema_full", "hema_loo"])
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        for task in args.tasks:
            methods = ["vgfm"] if task != "hema_loo" else ["vgfm", "otcfm"]
            for m in methods:
                rows.append(run(task, m, seed))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
