"""Side by side: the Metric FM reference code vs sctraj's ``metricfm`` and ``otcfm``, same data, held-out times, seeds.

The reference (github kksniak/metric-flow-matching) runs in its own virtual environment through
``_mfm_reference_runner.py`` (see its docstring for exactly what is driven and what is replaced); sctraj's methods run
in this process with their defaults. Every row is one held-out time and seed; W1 is the exact W1 between the
cells of the previous time point pushed to the held-out time and the observed held-out cells, in the data's
original coordinates, for all three. CPU seconds are per fit (``time.process_time`` of the fitting process; one torch
thread for everything).

Setup (once; nothing of the reference is committed)::

    python -m venv benchmarks/_venvs/mfm_ref
    benchmarks/_venvs/mfm_ref/bin/pip install torch==2.13.0
    benchmarks/_venvs/mfm_ref/bin/pip install -c <(echo torch==2.13.0) pytorch-lightning==2.2.0 torchcfm==1.0.5 \
        POT scikit-learn torchdyn pyyaml
    # as of 2026-12: Lightning 2.2 needs pkg_resources, the pulled-in torchvision is a CUDA build that does not load,
    # and scprep's pandas<2.1 pin gives a wheel built against numpy 1 (scprep and torchvision are stubbed by the runner)
    benchmarks/_venvs/mfm_ref/bin/pip install "setuptools<81" "pandas>=2.2,<3"
    benchmarks/_venvs/mfm_ref/bin/pip uninstall -y torchvision
    # the reference source (commit c58400b), unpacked into benchmarks/_work/mfm_ref_src (git-ignored)

Usage: ``python benchmarks/bench_metricfm_reference.py --datasets eb hema ipsc --seeds 0 1 2 --out raw.json``

Time to quality: ``--steps 250 500 1000`` also fits sctraj's ``metricfm`` with each of these step counts (rows
``metricfm@N``), so the CPU seconds at which it reaches the reference's W1 can be read off in the same run.

An option set of ``bench_metricfm_ablate.py`` beside it: ``--metricfm-config ref_stage1`` (rows
``metricfm[ref_stage1]``, CPU seconds of the fit only, as for the other sctraj rows).

Ablating the reference: ``--ref-override mfm=0`` runs the reference's own OT-CFM (no geodesic stage, straight
interpolants, as its ``main.py`` with ``--mfm False``); other keys override its settings the same way (rows
``reference[KEY=VALUE,...]``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from bench_metricfm_ablate import CONFIGS

HERE = Path(__file__).resolve().parent
VENV_PY = HERE / "_venvs" / "mfm_ref" / "bin" / "python"
REF_SRC = HERE / "_work" / "mfm_ref_src"


def load(name):
    import sctraj

    if name == "eb":
        a = sctraj.datasets.eb()
        sctraj.pp.scale_embedding(a, use_rep="X_pca", n_dims=5)
        return a, "day", "X_pca_scaled", None
    if name == "ipsc":
        return sctraj.datasets.ipsc(), "time", "X_emb", None
    if name == "hema":
        return sctraj.datasets.hematopoiesis(), "day", "X_emb", [4.0]
    raise ValueError(name)


def run_reference(X, t, h_index, seed, threads=1, overrides=None):
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        inp = Path(tmp) / "data.npz"
        extra = {f"ov_{k}": v for k, v in (overrides or {}).items()}
        np.savez(inp, pcs=X.astype(np.float32), sample_labels=t, heldout=h_index, seed=seed, threads=threads,
                 workdir=tmp, **extra)
        outp = Path(tmp) / "out.json"
        env = dict(os.environ, PYTHONPATH=str(REF_SRC), WANDB_MODE="disabled", PYTHONWARNINGS="ignore",
                   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # Lightning 2.2 checkpoints hold pickled objects
        r = subprocess.run([str(VENV_PY), str(HERE / "_mfm_reference_runner.py"), str(inp), str(outp)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0 or not outp.exists():
            raise RuntimeError(f"reference run failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
        return json.load(open(outp))


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["eb", "hema", "ipsc"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--heldout-index", type=int, nargs="+", default=None, help="only these held-out indices")
    ap.add_argument("--skip", nargs="*", default=[], help="methods to skip: reference metricfm otcfm (reference: also any "
                                                                    "'reference[...]')")
    ap.add_argument("--ref-batch-size", type=int, default=None,
                    help="the reference's batch size (default: its 128). Its data module needs every snapshot to keep "
                         "at least this many training cells after its validation split (iPSC's smallest has 93 "
                         "cells: use 32)")
    ap.add_argument("--ref-override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override reference settings (the runner's ov_* keys: gamma rho alpha_metric sigma patience "
                         "patience_geopath geopath_lr epochs batch_size mfm); rows are then labelled "
                         "'reference[KEY=VALUE,...]'. mfm=0 is the reference's own OT-CFM: no geodesic stage, "
                         "straight interpolants, as its main.py with --mfm False")
    ap.add_argument("--steps", type=int, nargs="*", default=[],
                    help="time to quality: also fit sctraj's metricfm with each of these n_steps (rows 'metricfm@N')")
    ap.add_argument("--metricfm-config", nargs="*", default=[], metavar="NAME",
                    help="also fit sctraj's metricfm with these option sets of bench_metricfm_ablate.CONFIGS "
                         "(rows 'metricfm[NAME]'), e.g. ref_stage1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ref_ov = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.ref_override)}
    ref_name = "reference" + (f"[{','.join(args.ref_override)}]" if ref_ov else "")
    import torch

    import sctraj

    torch.set_num_threads(1)
    rows = json.loads(Path(args.out).read_text()) if args.out and os.path.exists(args.out) else []
    done = {(r["method"], r["dataset"], r["heldout"], r["seed"]) for r in rows}
    for name in args.datasets:
        a, key, rep, held = load(name)
        t = a.obs[key].to_numpy().astype(float)
        X = np.asarray(a.obsm[rep], np.float32)
        times = np.unique(t)
        interior = list(range(1, len(times) - 1)) if held is None else [int(np.flatnonzero(times == h)[0]) for h in held]
        if args.heldout_index:
            interior = [i for i in interior if i in args.heldout_index]
        for hi in interior:
            h = float(times[hi])
            for s in args.seeds:
                for method in (ref_name, "metricfm", "otcfm", *[f"metricfm@{n}" for n in args.steps],
                               *[f"metricfm[{c}]" for c in args.metricfm_config]):
                    base = "reference" if method == ref_name else method
                    if base in args.skip or method in args.skip or (method, name, h, s) in done:
                        continue
                    if method == ref_name:
                        ov = dict(ref_ov, **({} if args.ref_batch_size is None else {"batch_size": args.ref_batch_size}))
                        r = run_reference(X, np.searchsorted(times, t), hi, s, overrides=ov)
                        row = {"W1": r["W1"], "cpu_s": r["cpu_s"], "wall_s": r["wall_s"],
                               "detail": {k: r[k] for k in ("geopath_epochs", "flow_epochs", "geopath_cpu_s")}}
                    else:
                        c0, w0 = time.process_time(), time.perf_counter()
                        m, _, n = method.partition("@")
                        m, _, cfg = m.partition("[")
                        params = CONFIGS[cfg[:-1]] if cfg else {}
                        model = sctraj.tl.fit_flow(a, key, method=m, use_rep=rep, exclude_times=[h],
                                                   random_state=s, progress=False, trajectory_n_grid=0,
                                                   key_added="_bench", **({"n_steps": int(n)} if n else {}), **params)
                        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                        p = sctraj.tl.predict(a, model, source_time=float(times[hi - 1]), target_time=h)
                        w1 = sctraj.tl.evaluate(p.obsm[rep], X[t == h], random_state=s)["W1"]
                        row = {"W1": w1, "cpu_s": cpu, "wall_s": wall, "detail": {}}
                    row.update(method=method, dataset=name, heldout=h, seed=s, load=os.getloadavg()[0])
                    rows.append(row)
                    print(f"{method:>9} {name:>5} h={h:g} seed={s} W1={row['W1']:.4f} cpu={row['cpu_s']:.1f}s "
                          f"load={row['load']:.1f} {row['detail']}", flush=True)
                    if args.out:
                        Path(args.out).write_text(json.dumps(rows))
    import pandas as pd

    df = pd.DataFrame(rows)
    print(df.groupby(["dataset", "method"])[["W1", "cpu_s"]].mean().round(4).to_markdown())


if __name__ == "__main__":
    main()
