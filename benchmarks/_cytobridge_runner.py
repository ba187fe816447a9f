"""CytoBridge 1.4 side of bench_cytobridge.py; runs inside benchmarks/_venvs/cytobridge (no sctraj import).

CytoBridge 1.4 on PyPI ships no ``CytoBridge/configs/`` directory and has no ``vgfm`` config, so the VGFM
configuration is written here as a dict (``CONFIG`` below, every value explained in results/cytobridge.md) and
trained with the package's own pieces, exactly as ``CytoBridge.tl.fit.fit`` does (steps 2-4 of that function:
per-time tensors from ``obsm['X_latent']`` / ``obs['time_point_processed']``, ``DynamicalModel``,
``TrainingPipeline.train``). ``fit``'s post-training steps (writing an h5ad and a YAML into ``ckpt_dir`` and its own
``evaluate``) are left out of the timed region; they are not part of learning the model.

Training plan: the package's ``flow_matching`` stage with ``train_strategy: v+g`` (semi-relaxed unbalanced Sinkhorn
plans on source/target chunks with the package's automatic ``reg`` / ``reg_m`` choice, velocity target from the
plan's pairs, growth target log(row mass)/dt, weighted MSE), then its ``neural_ode`` stage (Euler ODE of x and log w,
Sinkhorn OT loss + local/global mass loss + energy), i.e. VGFM's matching phase followed by its distribution-fitting
phase.

Prediction: every source cell with log-weight 0 is integrated with 100 Euler steps of dx/dt = v(x, t),
dlog w/dt = g(x, t) (the package's ``ODEFunc`` dynamics without the unused score term) to each target time.

Usage: python _cytobridge_runner.py IN.npz OUT.npz   (IN: X, t, X_src, t_src, t_targets, seed, threads, ckpt_dir,
smoke)
"""

import json
import random
import resource
import sys
import time

import anndata as ad
import numpy as np
import torch


def vm_hwm_mb() -> float:
    """Peak resident set of this process's own address space (VmHWM). ``ru_maxrss`` on Linux keeps the parent's
    high-water mark across fork/exec, so it can report the driver's memory instead of this process's."""
    with open("/proc/self/status") as fh:
        for ln in fh:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024
    return float("nan")


def make_config(ckpt_dir, smoke=False):
    fm_epochs, ode_epochs = (30, 3) if smoke else (3000, 500)
    return {
        "model": {
            # 'score' is listed only because TrainingPipeline.train_flow_matching_epoch reads model.score_net
            # unconditionally; with train_strategy 'v+g' it is never trained and never enters the ODE. The smallest
            # network (one linear layer) keeps its unavoidable forward/autograd cost in the neural_ode stage minimal.
            "components": ["velocity", "growth", "score"],
            "velocity_net": {"hidden_dim": 256, "n_layers": 5, "residual": False},
            "growth_net": {"hidden_dim": 256, "n_layers": 5, "residual": False},
            "score_net": {"hidden_dim": 1, "n_layers": 0},
        },
        "ckpt_dir": str(ckpt_dir),
        "training": {
            # crufm.yaml defaults (the package's flow-matching UOT config)
            "defaults": {"lr": 1e-4, "lambda_ot": 1.0, "lambda_mass": 0.1, "lambda_energy": 0.01, "sigma": 0.05,
                         "batch_size": 400},
            "plan": [
                # crufm.yaml's Train_FM stage, with 's' dropped from train_strategy (VGFM has no score)
                {"name": "Train_FM", "mode": "flow_matching", "lr": 0.005, "epochs": fm_epochs, "sigma": 0.05,
                 "train_strategy": "v+g", "batch_size": 400, "scheduler_type": "cosine", "save_strategy": "best",
                 "flow_matching": {"lambda_penalty": 1}},
                # ruot.yaml's Finetune stage (neural_ode after flow matching; lambdas are ruot.yaml's defaults)
                {"name": "Finetune", "mode": "neural_ode", "lr": 1e-4, "epochs": ode_epochs, "global_mass": True,
                 "OT_loss": "sinkhorn_detach", "train_strategy": "v+g", "lambda_ot": 10.0, "lambda_mass": 1.0,
                 "lambda_energy": 0.01},
            ],
        },
    }


def main(inp, out):
    d = np.load(inp)
    seed = int(d["seed"])
    torch.set_num_threads(int(d["threads"]))
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - CytoBridge shuffles UOT chunks with the legacy global generator
    torch.manual_seed(seed)
    import CytoBridge
    from CytoBridge.pp.preprocess import preprocess
    from CytoBridge.tl.models import DynamicalModel
    from CytoBridge.tl.trainer import TrainingPipeline

    X = np.asarray(d["X"], np.float32)
    t = np.asarray(d["t"], np.float64)
    adata = ad.AnnData(X=X.copy())
    adata.obs["day"] = t
    # the package's preprocessing with an explicit time mapping (its docs: "Always define explicitly"); the data are
    # already a 2-d embedding, so no normalisation / log1p / HVG / PCA
    preprocess(adata, time_key="day", time_mapping={v: float(v) for v in np.unique(t)}, normalization=False,
               log1p=False, select_hvg=False, dim_reduction="none")
    config = make_config(d["ckpt_dir"], bool(d["smoke"]))
    device = torch.device("cpu")

    r0, h0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vm_hwm_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    # --- CytoBridge.tl.fit.fit, steps 2-4 ---
    time_points = sorted(adata.obs["time_point_processed"].unique())
    data_torch = [torch.tensor(adata[adata.obs["time_point_processed"] == tp].obsm["X_latent"], dtype=torch.float32,
                               device=device) for tp in time_points]
    batch_size = min(min(x.shape[0] for x in data_torch), 256)
    model = DynamicalModel(data_torch[0].shape[1], config["model"])
    trainer = TrainingPipeline(model, config, batch_size, device, data=data_torch)
    model = trainer.train(data_torch, time_points)
    fit_wall, fit_cpu = time.perf_counter() - w0, time.process_time() - c0
    r1, h1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vm_hwm_mb()

    X_src = torch.as_tensor(np.asarray(d["X_src"], np.float32))
    t_src = float(d["t_src"])
    res = {}
    n_euler = 100
    with torch.no_grad():
        for k, t_to in enumerate(np.atleast_1d(d["t_targets"]).astype(float)):
            x, lnw = X_src.clone(), torch.zeros(len(X_src), 1)
            dt = (t_to - t_src) / n_euler
            for i in range(n_euler):
                inp_ = torch.cat([x, torch.full((len(x), 1), t_src + i * dt)], 1)
                v, g = model.velocity_net(inp_), model.growth_net(inp_)
                x, lnw = x + dt * v, lnw + dt * g
            res[f"pred_{k}"] = x.numpy()
            res[f"lnw_{k}"] = lnw[:, 0].numpy()
    meta = {"fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu, "ru_maxrss_mb": r1 / 1024,
            "ru_maxrss_before_fit_mb": r0 / 1024, "peak_rss_mb": h1, "rss_before_fit_mb": h0,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cytobridge": getattr(CytoBridge, "__version__", "1.4"), "config": config,
            "time_mapping": {str(v): float(v) for v in np.unique(t)}}
    np.savez(out, meta=json.dumps(meta), **res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
