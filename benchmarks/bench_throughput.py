"""Training throughput of OT-CFM on CPU: sctraj vs torchcfm 1.0.7 vs the bare-MLP limit (issue 7).

Same network (3x64 SELU MLP on [x, t]), same batch (256 pairs per step), AdamW 1e-3, one torch CPU thread on every
side, two snapshots. Rows:

* ``MLP only``: forward, backward and AdamW step on fixed tensors - the limit of any flow-matching step.
* ``torchcfm``: its library loop (ExactOptimalTransportConditionalFlowMatcher: exact 256 x 256 OT every step), in
  ``benchmarks/_venvs/torchcfm`` via ``_torchcfm_throughput.py``.
* ``sctraj``: ``fit_flow`` with its defaults except ``batch_size=256`` (already the default) and ``n_steps``.

Data: ``small`` = EB days 1.5 -> 7.5 (first 5 PCs standardised, 550 cells each: one exact full-data plan), ``large``
= synthetic 5-d, 20,000 cells per snapshot (block plans of ``ot_block_size`` refreshed every ``ot_refresh`` steps,
solved in the background thread). The peer runs right before sctraj on the same data; the ratio is per row.
CPU seconds count every thread of the process (so sctraj's OT thread is included).

Run: ``python benchmarks/bench_throughput.py [--steps 1000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
from _common import HERE, WORK, peer_python, table, write_result


def mlp_only(n_steps: int, dim: int) -> dict:
    import torch

    from sctraj.engine.nn import VectorField
    from sctraj.engine.trainer import cpu_threads, make_optimizer

    with cpu_threads(1):
        torch.manual_seed(0)
        net = VectorField(dim, width=64, depth=3, act="selu")
        opt = make_optimizer(list(net.parameters()), 1e-3, 1e-5)
        x, t, u = torch.randn(256, dim), torch.rand(256), torch.randn(256, dim)
        w, c = time.perf_counter(), time.process_time()
        for _ in range(n_steps):
            loss = torch.mean((net(x, t) - u) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return {"wall": time.perf_counter() - w, "cpu": time.process_time() - c}


def sctraj_fit(X0, X1, method: str, n_steps: int, **kw) -> dict:
    import anndata as ad

    import sctraj

    a = ad.AnnData(np.concatenate([X0, X1]).astype(np.float32))
    a.obs["t"] = np.r_[np.zeros(len(X0)), np.ones(len(X1))]
    a.obsm["X_emb"] = a.X.copy()
    c = time.process_time()
    model = sctraj.tl.fit_flow(a, "t", method=method, use_rep="X_emb", n_steps=n_steps, batch_size=256,
                               progress=False, trajectory_n_grid=0, **kw)
    return {"wall": float(model.setup["fit_seconds"]), "cpu": time.process_time() - c}


def peer(X0, X1, n_steps: int, tag: str) -> dict:
    py = peer_python("torchcfm", "torchcfm==1.0.7")
    WORK.mkdir(exist_ok=True)
    inp, out = WORK / f"thr_{tag}.npz", WORK / f"thr_{tag}.json"
    np.savez(inp, X0=X0.astype(np.float32), X1=X1.astype(np.float32), n_steps=n_steps, batch_size=256, threads=1)
    subprocess.run([str(py), str(HERE / "_torchcfm_throughput.py"), str(inp), str(out)], check=True)
    return json.loads(out.read_text())


def datasets():
    import sctraj

    eb = sctraj.datasets.eb()
    sctraj.pp.scale_embedding(eb, use_rep="X_pca", n_dims=5)
    d = eb.obs["day"].to_numpy()
    Z = eb.obsm["X_pca_scaled"]
    rng = np.random.default_rng(0)
    big0 = rng.normal(size=(20_000, 5))
    big1 = rng.normal(size=(20_000, 5)) * np.array([1.5, 1, 0.7, 1, 1]) + np.array([2.0, -1, 0, 0.5, 0])
    return {"small (EB 2x550)": (Z[d == 1.5], Z[d == 7.5]), "large (synthetic 2x20000)": (big0, big1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    n = args.steps
    rows = []
    sctraj_fit(*(x[:64] for x in next(iter(datasets().values()))), "otcfm", 5)  # warm-up: imports, first calls
    for name, (X0, X1) in datasets().items():
        p = peer(X0, X1, n, name.split()[0])
        base = mlp_only(n, X0.shape[1])
        ours = {m: sctraj_fit(X0, X1, m, n) for m in ("icfm", "otcfm")}
        # block plans served for 50 steps instead of 25 (only matters for the large snapshots)
        ours["otcfm50"] = sctraj_fit(X0, X1, "otcfm", n, ot_refresh=50)
        for label, r in (("MLP only (limit)", base), ("torchcfm icfm", p["icfm"]), ("torchcfm otcfm", p["otcfm"]),
                         ("sctraj icfm", ours["icfm"]), ("sctraj otcfm", ours["otcfm"]),
                         ("sctraj otcfm, ot_refresh=50", ours["otcfm50"])):
            rows.append({"data": name, "loop": label, "steps/s (wall)": n / r["wall"],
                         "ms/step (CPU)": 1e3 * r["cpu"] / n,
                         "x torchcfm otcfm (wall)": p["otcfm"]["wall"] / r["wall"],
                         "x torchcfm otcfm (CPU)": p["otcfm"]["cpu"] / r["cpu"]})
        print(rows[-6:], flush=True)
    cols = list(rows[0])
    body = table(rows, cols, dict.fromkeys(cols[2:], ".2f"))
    write_result("throughput", f"OT-CFM training throughput on CPU, batch 256, {n} steps (issue 7)", body,
                 "'x torchcfm otcfm' = speed-up over torchcfm's OT-CFM loop measured in the same run (higher is "
                 "better). See the breakdown in `benchmarks/results/throughput_profile.md`.")


if __name__ == "__main__":
    main()
