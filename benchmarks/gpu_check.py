"""One-command GPU check (issue 15, item 6): every method's default fit on a GPU against the same fits on the CPU.

For every registered method, with its defaults (only ``device`` differs):

* leave-one-out W1 on the bundled data, fitted on ``device`` and on the CPU with the same seeds: hematopoiesis
  (``X_emb``, held-out day 4) for the methods that need no population labels, ``simulate_populations`` (held-out
  t = 1, ``population_key="population"``) for ``metafm``. The CPU fits run in a pool of worker processes at the same
  time as the GPU fits. A GPU row "agrees" when the difference of the mean W1 is within two standard errors of the
  difference (``2 * sqrt((sd_gpu^2 + sd_cpu^2) / n_seeds)``), or within 1 % of the CPU mean when both spreads are
  smaller than that;
* training steps per second and the peak GPU memory of the fit (``torch.cuda.max_memory_allocated``);

plus one ``otcfm`` fit on 1,000,000 synthetic cells x 50 dims (three time points of a drifting, splitting Gaussian
mixture), with its wall time, steps per second, peak GPU memory and a sanity W1 on 5,000-cell subsamples.

It writes ``benchmarks/results/gpu.md``. On one GPU the default run takes a few minutes (aim: under 5).

Run from the repository root::

    python benchmarks/gpu_check.py                       # device cuda, seeds 0 1 2, writes benchmarks/results/gpu.md
    python benchmarks/gpu_check.py --device cpu --smoke  # dry run without a GPU: tiny fits, writes benchmarks/_work/

``--smoke`` shrinks everything (600-cell subsample, 30 steps, one seed, 20,000 cells for the scale row) so that the
whole script can be executed on a laptop CPU; its numbers mean nothing, it only proves the script runs end to end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _data(task: str, max_cells: int | None):
    import sctraj

    if task == "hematopoiesis":
        a = sctraj.datasets.hematopoiesis()
        kw = {"use_rep": "X_emb", "heldout": 4.0}
        key = "day"
    else:
        a = sctraj.datasets.simulate_populations(n_populations=20, n_cells=100, random_state=0)
        kw = {"use_rep": "X_sim" if "X_sim" in a.obsm else next(iter(a.obsm)), "heldout": 1.0,
              "population_key": "population"}
        key = "time"
    if max_cells is not None and a.n_obs > max_cells:
        rng = np.random.default_rng(0)
        a = a[np.sort(rng.choice(a.n_obs, max_cells, replace=False))].copy()
    return a, key, kw


def fit_one(method: str, task: str, device: str, seed: int, n_steps: int | None, max_cells: int | None) -> dict:
    """Leave-one-out W1 of one default fit; GPU runs also report steps/s and peak memory."""
    import torch

    import sctraj
    from sctraj.models import get_method

    warnings.filterwarnings("ignore")
    sctraj.settings.verbosity = "error"
    a, key, kw = _data(task, max_cells)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    df = sctraj.tl.leave_one_out(a, key, methods=[method], seeds=(seed,), references=False, progress=False,
                                 device=device, n_steps=n_steps, **kw)
    if cuda:
        torch.cuda.synchronize()
    row = df[df["method"] == method].iloc[0]
    steps = n_steps if n_steps is not None else get_method(method).default_n_steps
    fit_s = float(row["fit_seconds"])
    return {
        "method": method, "task": task, "device": device, "seed": seed, "W1": float(row["W1"]),
        "fit_seconds": fit_s, "steps_per_s": steps / fit_s if fit_s > 0 else float("nan"),
        "peak_gpu_MB": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }


def _cpu_worker(args):
    import torch

    torch.set_num_threads(1)
    return fit_one(*args)


def scale_row(device: str, n_cells: int, n_dims: int, n_steps: int | None) -> dict:
    """``otcfm`` with its defaults on ``n_cells`` synthetic cells x ``n_dims`` dims, three time points."""
    import anndata as ad
    import pandas as pd
    import torch

    import sctraj
    from sctraj.models import get_method

    warnings.filterwarnings("ignore")
    sctraj.settings.verbosity = "error"
    rng = np.random.default_rng(0)
    n_t = n_cells // 3
    centres = rng.normal(size=(2, n_dims)).astype(np.float32)
    X, T = [], []
    for k, t in enumerate((0.0, 1.0, 2.0)):
        lobe = rng.integers(2, size=n_t)
        x = rng.normal(scale=0.5, size=(n_t, n_dims)).astype(np.float32) + 0.5 * k * centres[lobe]
        X.append(x)
        T.append(np.full(n_t, t))
    X = np.concatenate(X)
    a = ad.AnnData(obs=pd.DataFrame({"time": np.concatenate(T)}, index=[f"c{i}" for i in range(len(X))]))
    a.obsm["X_pca"] = X
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = sctraj.tl.fit_flow(a, "time", method="otcfm", use_rep="X_pca", device=device, n_steps=n_steps,
                               progress=False, trajectory_n_grid=0)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    steps = int(model.setup.get("n_steps", n_steps or get_method("otcfm").default_n_steps))
    fit_s = float(model.setup["fit_seconds"])
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    # sanity: push 5,000 cells of t = 0 to t = 2 and compare with 5,000 observed cells (no-movement W1 beside it)
    i0 = rng.choice(n_t, 5000 if n_t >= 5000 else n_t, replace=False)
    i2 = 2 * n_t + rng.choice(n_t, len(i0), replace=False)
    xs, _ = model.push(X[i0], 0.0, np.array([2.0]), n_steps=100)
    w1 = sctraj.tl.evaluate(np.asarray(xs[0]), X[i2])["W1"]
    w1_0 = sctraj.tl.evaluate(X[i0], X[i2])["W1"]
    return {"cells": len(X), "dims": n_dims, "device": device, "n_steps": steps, "fit_seconds": fit_s,
            "fit_and_outputs_seconds": wall, "steps_per_s": steps / fit_s, "peak_gpu_MB": peak,
            "W1_t2_5k": w1, "W1_no_movement_5k": w1_0}


def summarise(rows: list[dict], device: str) -> list[dict]:
    out = []
    for (method, task) in dict.fromkeys((r["method"], r["task"]) for r in rows):
        g = [r for r in rows if r["method"] == method and r["task"] == task and r["device"] == device]
        c = [r for r in rows if r["method"] == method and r["task"] == task and r["device"] == "cpu"]
        wg, wc = np.array([r["W1"] for r in g]), np.array([r["W1"] for r in c])
        sg, sc = (wg.std(ddof=1) if len(wg) > 1 else 0.0), (wc.std(ddof=1) if len(wc) > 1 else 0.0)
        tol = max(2 * np.sqrt((sg**2 + sc**2) / max(len(wg), 1)), 0.01 * wc.mean())
        diff = wg.mean() - wc.mean()
        out.append({
            "method": method, "data": task, "seeds": len(wg),
            f"W1 {device} (sd)": f"{wg.mean():.4f} ({sg:.4f})", "W1 cpu (sd)": f"{wc.mean():.4f} ({sc:.4f})",
            "difference": f"{diff:+.4f}", "tolerance": f"{tol:.4f}", "agrees": "yes" if abs(diff) <= tol else "NO",
            f"steps/s {device}": f"{np.mean([r['steps_per_s'] for r in g]):.0f}",
            "steps/s cpu (1 thread)": f"{np.mean([r['steps_per_s'] for r in c]):.0f}",
            "peak GPU MB": f"{np.max([r['peak_gpu_MB'] for r in g]):.0f}",
        })
    return out


def md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="device of the checked fits (default cuda)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --smoke)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--smoke", action="store_true", help="tiny dry run (works on a CPU): proves the script runs")
    ap.add_argument("--workers", type=int, default=None, help="CPU worker processes for the CPU fits")
    ap.add_argument("--scale-cells", type=int, default=None, help="cells of the otcfm scale row (default 1,000,000)")
    ap.add_argument("--out", default=None, help="Markdown output (default benchmarks/results/gpu.md; "
                                                "benchmarks/_work/gpu_smoke.md with --smoke)")
    args = ap.parse_args(argv)

    import torch

    from sctraj.models import available_methods, get_method

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available to torch here. Run it on a machine with a GPU, or try the "
              "dry run: python benchmarks/gpu_check.py --device cpu --smoke", file=sys.stderr)
        return 2
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    n_steps = 30 if args.smoke else None
    max_cells = 600 if args.smoke else None
    scale_cells = args.scale_cells or (20_000 if args.smoke else 1_000_000)
    out = Path(args.out) if args.out else (HERE / "_work" / "gpu_smoke.md" if args.smoke else HERE / "results" /
                                           "gpu.md")
    methods = args.methods or available_methods()
    jobs = []
    for m in methods:
        task = "simulate_populations" if getattr(get_method(m), "needs_population", False) \
            else "hematopoiesis"
        jobs += [(m, task, s) for s in seeds]
    t_start = time.perf_counter()
    workers = args.workers or max(1, min(8, (os.cpu_count() or 2) - 2))
    rows: list[dict] = []
    with ProcessPoolExecutor(workers) as pool:
        cpu_futs = [pool.submit(_cpu_worker, (m, task, "cpu", s, n_steps, max_cells)) for m, task, s in jobs]
        if args.device != "cpu":
            for m, task, s in jobs:
                rows.append(fit_one(m, task, args.device, s, n_steps, max_cells))
                print(f"[{time.perf_counter() - t_start:5.0f}s] {args.device} {m} seed {s}: "
                      f"W1 {rows[-1]['W1']:.4f}, {rows[-1]['steps_per_s']:.0f} steps/s", flush=True)
        for f in cpu_futs:
            rows.append(f.result())
            print(f"[{time.perf_counter() - t_start:5.0f}s] cpu {rows[-1]['method']} seed {rows[-1]['seed']}: "
                  f"W1 {rows[-1]['W1']:.4f}", flush=True)
    if args.device == "cpu":  # the dry run compares the CPU with itself: label the rows as the checked device too
        rows += [dict(r, device="cpu-checked") for r in rows]
        checked = "cpu-checked"
    else:
        checked = args.device
    summary = summarise(rows, checked)
    print(f"[{time.perf_counter() - t_start:5.0f}s] scale row: otcfm on {scale_cells:,} cells x 50 dims", flush=True)
    scale = scale_row(args.device, scale_cells, 50, n_steps)
    total = time.perf_counter() - t_start
    gpu_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU run)"
    text = "\n".join([
        "# GPU check" + (" (SMOKE RUN: tiny fits, numbers are meaningless)" if args.smoke else ""),
        "",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; total wall time {total:.0f} s",
        f"- device: {args.device}, GPU: {gpu_name}; torch {torch.__version__}; CPU: {platform.processor() or ''} "
        f"{os.cpu_count()} logical CPUs, {workers} worker processes for the CPU fits (1 torch thread each)",
        f"- seeds {seeds}; every method with its defaults"
        + (f", {n_steps} steps, {max_cells}-cell subsample" if args.smoke else "") + ".",
        "",
        "Leave-one-out W1 (hematopoiesis `X_emb`, held-out day 4; `metafm`: `simulate_populations`, held-out t = 1), "
        "fitted on the checked device and on the CPU. `agrees`: |difference| <= tolerance = max(2 sqrt((sd_dev^2 + "
        "sd_cpu^2) / n), 1 % of the CPU mean). steps/s: training steps per second of the fit (the CPU fits ran "
        "several at a time).",
        "",
        md_table(summary),
        "",
        f"`otcfm` (defaults) on {scale['cells']:,} synthetic cells x {scale['dims']} dims (three time points):",
        "",
        md_table([scale]),
        "",
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0 if all(r["agrees"] == "yes" for r in summary) or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
