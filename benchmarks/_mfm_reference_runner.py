"""Metric FM reference side of bench_metricfm_reference.py; runs inside benchmarks/_venvs/mfm_ref (no sctraj import).

Drives the reference code of Kapusniak et al. (github kksniak/metric-flow-matching, package ``mfm``, unmodified, on
``PYTHONPATH``) the way its ``mfm/train/main.py`` does for single-cell data: its ``TemporalDataModule`` (90/10 split
per time point, ``StandardScaler`` whitening, batch 128, ``min_frame_size`` metric samples), ``GeoPathMLP`` and
``VelocityNet`` (3 x 64 SELU), ``MetricFlowMatcher``, ``DataManifoldMetric`` (LAND), torchcfm's exact
``OTPlanSampler``, ``GeoPathNetTrain`` with its early stopping and best-checkpoint reload, then
``FlowNetTrainTrajectory`` with its early stopping, all with PyTorch Lightning. Settings: the reference's EB 5-d
OT-MFM configuration (``configs/single_cell/5dims/ot-mfm_eb.yaml``: LAND, gamma 0.125, rho 1e-3, alpha 2,
time_geopath, whiten, patience 5) plus the parser defaults for everything it does not set.

What is not the reference's ``main.py``: logging is off (``logger=False`` instead of Weights & Biases; the modules'
``self.log`` calls still feed early stopping), imports that only serve images, plots and wandb (``wandb``,
``lpips``, ``fld``, ``torchvision``, ``umap``, ``phate``, ``scprep``, ``scanpy``) are replaced by empty modules, and
the held-out prediction is scored here, in the data's original coordinates (whitening undone), by the same exact W1
as sctraj: the reference's test step (100 Euler steps of its flow from the previous time point to the held-out one)
is reproduced on the same cells.

Usage: python _mfm_reference_runner.py IN.npz OUT.json  (IN: pcs, sample_labels, heldout, seed, threads, workdir;
optional ov_* overrides of the reference's settings, ``ov_mfm=0`` being its own OT-CFM without the geodesic stage)
"""

import json
import sys
import tempfile
import time
import types
from pathlib import Path


def _stub(name, **attrs):
    import importlib.machinery

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _Dummy:
    def __init__(self, *a, **k):
        pass


for _n in ("wandb", "lpips", "umap", "phate", "scprep", "scanpy", "fld", "fld.features", "fld.metrics"):
    _stub(_n)
_stub("fld.features.InceptionFeatureExtractor", InceptionFeatureExtractor=_Dummy)
_stub("fld.metrics.FID", FID=_Dummy)
sys.modules["wandb"].Image = _Dummy
sys.modules["wandb"].log = lambda *a, **k: None

import numpy as np  # noqa: E402
import ot  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import Trainer  # noqa: E402
from torchcfm.optimal_transport import OTPlanSampler  # noqa: E402

# torchvision (image transforms of the reference's image experiments) only after Lightning / torchmetrics are imported,
# so that they see it as absent
_stub("torchvision", transforms=types.SimpleNamespace(Compose=_Dummy, Resize=_Dummy))
_stub("torchvision.transforms", Compose=_Dummy, Resize=_Dummy)


def main(inp, out):
    from mfm.dataloaders.trajectory_data import TemporalDataModule
    from mfm.flow_matchers.flow_net_train import FlowNetTrainTrajectory
    from mfm.flow_matchers.geopath_net_train import GeoPathNetTrain
    from mfm.flow_matchers.models.mfm import MetricFlowMatcher
    from mfm.geo_metrics.metric_factory import DataManifoldMetric
    from mfm.networks.flow_networks.mlp import VelocityNet
    from mfm.networks.geopath_networks.mlp import GeoPathMLP
    from mfm.train.parsers import parse_args
    from mfm.train.train_utils import create_callbacks
    from mfm.utils import set_seed

    d = np.load(inp, allow_pickle=True)
    h, seed = int(d["heldout"]), int(d["seed"])
    torch.set_num_threads(int(d["threads"]))
    work = tempfile.mkdtemp(prefix="mfmref_", dir=str(d["workdir"]))
    sys.argv = ["main"]
    args = parse_args()
    cfg = {"data_type": "scrna", "data_name": "eb", "accelerator": "cpu", "hidden_dims_geopath": [64, 64, 64],
           "hidden_dims_flow": [64, 64, 64], "dim": int(d["pcs"].shape[1]), "time_geopath": True, "whiten": True,
           "velocity_metric": "land", "patience": 5, "rho": 0.001, "alpha_metric": 2, "mfm": True}
    for k, v in cfg.items():
        setattr(args, k, v)
    for k in ("gamma", "rho", "alpha_metric", "sigma", "patience", "patience_geopath", "geopath_lr", "epochs",
              "batch_size", "mfm"):
        if f"ov_{k}" in d:
            setattr(args, k, d[f"ov_{k}"].item())
    args.gamma_current = float(d["ov_gamma"]) if "ov_gamma" in d else 0.125
    args.data_path = str(inp)  # an .npz with "pcs" and "sample_labels": the reference's tnet_dataset loader
    args.working_dir = work
    set_seed(seed)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    skipped = [h]
    dm = TemporalDataModule(args=args, skipped_datapoint=h)
    flow_net = VelocityNet(dim=args.dim, hidden_dims=args.hidden_dims_flow, activation=args.activation_flow,
                           batch_norm=False)
    geopath_net = GeoPathMLP(input_dim=args.dim, hidden_dims=args.hidden_dims_geopath, time_geopath=args.time_geopath,
                             activation=args.activation_geopath, batch_norm=False)
    ot_sampler = OTPlanSampler(method=args.optimal_transport_method)
    fm = MetricFlowMatcher(geopath_net=geopath_net, sigma=args.sigma, alpha=int(args.mfm))
    geo_epochs = 0
    if args.mfm:  # as the reference's main.py: mfm False (alpha 0, straight interpolants) skips the geodesic stage
        metric = DataManifoldMetric(args=args, skipped_time_points=skipped, datamodule=dm)
        cbs = create_callbacks(args, phase="geopath", data_type=args.data_type, run_id="run")
        geo = GeoPathNetTrain(flow_matcher=fm, skipped_time_points=skipped, ot_sampler=ot_sampler,
                              data_manifold_metric=metric, args=args)
        tr = Trainer(max_epochs=args.epochs, callbacks=cbs, accelerator="cpu", logger=False, num_sanity_val_steps=0,
                     default_root_dir=work, enable_progress_bar=False, enable_model_summary=False)
        tr.fit(geo, datamodule=dm)
        geo_epochs = tr.current_epoch
        geo = GeoPathNetTrain.load_from_checkpoint(cbs[0].best_model_path)
        fm.geopath_net = geo.geopath_net
    t_geo = time.process_time() - t_cpu
    dm = TemporalDataModule(args=args, skipped_datapoint=h)
    fcbs = create_callbacks(args, phase="flow", data_type=args.data_type, run_id="run", datamodule=dm)
    flow = FlowNetTrainTrajectory(flow_matcher=fm, flow_net=flow_net, ot_sampler=ot_sampler,
                                  skipped_time_points=skipped, args=args)
    tr2 = Trainer(max_epochs=args.epochs, callbacks=fcbs, check_val_every_n_epoch=args.check_val_every_n_epoch,
                  accelerator="cpu", logger=False, default_root_dir=work, enable_progress_bar=False,
                  enable_model_summary=False)
    tr2.fit(flow, datamodule=dm)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    # the reference's test step: 100 Euler steps from the previous time point to the held-out one, index time
    T = dm.num_timesteps
    ts = torch.linspace(0.0, 1.0, T)
    labels = d["sample_labels"]
    Z = torch.as_tensor(dm.scaler.transform(d["pcs"]), dtype=torch.float32)
    x = Z[torch.as_tensor(labels == np.unique(labels)[h - 1])]
    net = flow.flow_net.eval()
    grid = torch.linspace(float(ts[h - 1]), float(ts[h]), 101)
    with torch.no_grad():
        for i in range(100):
            x = x + (grid[i + 1] - grid[i]) * net(grid[i].reshape(1), x)
    pred = dm.scaler.inverse_transform(x.numpy())
    true = d["pcs"][labels == np.unique(labels)[h]]
    M = ot.dist(pred.astype(np.float64), true.astype(np.float64), metric="euclidean")
    w1 = float(ot.emd2(ot.unif(len(pred)), ot.unif(len(true)), M, numItermax=10_000_000))
    res = {"W1": w1, "cpu_s": cpu, "wall_s": wall, "geopath_cpu_s": t_geo, "geopath_epochs": int(geo_epochs),
           "flow_epochs": int(tr2.current_epoch), "heldout": h, "seed": seed}
    Path(out).write_text(json.dumps(res))
    print(res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
