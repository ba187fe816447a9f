"""Fit a flow data-parallel on several processes (CPU cores, GPUs or nodes) with ``torchrun``.

Every process runs this script; ``fit_flow(..., distributed=True)`` joins them in one ``torch.distributed`` group
(``gloo`` on CPU, ``nccl`` on GPUs, one GPU per process), trains one network with the gradients averaged over the
processes, and writes the results on rank 0 only. ``--batch-size`` is per process: ``R`` processes see ``R x B``
pairs per interval and step.

One node, 2 processes::

    torchrun --standalone --nproc-per-node=2 examples/train_ddp.py --method otcfm --out fitted.h5ad

One node with 4 GPUs (one process each)::

    torchrun --standalone --nproc-per-node=gpu examples/train_ddp.py --device cuda --out fitted.h5ad

Several nodes (the same command on every node; ``HOST`` is any one of them, reachable by the others on port 29500)::

    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --rdzv-id=sctraj-run1 \\
        examples/train_ddp.py --input data.h5ad --time-key day --use-rep X_pca --n-dims 30 --out fitted.h5ad

Without ``--input`` the bundled embryoid-body time course is used (5 PCs, standardised). ``--heldout T`` fits without
time ``T`` and reports (rank 0) the W1 distance between the cells of the previous time pushed to ``T`` and the
observed ones. ``--json FILE`` writes the run's numbers (world size, steps per second, W1) for benchmarks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="an .h5ad file (default: the bundled EB data, 5 standardised PCs)")
    p.add_argument("--time-key", default="day")
    p.add_argument("--use-rep", default="X_pca_scaled")
    p.add_argument("--n-dims", type=int)
    p.add_argument("--method", default="otcfm")
    p.add_argument("--population-key", help="obs column with population labels (metafm)")
    p.add_argument("--n-steps", type=int)
    p.add_argument("--batch-size", type=int, help="pairs per interval and step, per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (each process takes cuda:<local rank>)")
    p.add_argument("--heldout", type=float, help="leave this time out and report the W1 at it")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter")
    p.add_argument("--out", help="write the annotated AnnData here (rank 0)")
    p.add_argument("--model", help="save the model here (rank 0)")
    p.add_argument("--json", help="write the run's numbers here (rank 0)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    import sctraj
    from sctraj.cli import _parse_params

    args = parse_args(argv)
    torch.set_num_threads(1)  # one process per core: extra threads only compete (benchmarks/results/threads.md)
    if args.input:
        import anndata as ad

        adata = ad.read_h5ad(args.input)
    else:
        adata = sctraj.datasets.eb()
        sctraj.pp.scale_embedding(adata, use_rep="X_pca", n_dims=5)
    exclude = [args.heldout] if args.heldout is not None else None
    t0 = time.perf_counter()
    model = sctraj.tl.fit_flow(
        adata, args.time_key, method=args.method, use_rep=args.use_rep, n_dims=args.n_dims,
        population_key=args.population_key, exclude_times=exclude, n_steps=args.n_steps,
        batch_size=args.batch_size, random_state=args.seed, device=args.device, distributed=True,
        progress=False, **_parse_params(args.param),
    )
    wall = time.perf_counter() - t0
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:  # fit_flow wrote the outputs into adata on rank 0 only
        fit_s = float(model.setup["fit_seconds"])
        res = {"method": args.method, "world_size": world, "batch_size_per_rank": int(model.setup["batch_size"]),
               "n_steps": int(model.setup["n_steps"]), "fit_seconds": fit_s,
               "steps_per_second": model.setup["n_steps"] / fit_s, "wall_seconds": wall, "seed": args.seed}
        if args.heldout is not None:
            times = model.times
            prev = float(times[times < args.heldout].max())
            pred = sctraj.tl.predict(adata, model, source_time=prev, target_time=args.heldout)
            t = adata.obs[args.time_key].to_numpy(dtype=float)
            true = np.asarray(adata.obsm[args.use_rep])[np.isclose(t, args.heldout), : model.dim]
            w = pred.obs["weight"].to_numpy() if model.has_growth else None
            res["heldout"] = args.heldout
            res["W1"] = sctraj.tl.evaluate(pred.obsm[args.use_rep], true, weights=w, random_state=args.seed)["W1"]
        print(json.dumps(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res) + "\n")
        if args.out:
            adata.write_h5ad(args.out)
        if args.model:
            model.save(args.model)
    dist.barrier()  # the other ranks wait until rank 0 has written its files
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
