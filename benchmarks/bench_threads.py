"""One training step of the 3x64 SELU MLP (batch 256, 5-d) with 1 vs the default number of torch CPU threads.

Why sctraj trains with ``num_threads=1`` (``sctraj.engine.trainer``): a network this small gains nothing from
intra-op threads, and on a shared or oversubscribed CPU the extra threads spin-wait at every operation. Each setting
runs in its own process (torch's thread pool is fixed at first use).

Run: ``python benchmarks/bench_threads.py [--steps 300]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import table, write_result


def one(threads: int, steps: int) -> dict:
    import torch

    from sctraj.engine.nn import VectorField
    from sctraj.engine.trainer import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = VectorField(5, width=64, depth=3, act="selu")
    opt = make_optimizer(list(net.parameters()), 1e-3, 1e-5)
    x, t, u = torch.randn(256, 5), torch.rand(256), torch.randn(256, 5)
    for _ in range(20):  # warm-up
        loss = torch.mean((net(x, t) - u) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = torch.mean((net(x, t) - u) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"threads": threads, "ms/step (wall)": 1e3 * (time.perf_counter() - w) / steps,
            "ms/step (CPU)": 1e3 * (time.process_time() - c) / steps}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.steps)))
        return
    import os

    rows = []
    for n in sorted({1, os.cpu_count() or 1}):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--steps", str(args.steps)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
    for r in rows:
        r["x slower than 1 thread (wall)"] = r["ms/step (wall)"] / rows[0]["ms/step (wall)"]
    write_result("threads", "MLP training step: 1 vs all torch CPU threads", table(rows, list(rows[0]), dict.fromkeys(list(rows[0])[1:], ".2f")), "Measured while other jobs shared the CPUs (see the load average).")


if __name__ == "__main__":
    main()
