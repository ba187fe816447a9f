"""The body of one rank in tests/test_ddp.py (imported by spawned processes; not a test module itself).

Each rank joins a ``gloo`` group through a file store (no network port to find), runs the scenarios and writes what
it saw into ``outdir/rank<r>.pt`` for the parent test to compare. Every collective has a timeout, so a bug cannot
hang the parent's test run.
"""

from __future__ import annotations

import datetime
import traceback
from pathlib import Path

DDP_TINY = {"width": 16, "depth": 2, "progress": False, "trajectory_n_grid": 0}


def data():
    import numpy as np

    import sctraj

    ad = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.5), n_dims=3, random_state=0)
    ad.obsm["X_pca"] = ad.obsm["X_sim"].copy()
    ad.obs["replicate"] = np.random.default_rng(0).choice(["r1", "r2", "r3"], size=ad.n_obs)
    return ad


def heldout_w1(ad, model, seed: int) -> float:
    import sctraj

    pred = sctraj.tl.predict(ad, model, source_time=0.0, target_time=1.0)
    true = ad.obsm["X_pca"][ad.obs["time"].to_numpy() == 1.0]
    return float(sctraj.tl.evaluate(pred.obsm["X_pca"], true, random_state=seed)["W1"])


def state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.method.state_dict().items()}


def w1_fit(ad, seed: int, batch_size: int, n_steps: int, **kw):
    """The held-out-time fit whose W1 the test compares between 2 ranks and one process with twice the batch."""
    import sctraj

    return sctraj.tl.fit_flow(ad, "time", method="otcfm", use_rep="X_pca", exclude_times=[1.0], random_state=seed,
                              batch_size=batch_size, n_steps=n_steps, **{**DDP_TINY, "width": 32}, **kw)


def main(rank: int, world: int, store: str, outdir: str, w1_seeds: tuple[int, ...], n_steps: int, batch: int) -> None:
    import torch
    import torch.distributed as dist

    import sctraj
    import sctraj.models
    from sctraj.engine import distributed as sd
    from sctraj.engine.trainer import train

    torch.set_num_threads(1)
    sctraj.settings.verbosity = "error"
    out: dict = {}
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # 1. every method, data-parallel (automatic: a process group is initialised): weights after training, and
        #    whether this rank wrote into its AnnData
        out["methods"] = {}
        for m in sctraj.models.available_methods():
            ad = data()
            before = set(ad.obsm) | set(ad.obs) | set(ad.uns)
            kw = {"population_key": "replicate"} if m == "metafm" else {}
            if m == "vgfm":
                kw["warmup"] = 0.5  # reach phase 2 (the integrated distribution-fitting loss) within the few steps
                kw["phase2_every"] = 1  # on each of them
            if m == "metricfm":
                kw["metric"] = "rbf"  # k-means centres: a metric state drawn at random, broadcast from rank 0
                kw["rbf_n_centers"] = 8
            model = sctraj.tl.fit_flow(ad, "time", method=m, use_rep="X_pca", n_steps=6, batch_size=16,
                                       random_state=3, **DDP_TINY, **kw)
            after = set(ad.obsm) | set(ad.obs) | set(ad.uns)
            out["methods"][m] = {"state": state(model), "wrote": sorted(after - before),
                                 "history": {k: list(v) for k, v in model.history.items()},
                                 "world_size": model.setup["distributed"]["world_size"]}
        # 2. same seed, same world size, twice: the same weights; and the held-out W1 of the 2-rank fits
        out["repeat"] = []
        for _ in range(2):
            ad = data()
            out["repeat"].append(state(sctraj.tl.fit_flow(ad, "time", method="sbcfm", use_rep="X_pca", n_steps=6,
                                                          batch_size=16, random_state=5, **DDP_TINY)))
        out["w1"] = []
        for seed in w1_seeds:
            ad = data()
            model = w1_fit(ad, seed, batch, n_steps)
            out["w1"].append(heldout_w1(ad, model, seed) if rank == 0 else None)
        # 3. a non-finite loss on rank 1 only, and an exception on rank 1 only: both ranks stop at the same step
        lin = torch.nn.Linear(2, 1)
        sd.broadcast_module(lin, sd.resolve(None, torch.device("cpu")))

        def nan_on_rank1(step):
            loss = lin(torch.ones(4, 2)).pow(2).mean()
            return {"loss": loss * float("nan") if (rank == 1 and step == 3) else loss}

        def raise_on_rank1(step):
            if rank == 1 and step == 2:
                raise ValueError("boom on rank 1")
            return {"loss": lin(torch.ones(4, 2)).pow(2).mean()}

        for name, fn in (("nonfinite", nan_on_rank1), ("exception", raise_on_rank1)):
            try:
                with sd.activate(sd.resolve(None, torch.device("cpu"))):
                    train(lin.parameters(), fn, 20, progress=False, desc="toy", sync_every=5)
                out[name] = None
            except Exception as e:  # noqa: BLE001 - recorded for the parent test
                out[name] = f"{type(e).__name__}: {e}"
        # 5. the averaging itself: gradients rank + 1 -> their mean 1.5 on every rank; a gradient present on rank 0
        #    only is averaged with zeros (as DDP does for unused parameters); no gradient anywhere stays None
        a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        a.grad = torch.full((3,), float(rank + 1))
        b.grad = torch.full((3,), 4.0) if rank == 0 else None
        sd.GradientSync([a, b, c], sd.resolve(None, torch.device("cpu")), "avg").step(0, None)
        out["avg"] = (a.grad.tolist(), None if b.grad is None else b.grad.tolist(), c.grad)
        # 4. fit_flow itself diverging (a huge learning rate): the same error on both ranks, nothing written
        ad = data()
        before = set(ad.obsm) | set(ad.obs) | set(ad.uns)
        try:
            sctraj.tl.fit_flow(ad, "time", method="otcfm", use_rep="X_pca", n_steps=10, batch_size=16, lr=1e30,
                               **DDP_TINY)
            out["diverge"] = None
        except Exception as e:  # noqa: BLE001
            out["diverge"] = f"{type(e).__name__}: {e}"
        out["diverge_wrote"] = sorted((set(ad.obsm) | set(ad.obs) | set(ad.uns)) - before)
    except Exception:  # noqa: BLE001 - reported to the parent instead of a bare non-zero exit
        out["crash"] = traceback.format_exc()
    finally:
        torch.save(out, Path(outdir) / f"rank{rank}.pt")
        dist.destroy_process_group()
