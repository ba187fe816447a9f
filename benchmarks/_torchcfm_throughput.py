"""torchcfm 1.0.7 side of bench_throughput.py (runs in benchmarks/_venvs/torchcfm; no sctraj import).

The library's own training loop for two snapshots: draw 256 cells from each, let
ExactOptimalTransportConditionalFlowMatcher couple them (exact 256 x 256 OT) and draw t, x_t, u_t, then one AdamW
step of torchcfm.models.MLP (3x64 SELU). Usage: python _torchcfm_throughput.py IN.npz OUT.json
"""

import json
import sys
import time

import numpy as np
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher
from torchcfm.models import MLP


def main(inp, out):
    d = np.load(inp)
    x0_all, x1_all = torch.as_tensor(d["X0"]), torch.as_tensor(d["X1"])
    n_steps, bs = int(d["n_steps"]), int(d["batch_size"])
    torch.set_num_threads(int(d["threads"]))
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - torchcfm samples plans with the legacy global generator
    res = {}
    for name, fm in (("icfm", ConditionalFlowMatcher(sigma=0.1)),
                     ("otcfm", ExactOptimalTransportConditionalFlowMatcher(sigma=0.1))):
        net = MLP(dim=x0_all.shape[1], w=64, time_varying=True)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        for _ in range(n_steps):
            x0 = x0_all[torch.randint(len(x0_all), (bs,))]
            x1 = x1_all[torch.randint(len(x1_all), (bs,))]
            t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
            loss = torch.mean((net(torch.cat([xt, t[:, None]], -1)) - ut) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        res[name] = {"wall": time.perf_counter() - t_wall, "cpu": time.process_time() - t_cpu, "n_steps": n_steps}
    with open(out, "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
