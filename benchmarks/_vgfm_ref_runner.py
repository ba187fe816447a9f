"""Runs the VGFM reference code (github: DongyiWang-66/VGFM) on one leave-one-out split; executed in its own venv.

Usage: ``_vgfm_ref_runner.py SRC IN.npz OUT.json``. ``SRC`` is a checkout of the reference repository (outside this
repository; its code is imported, never copied). ``IN.npz`` holds the cells of each time index (``X_0``, ``X_1``, ...),
the held-out index and the settings. The reference's two stages run as its notebooks run them: ``VGFM.train.pretrain``
(flow and growth matching on its semi-relaxed UOT plans) with Adam at its default learning rate, then
``VGFM.train.train`` (the distribution-fitting stage) with Adam at ``learning_rate2``, one epoch per call so that the
prediction can be scored along the way; after each epoch the model with the lowest training OT loss so far is kept,
which is the notebooks' ``best_model`` rule. At each checkpoint the cells of the time before the held-out one are
pushed to the held-out time (100 Euler steps, positions and log-mass) with the kept model, and the prediction and
its weights are saved for scoring by the caller. CPU seconds (``time.process_time``, every thread of the process)
exclude the scoring. Logging, printing and progress bars of the reference are switched off.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import random
import sys
import time

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    src, inp, out = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, src)
    import numpy as np
    import pandas as pd
    import torch
    from torchdiffeq import odeint

    d = np.load(inp)
    threads = int(d["threads"])
    torch.set_num_threads(threads)
    seed = int(d["seed"])
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the reference draws from NumPy's global generator
    torch.manual_seed(seed)
    n_times, ho = int(d["n_times"]), int(d["heldout"])
    X = [np.asarray(d[f"X_{k}"], np.float64) for k in range(n_times)]
    dim = X[0].shape[1]
    df = pd.DataFrame(np.concatenate(X), columns=[f"x{i + 1}" for i in range(dim)])
    df.insert(0, "samples", np.concatenate([np.full(len(x), float(k)) for k, x in enumerate(X)]))

    from VGFM.losses import OT_loss1
    from VGFM.models import FNet, ODEFunc2
    from VGFM.train import pretrain, train

    quiet = logging.getLogger("vgfm_reference")
    quiet.disabled = True
    logging.disable(logging.CRITICAL)
    sink = io.StringIO()

    model = FNet(in_out_dim=dim, hidden_dim=int(d["hidden"]), n_hiddens=3, activation="leakyrelu")
    sizes = np.array([len(x) for x in X], float)
    relative_mass = torch.tensor(sizes / sizes[0])
    checkpoints = []

    def push(net):
        x0 = torch.tensor(X[ho - 1], dtype=torch.float32)
        lw0 = torch.zeros(len(x0), 1)
        t = torch.tensor([float(ho - 1), float(ho)])
        with torch.no_grad():
            xs, lws = odeint(ODEFunc2(net), (x0, lw0), t, method="euler", options={"step_size": 1.0 / 100})
        return xs[-1].detach().numpy(), torch.exp(lws[-1]).detach().numpy().ravel()

    def checkpoint(stage, epoch, net, cpu):
        pred, w = push(net)
        k = len(checkpoints)
        np.save(out.replace(".json", f"_pred{k}.npy"), pred)
        np.save(out.replace(".json", f"_w{k}.npy"), w)
        checkpoints.append({"stage": stage, "epoch": epoch, "cpu_seconds": cpu})

    cpu = 0.0
    c0 = time.process_time()
    opt = torch.optim.Adam(model.parameters())
    with contextlib.redirect_stdout(sink):
        model, *_ = pretrain(model, df, opt, n_epoch=int(d["epochs1"]), hold_out=ho, logger=quiet,
                             relative_mass=relative_mass, reg=float(d["reg"]), reg_m=[float(d["reg_m"]), np.inf],
                             norm_cost=bool(d["norm_cost"]), batch_size=int(d["batch_size"]))
    cpu += time.process_time() - c0
    checkpoint("pretrain", 0, model, cpu)

    epochs2 = int(d["epochs2"])
    budget = float(d["cpu_budget"])
    at = {int(e) for e in d["eval_epochs"]} | {epochs2}
    best, best_loss = copy.deepcopy(model.state_dict()), float("inf")
    opt2 = torch.optim.Adam(model.parameters(), lr=float(d["learning_rate2"]))
    groups = sorted(float(g) for g in df["samples"].unique())
    tmp = out.replace(".json", "_model.pt")
    done = 0
    for epoch in range(1, epochs2 + 1):
        c0 = time.process_time()
        with contextlib.redirect_stdout(sink):
            local, *_ = train(model, df, groups, opt2, 1, criterion=OT_loss1(which="emd", use_cuda=False),
                              use_cuda=False, apply_losses_in_time=True, hold_one_out=True, hold_out=float(ho),
                              sample_size=(len(X[0]),), relative_mass=relative_mass, initial_size=len(X[0]),
                              sample_with_replacement=False, logger=quiet, device=torch.device("cpu"),
                              best_model_path=tmp, stepsize=float(d["stepsize"]))
        last = [v[-1] for v in local.values() if v][-1]
        if last < best_loss:
            best_loss, best = last, copy.deepcopy(model.state_dict())
        cpu += time.process_time() - c0
        done = epoch
        if epoch in at or cpu > budget:
            kept = copy.deepcopy(model)
            kept.load_state_dict(best)
            checkpoint("train", epoch, kept, cpu)
        if cpu > budget:
            break
    with contextlib.suppress(OSError):
        os.remove(tmp)
    with open(out, "w") as fh:
        json.dump({"checkpoints": checkpoints, "epochs2_done": done, "epochs2": epochs2, "threads": threads,
                   "torch": torch.__version__}, fh)


if __name__ == "__main__":
    main()
