"""Cost of the fate functions and of the CellRank hand-off.

* ``--part fates``: ``tl.fate_probabilities`` for 10,000 source cells x 10,000 target cells (two time points, 30-d,
  5 cell types; an ``otcfm`` model with the default network, trained briefly: training is not timed) and
  ``tl.couplings`` on the same data. Wall and CPU seconds, and the peak memory the call allocates
  (resident memory above the start of the call, sampled every 5 ms) next to the size one dense n x n float64 matrix would take.
* ``--part cellrank``: ``RealTimeKernel`` on ``tl.couplings`` + GPCCA (Schur, macrostates, terminal states, fate
  probabilities, lineage drivers) on the simulated bifurcation for growing cell numbers, without petsc4py/slepc4py
  (dense Schur decomposition), with the peak resident memory of the process.

Usage: ``nice -n 5 python bench_fates_cost.py --part fates`` (from ``benchmarks/``; writes ``results/fates_cost.md``),
``--part cellrank`` (writes ``results/fates_cellrank.md``); both by default.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd


def _data(n: int, d: int, seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d)) * 3
    X0 = rng.normal(size=(n, d))
    lab = rng.integers(0, 5, n)
    X1 = centres[lab] + rng.normal(size=(n, d))
    obs = pd.DataFrame({"day": np.r_[np.zeros(n), np.ones(n)],
                        "cell_type": pd.Categorical(np.r_[np.full(n, None), np.array(list("ABCDE"))[lab]])},
                       index=[f"c{i}" for i in range(2 * n)])
    a = ad.AnnData(obs=obs)
    a.obsm["X_pca"] = np.r_[X0, X1].astype(np.float32)
    return a


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed(fn):
    """Result, wall s, CPU s, peak bytes above the resident size at the start (RSS sampled every 5 ms)."""
    import threading

    base, peak, stop = _rss(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss() - base)
            time.sleep(0.005)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    stop.set()
    th.join()
    return out, wall, cpu, max(peak[0], _rss() - base)


def part_fates(n: int, d: int) -> list[dict]:
    import sctraj

    a = _data(n, d)
    model = sctraj.tl.fit_flow(a, "day", method="otcfm", n_steps=50, progress=False, trajectory_n_grid=0)
    rows = []
    dense = n * n * 8
    for name, fn in (
        ("fate_probabilities", lambda: sctraj.tl.fate_probabilities(a, model, "cell_type")),
        ("couplings", lambda: sctraj.tl.couplings(a, model)),
    ):
        out, wall, cpu, peak = _timed(fn)
        extra = ""
        if name == "couplings":
            M = next(iter(out.values()))
            extra = f"{type(M).__name__}, {M.nnz:,} non-zeros"
        rows.append({"call": name, "source x target cells": f"{n:,} x {n:,}", "dims": d, "wall s": wall,
                     "CPU s": cpu, "peak extra RSS MB": peak / 2**20, "dense n x n would be MB": dense / 2**20,
                     "result": extra or "DataFrame"})
        print(rows[-1], flush=True)
    return rows


def part_cellrank(sizes) -> list[dict]:
    import sys

    import cellrank as cr
    import scanpy as sc

    import sctraj

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_fates import FIT, bifurcation

    rows = []
    for n_per_time in sizes:
        a = bifurcation(n=n_per_time, n_genes=50, seed=0)
        model = sctraj.tl.fit_flow(a, "time", method="otcfm", use_rep="X_sim", **FIT)
        a.obs["time"] = a.obs["time"].astype("category")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        w0, c0 = time.perf_counter(), time.process_time()
        sc.pp.neighbors(a, use_rep="X_sim", n_neighbors=15)
        k = cr.kernels.RealTimeKernel(a, time_key="time", couplings=sctraj.tl.couplings(a, model))
        k.compute_transition_matrix(self_transitions="all", conn_weight=0.2, threshold="auto", show_progress_bar=False)
        g = cr.estimators.GPCCA(k)
        g.compute_schur(n_components=5)
        g.compute_macrostates(n_states=2, cluster_key="fate")
        g.predict_terminal_states()
        g.compute_fate_probabilities(show_progress_bar=False)
        g.compute_lineage_drivers()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"cells": a.n_obs, "wall s": wall, "CPU s": cpu, "peak RSS MB (process)": rss,
                     "RSS growth MB": rss - rss0, "terminal states": ", ".join(g.terminal_states.cat.categories)})
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=["all", "fates", "cellrank"])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dims", type=int, default=30)
    ap.add_argument("--cellrank-sizes", type=int, nargs="+", default=[100, 300, 1000], help="cells per time point")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    for part in (["fates", "cellrank"] if args.part == "all" else [args.part]):
        run_part(part, args)


def run_part(part, args):
    from _common import table

    load0 = os.getloadavg()
    fmt = {"wall s": ".1f", "CPU s": ".1f", "peak extra RSS MB": ".0f", "dense n x n would be MB": ".0f",
           "peak RSS MB (process)": ".0f", "RSS growth MB": ".0f"}
    if part == "fates":
        rows = part_fates(args.n, args.dims)
        body = "## fate_probabilities and couplings, 10k x 10k\n\n" + table(rows, list(rows[0]), fmt)
    else:
        rows = part_cellrank(args.cellrank_sizes)
        body = ("## CellRank RealTimeKernel + GPCCA on tl.couplings (no petsc4py: dense Schur)\n\n"
                "Cells are three time points of the simulated bifurcation of `tests/test_fates.py` (50 genes).\n\n"
                + table(rows, list(rows[0]), fmt))
    load1 = os.getloadavg()
    text = body + (f"\n\nLoad average {load0[0]:.1f} at start, {load1[0]:.1f} at end (2 shared cores, torch with one "
                   "thread). CPU s counts every thread of the process; under load, wall time is mostly waiting.")
    print(text)
    if not args.no_write:
        from _common import write_result

        name, title = {"fates": ("fates_cost", "Cost of fate_probabilities and couplings"),
                       "cellrank": ("fates_cellrank", "Cost of the CellRank hand-off")}[part]
        write_result(name, title, text, notes=__doc__.split("Usage:")[0].strip())

if __name__ == "__main__":
    main()
