"""Where the time of an sctraj OT-CFM training step goes, compared with the bare-MLP limit (issue 7).

Runs ``fit_flow(method="otcfm")`` under cProfile (main thread: the OT solves run in the sampler's background thread
and appear only as the time the main thread waits for them) on the two data sets of ``bench_throughput.py`` and
splits the time per step into: network forward, backward, AdamW step, batch assembly (gathers, path, loss),
chunk refill (pair indices, times and noise for ``chunk_steps`` steps), waiting for the next OT plan, and the rest
(Python loop, progress bookkeeping). cProfile inflates Python-heavy parts; read the shares, not the totals.

Run: ``python benchmarks/bench_profile.py [--steps 1000]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from _common import table, write_result
from bench_throughput import datasets

PARTS = {
    "network forward": ("nn.py", "forward"),
    "backward": ("_tensor.py", "backward"),
    "AdamW step": ("optimizer.py", "wrapper"),
    "chunk refill": ("cfm.py", "refill"),
    "OT wait (background solve not ready)": ("_base.py", "result"),
    "zero_grad": ("optimizer.py", "zero_grad"),
}


def profile(X0, X1, steps: int):
    import anndata as ad
    import numpy as np

    import sctraj

    a = ad.AnnData(np.concatenate([X0, X1]).astype(np.float32))
    a.obs["t"] = np.r_[np.zeros(len(X0)), np.ones(len(X1))]
    a.obsm["X_emb"] = a.X.copy()
    sctraj.tl.fit_flow(a.copy(), "t", method="otcfm", use_rep="X_emb", n_steps=20, progress=False,
                       trajectory_n_grid=0)  # warm-up: imports, first-call costs
    pr = cProfile.Profile()
    pr.enable()
    model = sctraj.tl.fit_flow(a, "t", method="otcfm", use_rep="X_emb", n_steps=steps, progress=False,
                               trajectory_n_grid=0)
    pr.disable()
    st = pstats.Stats(pr).stats
    cum = {}
    for (fname, _, func), (_, _, _, ct, _) in st.items():
        for part, (f, fn) in PARTS.items():
            if fname.endswith(f) and func == fn:
                cum[part] = cum.get(part, 0.0) + ct
    loss_fn = sum(ct for (f, _, fn), (_, _, _, ct, _) in st.items() if f.endswith("cfm.py") and fn == "loss_fn")
    train = sum(ct for (f, _, fn), (_, _, _, ct, _) in st.items() if f.endswith("trainer.py") and fn == "train")
    fwd, refill = cum.get("network forward", 0.0), cum.get("chunk refill", 0.0)
    wait = cum.get("OT wait (background solve not ready)", 0.0)
    out = {
        "network forward": fwd,
        "backward": cum.get("backward", 0.0),
        "AdamW step": cum.get("AdamW step", 0.0),
        "zero_grad": cum.get("zero_grad", 0.0),
        "batch assembly (gathers, path, loss)": loss_fn - fwd - refill,
        "chunk refill (excl. OT wait)": refill - wait,
        "OT wait (background solve not ready)": wait,
    }
    out["loop overhead (history sync, Python)"] = train - sum(out.values())
    return {k: 1e3 * v / steps for k, v in out.items()}, 1e3 * model.setup["fit_seconds"] / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    for name, (X0, X1) in datasets().items():
        parts, wall = profile(X0, X1, args.steps)
        total = sum(parts.values())
        for k, v in parts.items():
            rows.append({"data": name, "part": k, "ms/step (profiled)": v, "share": v / total})
        rows.append({"data": name, "part": "total (profiled)", "ms/step (profiled)": total, "share": 1.0})
        print(rows[-1], flush=True)
    cols = list(rows[0])
    write_result("throughput_profile", f"Breakdown of an sctraj OT-CFM step, {args.steps} steps, batch 256",
                 table(rows, cols, {"ms/step (profiled)": ".3f", "share": ".2f"}),
                 "The MLP-only limit is forward + backward + AdamW step + zero_grad; everything else is the gap.")


if __name__ == "__main__":
    main()
