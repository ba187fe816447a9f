"""Leave-one-out W1 and fit time: sctraj's icfm / otcfm / sbcfm (defaults) vs torchcfm 1.0.7 (runner settings).

Issue 2, section 6. Splits: EB (first 5 PCs standardised, held-out days 7.5, 13.5, 19.5) and hematopoiesis
(``X_emb``, held-out day 4). torchcfm runs in ``benchmarks/_venvs/torchcfm`` (torch==2.13.0, torchcfm==1.0.7) via
``_torchcfm_runner.py`` with its runner's settings: 3x64 SELU MLP, AdamW 1e-3 (weight decay 1e-5), batch 256,
sigma 0.1, 5000 steps, 100 Euler steps. sctraj runs ``fit_flow`` with no setting changed. Both predictions are
scored with ``sctraj.tl.evaluate`` on the same held-out cells. Each split runs the peer then sctraj back to back,
so both see the same machine load; CPU seconds (all threads of the process) are reported next to wall seconds
because the shared machine's wall time is noisy. Both sides use one torch CPU thread.

Run: ``python benchmarks/bench_torchcfm.py [--quick] [--seeds 0 1] [--splits 0 1] [--steps 500 1000] [--reuse-peer]
[--report]`` (``--splits`` runs a subset of the four splits and stores its rows in ``benchmarks/_work``; ``--report``
writes the table from every stored row; ``--reuse-peer`` reuses stored torchcfm fits, which do not depend on sctraj).

Time to quality (issue 15 item 5): ``--steps N ...`` also fits sctraj with each of these ``n_steps`` right after its
default fit, on the same split and seed, scored against the same torchcfm fit. The report then names, per method
(over all the run's splits and seeds, then per split), the cheapest sctraj budget whose mean W1 is at or below
torchcfm's, and its CPU seconds as a fraction of torchcfm's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
from _common import HERE, WORK, peer_python, table, write_result

METHODS = ("icfm", "otcfm", "sbcfm")


def splits(quick: bool):
    import sctraj

    eb = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(eb, use_rep="X_pca", n_dims=5)
    out = [("EB", eb, "day", "X_pca_scaled", h) for h in ((13.5,) if quick else (7.5, 13.5, 19.5))]
    hm = sctraj.datasets.hematopoiesis()
    out.append(("hematopoiesis", hm, "day", "X_emb", 4.0))
    return out


def run_torchcfm(py, ad, time_key, rep, heldout, method, seed, n_steps, tag):
    t = ad.obs[time_key].to_numpy()
    times = np.unique(t)
    X = ad.obsm[rep]
    WORK.mkdir(exist_ok=True)
    inp, out = WORK / f"tcfm_{tag}.npz", WORK / f"tcfm_{tag}.json"
    arrays = {f"X_{k}": np.asarray(X[t == s], np.float32) for k, s in enumerate(times)}
    np.savez(inp, n_times=len(times), heldout=int(np.flatnonzero(np.isclose(times, heldout))[0]), method=method,
             seed=seed, n_steps=n_steps, batch_size=256, threads=1, **arrays)
    subprocess.run([str(py), str(HERE / "_torchcfm_runner.py"), str(inp), str(out)], check=True)
    res = json.loads(out.read_text())
    res["pred"] = np.load(str(out).replace(".json", ".npy"))
    return res


def run_sctraj(ad, time_key, rep, heldout, method, seed, n_steps=None):
    import sctraj

    t = ad.obs[time_key].to_numpy()
    times = np.unique(t)
    prev = times[np.flatnonzero(np.isclose(times, heldout))[0] - 1]
    work = ad.copy()
    c0 = time.process_time()
    model = sctraj.tl.fit_flow(work, time_key, method=method, use_rep=rep, exclude_times=heldout, random_state=seed,
                               n_steps=n_steps, progress=False, trajectory_n_grid=0)
    cpu = time.process_time() - c0
    pred = model.push(ad.obsm[rep][np.isclose(t, prev)], prev, heldout, n_steps=100)[0]
    return {"fit_seconds": float(model.setup["fit_seconds"]), "fit_cpu_seconds": cpu,
            "n_steps": int(model.setup["n_steps"]), "pred": pred}


def time_to_quality(rows, methods) -> str:
    """Per method, over all splits and then per split: the cheapest sctraj budget (default or ``METHOD@N``) whose mean
    W1 is at or below torchcfm's on the same splits and seeds, with its CPU seconds over torchcfm's."""
    out = ["Time to quality (means over the seeds, and splits, that every budget of the method has; CPU ratio = total "
           "CPU seconds of the sctraj fits / of the torchcfm fits):", "",
           "| method | split | torchcfm W1 | sctraj budgets: steps, W1, CPU ratio | first to reach torchcfm's W1 | "
           "its CPU ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        by = {}
        for x in rows:
            if x["method"] == m or x["method"].startswith(m + "@"):
                by.setdefault(x["method"], {})[(x["dataset"], x["heldout"], x["seed"])] = x
        if not by:
            continue
        common = sorted(set.intersection(*(set(v) for v in by.values())))
        groups = [("all", common)] + [(f"{d} {h}", [k for k in common if k[:2] == (d, h)])
                                      for d, h in dict.fromkeys(k[:2] for k in common)]
        for split, keys in groups:
            if not keys:
                continue
            budgets = sorted(by, key=lambda lab: int(by[lab][keys[0]]["steps"].split(" / ")[1]))
            w_peer = float(np.mean([by[budgets[0]][k]["W1 torchcfm"] for k in keys]))
            cpu_peer = sum(by[budgets[0]][k]["CPU s torchcfm"] for k in keys)
            cells, first = [], None
            for lab in budgets:
                w = float(np.mean([by[lab][k]["W1 sctraj"] for k in keys]))
                c = sum(by[lab][k]["CPU s sctraj"] for k in keys) / cpu_peer
                steps = by[lab][keys[0]]["steps"].split(" / ")[1]
                cells.append(f"{steps}: {w:.3f}, {c:.3f}")
                if first is None and w <= w_peer:
                    first = (steps, c)
            out.append(f"| {m} | {split} | {w_peer:.3f} ({len(keys)} fits) | {'; '.join(cells)} | "
                       + (f"{first[0]} steps | {first[1]:.3f} |" if first else "none | – |"))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one EB split + hematopoiesis, 1000 torchcfm steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--splits", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[],
                    help="time to quality: also fit sctraj with each of these n_steps (rows 'METHOD@N')")
    ap.add_argument("--reuse-peer", action="store_true")
    ap.add_argument("--report", action="store_true", help="only write the table from the stored rows")
    args = ap.parse_args()
    import sctraj

    py = peer_python("torchcfm", "torchcfm==1.0.7")
    n_peer = 1000 if args.quick else 5000
    WORK.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    all_splits = splits(args.quick)
    chosen = range(len(all_splits)) if args.splits is None else args.splits
    if not args.report:
        # one unmeasured fit per method: the first fit of a process pays for importing modules, which the peer's
        # runner does before its clock starts
        warm = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), n_dims=3, random_state=0)
        for m in args.methods:
            sctraj.tl.fit_flow(warm, "time", method=m, use_rep="X_sim", n_steps=5, progress=False,
                               trajectory_n_grid=0)
    for i in ([] if args.report else chosen):
        name, ad, tk, rep, h = all_splits[i]
        X_true = ad.obsm[rep][np.isclose(ad.obs[tk].to_numpy(), h)]
        for m in args.methods:
            for s in args.seeds:
                tag = f"{name}_{h:g}_{m}_{s}{suffix}"
                cached = WORK / f"tcfm_{tag}.json"
                if args.reuse_peer and cached.exists():
                    peer = json.loads(cached.read_text())
                    peer["pred"] = np.load(str(cached).replace(".json", ".npy"))
                else:
                    peer = run_torchcfm(py, ad, tk, rep, h, m, s, n_peer, tag)
                w_peer = sctraj.tl.evaluate(peer["pred"], X_true, random_state=s)["W1"]
                for n in [None, *args.steps]:
                    ours = run_sctraj(ad, tk, rep, h, m, s, n_steps=n)
                    w_ours = sctraj.tl.evaluate(ours["pred"], X_true, random_state=s)["W1"]
                    label = m if n is None else f"{m}@{n}"
                    row = {"dataset": name, "heldout": f"{h:g}", "method": label, "seed": s,
                           "W1 torchcfm": w_peer, "W1 sctraj": w_ours, "W1 ratio": w_ours / w_peer,
                           "fit s torchcfm": peer["fit_seconds"], "fit s sctraj": ours["fit_seconds"],
                           "CPU s torchcfm": peer["fit_cpu_seconds"], "CPU s sctraj": ours["fit_cpu_seconds"],
                           "CPU ratio": ours["fit_cpu_seconds"] / peer["fit_cpu_seconds"],
                           "steps": f"{peer['n_steps']} / {ours['n_steps']}"}
                    (WORK / f"row_{name}_{h:g}_{label}_{s}{suffix}.json").write_text(json.dumps(row))
                    print(row, flush=True)
    labels = [lab for m in args.methods for lab in [m, *(f"{m}@{n}" for n in args.steps)]]
    rows = [json.loads((WORK / f"row_{name}_{h:g}_{lab}_{s}{suffix}.json").read_text())
            for name, _, _, _, h in all_splits for lab in labels for s in args.seeds
            if (WORK / f"row_{name}_{h:g}_{lab}_{s}{suffix}.json").exists()]
    if not rows:
        return
    cols = ["dataset", "heldout", "method", "seed", "W1 torchcfm", "W1 sctraj", "W1 ratio", "fit s torchcfm",
            "fit s sctraj", "CPU s torchcfm", "CPU s sctraj", "CPU ratio", "steps"]
    f = {c: ".3f" for c in cols if c.startswith("W1")} | {c: ".1f" for c in cols if " s " in c} | {"CPU ratio": ".3f"}
    body = table(rows, cols, f)
    summ = []
    for m in labels:
        r = [x for x in rows if x["method"] == m]
        if not r:
            continue
        summ.append({"method": m, "mean W1 torchcfm": np.mean([x["W1 torchcfm"] for x in r]),
                     "mean W1 sctraj": np.mean([x["W1 sctraj"] for x in r]),
                     "mean W1 ratio": np.mean([x["W1 ratio"] for x in r]),
                     "total CPU ratio": sum(x["CPU s sctraj"] for x in r) / sum(x["CPU s torchcfm"] for x in r),
                     "total wall ratio": sum(x["fit s sctraj"] for x in r) / sum(x["fit s torchcfm"] for x in r)})
    body += "\n\nSummary (ratio = sctraj / torchcfm; below 1 is better for sctraj):\n\n" + table(
        summ, list(summ[0]), {k: ".3f" for k in summ[0] if k != "method"})
    body += "\n\n" + time_to_quality(rows, args.methods)
    notes = ("Fit seconds exclude prediction. 'steps' = torchcfm / sctraj training steps; torchcfm trains 256 pairs "
             "per step over all intervals with a fresh 256x256 plan per interval per step, sctraj's defaults are in "
             "`sctraj/models/cfm.py`. torchcfm's sbcfm uses its Sinkhorn plan (the runner's sbcfm config). "
             "Both sides use 1 torch CPU thread (see threads.md for why). Rows are stored per (split, method, "
             "seed) in `benchmarks/_work` and this table is written from every stored row (`--report`), so rows may "
             "come from several invocations; within a row the peer ran right before sctraj, except for rows re-run "
             "with `--reuse-peer` after an sctraj change (peer fit reused from an earlier invocation; compare CPU "
             "seconds there, which depend less on the machine's load).")
    write_result("torchcfm" + ("_quick" if args.quick else ""),
                 "Leave-one-out vs torchcfm 1.0.7 (issue 2, section 6)", body, notes)


if __name__ == "__main__":
    main()
