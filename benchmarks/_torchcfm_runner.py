"""torchcfm 1.0.7 side of bench_torchcfm.py; runs inside benchmarks/_venvs/torchcfm (no sctraj import).

Reimplements the multi-interval training of torchcfm's runner (``runner/src/models/cfm_module.py``,
``preprocess_batch`` / ``calc_loc_and_target``) around the library's own flow-matcher classes: every step draws
``batch_size`` cells from every kept time point, couples each consecutive pair of them with the matcher's
minibatch plan (256 x 256), gives each of the ``batch_size`` training rows one random interval, and trains the
3x64 SELU ``torchcfm.models.MLP`` on time in index units. The interval that skips the held-out point has twice the
length: its time is doubled and its target halved, as in the runner. Prediction: 100 Euler steps from the
previous time point to the held-out one.

Usage: python _torchcfm_runner.py IN.npz OUT.json   (IN: X_0..X_{T-1}, heldout, method, seed, n_steps, threads)
"""

import json
import sys
import time

import numpy as np
import torch
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
    SchrodingerBridgeConditionalFlowMatcher,
)
from torchcfm.models import MLP


def main(inp, out):
    d = np.load(inp)
    T = int(d["n_times"])
    X = [torch.as_tensor(d[f"X_{k}"], dtype=torch.float32) for k in range(T)]
    h = int(d["heldout"])
    method = str(d["method"])
    seed = int(d["seed"])
    n_steps = int(d["n_steps"])
    bs = int(d["batch_size"])
    torch.set_num_threads(int(d["threads"]))
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - torchcfm samples plans with the legacy global generator
    sigma = 0.1
    fm = {
        "icfm": lambda: ConditionalFlowMatcher(sigma=sigma),
        "otcfm": lambda: ExactOptimalTransportConditionalFlowMatcher(sigma=sigma),
        # the runner's sbcfm config uses the Sinkhorn plan (ot_sampler: "sinkhorn", reg 2 sigma^2)
        "sbcfm": lambda: SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="sinkhorn"),
    }[method]()
    dim = X[0].shape[1]
    net = MLP(dim=dim, w=64, time_varying=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    starts = [k for k in range(T - 1) if k != h]  # interval k goes k -> k+1, or k -> k+2 over the held-out point
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        batch = [x[torch.randint(len(x), (bs,))] for x in X]
        pairs = {}
        for k in starts:
            nxt = k + 2 if k + 1 == h else k + 1
            x0, x1 = batch[k], batch[nxt]
            if hasattr(fm, "ot_sampler"):
                x0, x1 = fm.ot_sampler.sample_plan(x0, x1)
            pairs[k] = (x0, x1)
        sel = torch.as_tensor(starts)[torch.randint(len(starts), (bs,))]
        x0 = torch.stack([pairs[int(k)][0][i] for i, k in enumerate(sel)])
        x1 = torch.stack([pairs[int(k)][1][i] for i, k in enumerate(sel)])
        # the base class draws t, the noise and x_t, and calls the subclass's sigma_t / conditional flow
        t, xt, ut = ConditionalFlowMatcher.sample_location_and_conditional_flow(fm, x0, x1)
        skip = (sel + 1 == h).float()
        ut = ut / (1 + skip)[:, None]
        t = t * (1 + skip) + sel.float()
        vt = net(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit_wall, fit_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    with torch.no_grad():
        x = X[h - 1].clone()
        n_euler = 100
        for i in range(n_euler):
            t = torch.full((len(x), 1), (h - 1) + i / n_euler)
            x = x + net(torch.cat([x, t], -1)) / n_euler
    np.save(out.replace(".json", ".npy"), x.numpy())
    with open(out, "w") as fh:
        json.dump({"fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu, "n_steps": n_steps,
                   "steps_per_second": n_steps / fit_wall, "final_loss": float(loss.detach())}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
