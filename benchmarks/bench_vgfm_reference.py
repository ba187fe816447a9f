"""Time to quality: sctraj's ``vgfm`` (defaults) against the VGFM reference code, side by side (issue 15, item 5).

The reference (github: DongyiWang-66/VGFM, commit 42179fd) runs in its own venv ``benchmarks/_venvs/vgfm``
(``pip install torch==2.13.0`` first, then numpy pandas pot torchdiffeq torchdyn matplotlib seaborn tqdm pyyaml
scipy) through ``_vgfm_ref_runner.py``, which imports the reference's modules from a checkout outside this
repository (``--src``; its code is never copied here) and runs its two stages with the settings of its published
runs (``results/<run>/params.yml`` of the reference repository):

* hematopoiesis (``Mouse_hematopoiesis_final``): 200 flow/growth-matching iterations, 100 distribution-fitting
  epochs, ``reg=0.03``, ``reg_m=10``, batch 256, ``learning_rate2=1e-3``, no cost normalisation;
* EB 5-d, held-out index 2 (``eb5_ho2``): 2000 iterations, 30 epochs, ``reg=0.01``, ``reg_m=5``, batch 256,
  ``learning_rate2=1e-4``, cost normalised by its maximum.

Both use the networks of the reference's notebooks (``FNet``, width 128, 3 hidden layers, LeakyReLU; the parameter
count matches the published ``best_model`` files) and Euler steps of 0.1 time units in the distribution-fitting
stage (the value the reference's only surviving notebook, ``dyngen_final``, passes; ``train``'s own default is 0.01,
ten times the work, so 0.1 favours the reference's CPU time). The reference keeps the model with the lowest training
OT loss (its ``best_model`` rule); the runner does the same and scores it after pretraining and after chosen epochs.

Data and split: bundled hematopoiesis (``X_emb``, the reference's own ``mouse_hematopoiesis.csv``), held-out day 4;
bundled EB subset, first 5 PCs standardised (``sctraj.pp.scale_embedding``), held-out day 13.5 (the reference's
EB file ``eb_pca50.csv`` is not in its repository snapshot, so its EB runs use our bundled subset in its CSV layout).
Scoring, the same for both: the cells of the time before the held-out one are pushed to it (100 Euler steps with
log-mass) and ``sctraj.tl.evaluate`` gives the W1 of the mass-weighted prediction against the observed cells.

Both sides run with one torch thread and one BLAS thread (``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1`` for the
reference's process) so that CPU seconds compare the work, not the spin-waiting of threads on a loaded machine.
The reference's distribution-fitting stage can be capped (``--ref-cpu-budget``); the CPU per epoch is then reported
and the full run's CPU is extrapolated (marked as such).

Run from the repository root::

    python benchmarks/bench_vgfm_reference.py --src /path/to/VGFM --datasets hema eb5 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RAW = HERE / "results" / "vgfm_reference_raw.json"
SETTINGS = {
    "hema": {"epochs1": 200, "epochs2": 100, "reg": 0.03, "reg_m": 10.0, "batch_size": 256, "learning_rate2": 1e-3,
             "norm_cost": False, "hidden": 128, "stepsize": 0.1, "eval_epochs": [1, 2, 5, 10, 20, 50]},
    "eb5": {"epochs1": 2000, "epochs2": 30, "reg": 0.01, "reg_m": 5.0, "batch_size": 256, "learning_rate2": 1e-4,
            "norm_cost": True, "hidden": 128, "stepsize": 0.1, "eval_epochs": [1, 2, 5, 10, 20]},
}


def split(name: str):
    import sctraj

    if name == "hema":
        a = sctraj.datasets.hematopoiesis()
        return a, "day", "X_emb", 4.0
    a = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(a, use_rep="X_pca", n_dims=5)
    return a, "day", "X_pca_scaled", 13.5


def run_reference(py: Path, src: str, name: str, seed: int, budget: float) -> dict:
    a, key, rep, held = split(name)
    t = a.obs[key].to_numpy(dtype=float)
    times = np.unique(t)
    ho = int(np.flatnonzero(np.isclose(times, held))[0])
    WORK.mkdir(exist_ok=True)
    inp, out = WORK / f"vgfmref_{name}_{seed}.npz", WORK / f"vgfmref_{name}_{seed}.json"
    arrays = {f"X_{k}": np.asarray(a.obsm[rep][np.isclose(t, s)], np.float64) for k, s in enumerate(times)}
    np.savez(inp, n_times=len(times), heldout=ho, seed=seed, threads=1, cpu_budget=budget, **SETTINGS[name],
             **arrays)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               MPLBACKEND="agg", WANDB_MODE="disabled")
    w0 = time.perf_counter()
    subprocess.run([str(py), str(HERE / "_vgfm_ref_runner.py"), src, str(inp), str(out)], check=True, env=env)
    res = json.loads(out.read_text())
    res["wall_seconds"] = time.perf_counter() - w0
    X_true = a.obsm[rep][np.isclose(t, held)]
    import sctraj

    for k, c in enumerate(res["checkpoints"]):
        pred = np.load(str(out).replace(".json", f"_pred{k}.npy"))
        w = np.load(str(out).replace(".json", f"_w{k}.npy"))
        c["W1"] = float(sctraj.tl.evaluate(pred, X_true, weights=w)["W1"])
    return res


def run_sctraj(name: str, seed: int) -> dict:
    import sctraj

    a, key, rep, held = split(name)
    t = a.obs[key].to_numpy(dtype=float)
    times = np.unique(t)
    prev = times[np.flatnonzero(np.isclose(times, held))[0] - 1]
    c0, w0 = time.process_time(), time.perf_counter()
    m = sctraj.tl.fit_flow(a, key, method="vgfm", use_rep=rep, exclude_times=[held], random_state=seed,
                           progress=False, trajectory_n_grid=0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    xs, lw = m.push(a.obsm[rep][np.isclose(t, prev)], prev, np.array([held]), n_steps=100)
    w1 = sctraj.tl.evaluate(xs[0], a.obsm[rep][np.isclose(t, held)], weights=np.exp(lw[0]))["W1"]
    return {"W1": float(w1), "cpu_seconds": cpu, "wall_seconds": wall}


def main() -> None:
    global RAW
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=False, help="checkout of github:DongyiWang-66/VGFM (outside this repository)")
    ap.add_argument("--datasets", nargs="+", default=["hema", "eb5"], choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ref-cpu-budget", type=float, default=float("inf"),
                    help="stop the reference's distribution-fitting stage after this many CPU seconds")
    ap.add_argument("--skip-reference", action="store_true", help="only the sctraj side")
    ap.add_argument("--smoke", action="store_true", help="a few reference iterations only (checks the set-up)")
    args = ap.parse_args()
    if args.smoke:
        for st in SETTINGS.values():
            st.update(epochs1=5, epochs2=1, eval_epochs=[])
        RAW = WORK / "vgfm_reference_smoke.json"
    import sctraj

    sctraj.settings.verbosity = "error"
    py = HERE / "_venvs" / "vgfm" / "bin" / "python"
    rows = json.loads(RAW.read_text()) if RAW.exists() else []
    for name in args.datasets:
        for seed in args.seeds:
            row = {"dataset": name, "seed": seed, "load_start": os.getloadavg()[0], "settings": SETTINGS[name]}
            if not args.skip_reference:
                row["reference"] = run_reference(py, args.src, name, seed, args.ref_cpu_budget)
            row["sctraj"] = run_sctraj(name, seed)
            row["load_end"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if not (r["dataset"] == name and r["seed"] == seed
                                            and ("reference" in r) == ("reference" in row))] + [row]
            RAW.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
