"""Metric Flow Matching: metrics, learned interpolant, save/load, user-facing paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

import sctraj
from sctraj.engine.metrics import LANDMetric, RBFMetric, resolve_metric
from sctraj.models.metricfm import GeodesicInterpolant, MetricFMConfig


def _ring(n=400, seed=0):
    rng = np.random.default_rng(seed)
    th = rng.uniform(0, 2 * np.pi, n)
    r = 1 + 0.03 * rng.standard_normal(n)
    return np.c_[r * np.cos(th), r * np.sin(th)].astype(np.float32)


def test_rbf_metric_is_one_on_data_and_small_off_manifold():
    X = _ring()
    m = RBFMetric(2, 30, kappa=1.0).fit(X, np.random.default_rng(0))
    h_on = m.h(torch.as_tensor(X))[:, 0].numpy()
    assert abs(np.median(h_on) - 1) < 0.15
    off = torch.tensor([[0.0, 0.0], [0.3, -0.2], [3.0, 3.0]])
    h_off = m.h(off)[:, 0].numpy()
    assert (h_off < 0.1).all()
    G_on, G_off = m.inverse_h(torch.as_tensor(X)).median(), m.inverse_h(off).min()
    assert G_off > 10 * G_on
    # the metric is diagonal with the same entry in every dimension
    np.testing.assert_allclose(m.inverse_h(off)[:, 0], m.inverse_h(off)[:, 1])


def test_land_metric_matches_definition_and_prefers_data():
    X = _ring(200)
    m = LANDMetric(2, 200, gamma=0.2, eps=1e-3).fit(X, np.random.default_rng(0))
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])
    L = torch.as_tensor(X)
    w = torch.exp(-((x[:, None] - L[None]) ** 2).sum(-1) / (2 * 0.2**2))
    h_ref = torch.einsum("bn,bnd->bd", w, (L[None] - x[:, None]) ** 2)
    torch.testing.assert_close(m.h(x), h_ref, rtol=1e-3, atol=1e-5)
    G = m.inverse_h(x)
    assert G[0].max() < G[1].min() / 10  # on the ring cheap, in the middle expensive
    # subsampled landmarks are rescaled to estimate the full-data sum
    m2 = LANDMetric(2, 100, gamma=0.2).fit(X, np.random.default_rng(0))
    assert float(m2.scale) == pytest.approx(2.0)


def test_land_metric_gradient_is_exact():
    """LAND's hand-written backward against autograd on the direct definition (float64, and gradcheck)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 3))
    m = LANDMetric(3, 60, gamma=0.7).double().fit(X, rng)
    x = torch.as_tensor(rng.standard_normal((7, 3)) * 1.5, dtype=torch.float64).requires_grad_()
    g = torch.as_tensor(rng.standard_normal((7, 3)))
    (m.h(x) * g).sum().backward()
    L = m.landmarks
    y = x.detach().clone().requires_grad_()
    w = torch.exp(-((y[:, None] - L[None]) ** 2).sum(-1) / (2 * 0.7**2))
    (torch.einsum("bn,bnd->bd", w, (L[None] - y[:, None]) ** 2) * g).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
    assert torch.autograd.gradcheck(m.h, (x.detach()[:3].clone().requires_grad_(),))
    # far from every landmark: h is ~0, finite, and the floored kernel gives a zero (not NaN) gradient
    far = torch.full((2, 3), 50.0, dtype=torch.float64, requires_grad=True)
    m.h(far).sum().backward()
    assert torch.isfinite(far.grad).all() and float(m.h(far.detach()).abs().max()) < 1e-20


def test_land_anchors_pool_cells_exactly_and_beat_a_subsample():
    """Anchors (``pool=True``): plain landmarks when every cell fits; above, closer to the all-cell ``h`` than a
    rescaled subsample of the same size; exact gradient; models saved without anchor buffers still load."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal(3000), 0.5 * rng.standard_normal(3000)].astype(np.float32)
    q = torch.as_tensor(X[rng.integers(3000, size=400)] + 0.1 * rng.standard_normal((400, 2)).astype(np.float32))
    few = X[:300]
    plain = LANDMetric(2, 300, gamma=0.2).fit(few, rng)
    anchors = LANDMetric(2, 300, gamma=0.2, pool=True).fit(few, rng)
    torch.testing.assert_close(anchors.h(q), plain.h(q), rtol=1e-4, atol=1e-4)
    full = LANDMetric(2, 3000, gamma=0.2).fit(X, rng).h(q)
    err = {}
    for pool in (False, True):
        m = LANDMetric(2, 128, gamma=0.2, pool=pool).fit(X, np.random.default_rng(1))
        err[pool] = float(((m.h(q) - full).abs() / full.clamp_min(1e-3)).median())
    assert float(m.counts.sum()) == 3000 and err[True] < 0.2 * err[False], err
    x = q[:4].double().clone().requires_grad_()
    assert torch.autograd.gradcheck(m.double().h, (x,))
    old = {"landmarks": m.landmarks, "scale": m.scale}  # a LAND metric saved before anchors existed
    m2 = LANDMetric(2, 128, gamma=0.2).double()
    m2.load_state_dict(old)
    assert float(m2.counts.min()) == 1 and float(m2.spread.abs().max()) == 0


def test_resolve_metric():
    assert resolve_metric("auto", 5, 10) == "land"
    assert resolve_metric("auto", 50, 10) == "rbf"
    assert resolve_metric("rbf", 2, 10) == "rbf"
    with pytest.raises(ValueError, match="metric must be one of"):
        resolve_metric("euclid", 2, 10)


def test_interpolant_hits_endpoints_and_velocity_is_exact():
    torch.manual_seed(0)
    f = GeodesicInterpolant(3, width=16, depth=2, act="selu")
    for p in f.parameters():  # make the correction large so the test is not trivial
        p.data.mul_(3)
    x0, x1 = torch.randn(7, 3), torch.randn(7, 3)
    t0, dt = torch.full((7,), 0.2), torch.full((7,), 0.5)
    for s0 in (0.0, 1.0):
        s = torch.full((7,), s0)
        torch.testing.assert_close(f(x0, x1, s, t0 + s * dt), x0 if s0 == 0 else x1)
    s = torch.rand(7, dtype=torch.float64)
    f64 = f.double()
    X0, X1, T0, DT = x0.double(), x1.double(), t0.double(), dt.double()
    xt, ut = f64.point_and_velocity(X0, X1, s, T0, DT)
    h = 1e-6
    fd = (f64(X0, X1, s + h, T0 + (s + h) * DT) - f64(X0, X1, s - h, T0 + (s - h) * DT)) / (2 * h)
    torch.testing.assert_close(ut, fd, rtol=1e-6, atol=1e-6)
    mid = f64(X0, X1, torch.full((7,), 0.5, dtype=torch.float64), T0 + 0.5 * DT)
    assert (mid - 0.5 * (X0 + X1)).abs().max() > 1e-2  # it does bend


def test_config_validation():
    with pytest.raises(ValueError, match="coupling must be one of"):
        MetricFMConfig(coupling="sinkhorn")
    with pytest.raises(ValueError, match="metric must be one of"):
        MetricFMConfig(metric="l2")
    with pytest.raises(TypeError, match="Unknown parameter"):
        sctraj.tl.fit_flow(_adata(), "time", method="metricfm", land_gama=0.1, **TINY)
    for bad in ("silverman", 0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="land_gamma must be"):
            MetricFMConfig(land_gamma=bad)
    with pytest.raises(ValueError, match="land_gamma_scale"):
        MetricFMConfig(land_gamma_scale=0)
    with pytest.raises(ValueError, match="geopath_batch_size"):
        MetricFMConfig(geopath_batch_size=0)


def test_land_bandwidth_follows_scotts_rule_per_interval():
    a = _adata()  # 3 dims; intervals 0 -> 1 and 1 -> 2.5
    sctraj.tl.fit_flow(a, "time", method="metricfm", **TINY)
    n = [int(((a.obs["time"] == t0) | (a.obs["time"] == t1)).sum()) for t0, t1 in ((0.0, 1.0), (1.0, 2.5))]
    np.testing.assert_allclose(a.uns["sctraj"]["land_gamma"], [0.65 * k ** (-1 / 7) for k in n], rtol=1e-6)
    sctraj.tl.fit_flow(a, "time", method="metricfm", land_gamma=0.2, **TINY)
    np.testing.assert_allclose(a.uns["sctraj"]["land_gamma"], [0.2, 0.2])


def _adata():
    a = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.5), n_dims=3, random_state=0)
    a.obsm["X_pca"] = a.obsm["X_sim"].copy()
    return a


@pytest.mark.parametrize("extra", [{"metric": "rbf", "rbf_n_centers": 8},
                                   {"coupling": "independent"}])
def test_rbf_and_independent_roundtrip(extra, tmp_path):
    a = _adata()
    model = sctraj.tl.fit_flow(a, "time", method="metricfm", **TINY, **extra)
    rec = a.uns["sctraj"]
    assert rec["metric"] == extra.get("metric", "land")
    assert np.isfinite(rec["history"]["geopath_loss"]).all() and len(rec["history"]["geopath_loss"]) == 5
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    X = a.obsm["X_pca"][:10]
    np.testing.assert_array_equal(model.velocity(X, 0.5), m2.velocity(X, 0.5))
    # the data-dependent metric and the interpolant are restored too
    for k in range(2):
        x = torch.randn(5, 3)
        torch.testing.assert_close(model.method.metrics[k].inverse_h(x), m2.method.metrics[k].inverse_h(x))
    p1 = sctraj.tl.metric_paths(a, model, 0.0, 1.0, n_cells=5, n_grid=4)
    p2 = sctraj.tl.metric_paths(a, m2, 0.0, 1.0, n_cells=5, n_grid=4)
    np.testing.assert_array_equal(p1.obsm["X_pca"], p2.obsm["X_pca"])


def test_metric_paths_join_the_snapshots_and_validate():
    a = _adata()
    model = sctraj.tl.fit_flow(a, "time", method="metricfm", **TINY)
    before = set(a.obsm) | set(a.obs.columns)
    p = sctraj.tl.metric_paths(a, model, 1.0, 2.5, n_cells=12, n_grid=6)
    assert p.n_obs == 12 * 6 and p.obsm["X_pca"].shape == (72, 3)
    assert sorted(set(p.obs["path"])) == list(range(12))
    np.testing.assert_allclose(sorted(set(p.obs["time"])), np.linspace(1.0, 2.5, 6))
    X = a.obsm["X_pca"]
    for when, col in ((1.0, "source_cell"), (2.5, "target_cell")):
        sel = (p.obs["time"] == when).to_numpy()
        ends = X[a.obs_names.get_indexer(p.obs[col][sel])]
        np.testing.assert_allclose(p.obsm["X_pca"][sel], ends, atol=1e-5)
    assert set(a.obsm) | set(a.obs.columns) == before
    with pytest.raises(ValueError, match="consecutive"):
        sctraj.tl.metric_paths(a, model, 0.0, 2.5)
    with pytest.raises(ValueError, match="n_grid"):
        sctraj.tl.metric_paths(a, model, 0.0, 1.0, n_grid=1)
    other = sctraj.tl.fit_flow(_adata(), "time", method="otcfm", **TINY)
    with pytest.raises(ValueError, match="metricfm"):
        sctraj.tl.metric_paths(a, other, 0.0, 1.0)


@pytest.mark.parametrize("act", ["selu", "silu", "relu", "tanh", "gelu", "elu"])
def test_tangent_propagation_equals_forward_mode_ad(act):
    import torch.autograd.forward_ad as fwad

    torch.manual_seed(0)
    f = GeodesicInterpolant(3, width=16, depth=3, act=act).double()
    x0, x1 = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    s, t0, dt = torch.rand(9, dtype=torch.float64), torch.rand(9, dtype=torch.float64), torch.rand(9, dtype=torch.float64)
    xt, ut = f.point_and_velocity(x0, x1, s, t0, dt)
    with fwad.dual_level():
        sd = fwad.make_dual(s, torch.ones_like(s))
        out = fwad.unpack_dual(f(x0, x1, sd, t0 + sd * dt))
    torch.testing.assert_close(xt, out.primal)
    torch.testing.assert_close(ut, out.tangent)
    # and it is differentiable in the parameters
    ut.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in f.parameters())


def test_interpolant_without_time_input():
    f = GeodesicInterpolant(2, width=8, depth=2, act="selu", use_time=False)
    assert f.phi[0].in_features == 4
    x0, x1, s = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    xt, ut = f.point_and_velocity(x0, x1, s, torch.zeros(5), torch.ones(5))
    h = 1e-3
    fd = (f(x0, x1, s + h, s) - f(x0, x1, s - h, s)) / (2 * h)
    torch.testing.assert_close(ut, fd, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("use_time", [False, True])
def test_path_network_time_input_default_and_option(use_time):
    """The default path network has no time input; geopath_time=True (the reference's time_geopath) still fits."""
    assert MetricFMConfig().geopath_time is False
    a = _adata()
    sctraj.tl.fit_flow(a, "time", method="metricfm", geopath_time=use_time, **TINY)
    model = sctraj.tl.get_model(a)
    assert model.method.interpolant.phi[0].in_features == 2 * a.obsm["X_pca"].shape[1] + int(use_time)


def test_rbf_metric_adaptive_eps_follows_the_reference_rule():
    X = _ring()
    m = RBFMetric(2, 30, kappa=1.5, eps=None).fit(X, np.random.default_rng(0))
    assert m.val_loss < 0.2
    assert m.eps == pytest.approx((1 - m.val_loss) / 2.75)
    m2 = RBFMetric(2, 30, kappa=1.5, eps=None, alpha=2.0).fit(X, np.random.default_rng(0))
    x = torch.tensor([[0.0, 0.0]])
    torch.testing.assert_close(m2.inverse_h(x), m.inverse_h(x) ** 2)


def test_geopath_early_stopping_and_options():
    a = _adata()
    sctraj.tl.fit_flow(a, "time", method="metricfm", **{**TINY, "n_steps": 40}, geopath_steps=400,
                       geopath_eval_every=2, geopath_patience=2, geopath_lr=1e-6, geopath_val_fraction=0.1)
    rec = a.uns["sctraj"]
    # a learning rate too small to improve the held-out energy stops stage 1 long before its 400 steps
    assert rec["geopath_steps_run"] < 400 and len(rec["history"]["geopath_val_loss"]) >= 2
    sctraj.tl.fit_flow(a, "time", method="metricfm", **TINY, geopath_val_fraction=0.0, geopath_normalise="global",
                       metric_alpha=2.0, metric_eps=0.01, geopath_time=False, geopath_width=8)
    assert a.uns["sctraj"]["geopath_steps_run"] == 5 and "geopath_val_loss" not in a.uns["sctraj"]["history"]
    np.testing.assert_allclose(a.uns["sctraj"]["metric_eps"], [0.01, 0.01])
    for bad, msg in (({"geopath_normalise": "x"}, "geopath_normalise"), ({"metric_eps": "x"}, "metric_eps"),
                     ({"metric_alpha": 0}, "metric_alpha"), ({"geopath_val_fraction": 0.7}, "geopath_val_fraction"),
                     ({"metric_cells": "x"}, "metric_cells")):
        with pytest.raises(ValueError, match=msg):
            MetricFMConfig(**bad)


def _arch(n=300, seed=0):
    """The arch toy of the Metric FM paper (Sec. 5.1): two ends of a half circle, the middle held out."""
    rng = np.random.default_rng(seed)
    u0 = np.sort(np.abs(rng.normal(0, 1 / (2 * np.pi), n)))
    u2 = np.sort(1 - np.abs(rng.normal(0, 1 / (2 * np.pi), n)))
    X = []
    for u in (u0, (u0 + u2) / 2, u2):
        th, r = np.pi * (1 - u), 1 + 0.1 * rng.standard_normal(n)
        X.append(np.c_[r * np.cos(th), r * np.sin(th)])
    import anndata as ad
    import pandas as pd

    t = np.repeat([0.0, 1.0, 2.0], n)
    a = ad.AnnData(obs=pd.DataFrame({"time": t}, index=[f"c{i}" for i in range(3 * n)]))
    a.obsm["X_pca"] = np.concatenate(X).astype(np.float32)
    return a


def test_geodesic_paths_follow_the_curved_toy():
    """The learned interpolants bend along the arch instead of cutting the chord (the geodesic property)."""
    a = _arch()
    model = sctraj.tl.fit_flow(a, "time", method="metricfm", exclude_times=[1.0], n_steps=300, geopath_steps=300,
                               progress=False, random_state=0, trajectory_n_grid=0)
    p = sctraj.tl.metric_paths(a, model, 0.0, 2.0, n_cells=200, n_grid=3)
    mid = p.obsm["X_pca"][p.obs["fraction"].to_numpy() == 0.5]
    ends = a.obsm["X_pca"][a.obs_names.get_indexer(p.obs["source_cell"][p.obs["fraction"] == 0.5])], \
        a.obsm["X_pca"][a.obs_names.get_indexer(p.obs["target_cell"][p.obs["fraction"] == 0.5])]
    chord = 0.5 * (ends[0] + ends[1])
    off_learned = np.abs(np.linalg.norm(mid, axis=1) - 1).mean()
    off_straight = np.abs(np.linalg.norm(chord, axis=1) - 1).mean()
    assert off_learned < 0.5 * off_straight


def test_models_saved_before_land_anchors_load_unchanged():
    """A file from before ``land_pool`` (no anchor buffers, no ``land_pool`` in its config) loads as plain landmarks."""
    from sctraj.models._model import TrajectoryModel

    a = _adata()
    model = sctraj.tl.fit_flow(a, "time", method="metricfm", land_pool=False, land_max_points=16, **TINY)
    state = model.state()
    del state["config"]["land_pool"]
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.endswith((".counts", ".spread"))}
    m2 = TrajectoryModel.from_state(state, where="an old file")
    assert m2.method.config.land_pool is False and m2.method.config.land_max_points == 16
    x = torch.randn(6, 3)
    for k in range(2):
        torch.testing.assert_close(m2.method.metrics[k].inverse_h(x), model.method.metrics[k].inverse_h(x))
    np.testing.assert_array_equal(m2.velocity(a.obsm["X_pca"][:5], 0.5), model.velocity(a.obsm["X_pca"][:5], 0.5))


def test_phi_once_per_distinct_pair_equals_phi_per_draw():
    """Stage 2's per-pair evaluation of the time-free interpolant gives phi of every drawn pair."""
    from sctraj.engine.couplings import Pairs
    from sctraj.models.metricfm import _phi_per_pair

    torch.manual_seed(0)
    g = GeodesicInterpolant(3, width=16, depth=2, act="selu", use_time=False)
    rng = np.random.default_rng(0)
    snaps = [(torch.randn(7, 3), torch.randn(5, 3)), (torch.randn(5, 3), torch.randn(9, 3))]
    pairs = [Pairs(rng.integers(len(a), size=40), rng.integers(len(b), size=40), np.ones(40)) for a, b in snaps]
    with torch.no_grad():
        got = _phi_per_pair(g, snaps, pairs, "cpu")
        for (a, b), p, phi in zip(snaps, pairs, got, strict=True):
            torch.testing.assert_close(phi, g.phi(torch.cat([a[p.i0], b[p.i1]], 1)))


def test_stage1_schedule_and_clipping_options():
    a = _adata()
    sctraj.tl.fit_flow(a, "time", method="metricfm", geopath_lr_schedule="cosine", geopath_grad_clip=0.5, **TINY)
    assert np.isfinite(a.uns["sctraj"]["history"]["geopath_loss"]).all()
    with pytest.raises(ValueError, match="geopath_lr_schedule"):
        MetricFMConfig(geopath_lr_schedule="step")
    with pytest.raises(ValueError, match="geopath_grad_clip"):
        MetricFMConfig(geopath_grad_clip=0)


def test_flow_stage_keeps_its_best_field_on_held_out_cells():
    """``flow_val_fraction``: stage 2 keeps the field with the lowest held-out loss (and may stop early)."""
    a = _adata()
    # a learning rate this large makes the held-out loss jump about: the best field is rarely the last one
    sctraj.tl.fit_flow(a, "time", method="metricfm", **{**TINY, "n_steps": 40}, lr=0.05, flow_val_fraction=0.2,
                       flow_eval_every=2)
    rec = a.uns["sctraj"]
    val = rec["history"]["flow_val_loss"]
    assert len(val) == 20 and len(rec["history"]["loss"]) == 40
    assert rec["flow_best_step"] == 2 * (int(np.argmin(val)) + 1)
    # the loss recomputed after the fit is that of the best checkpoint: the kept field was reloaded
    assert rec["flow_val_loss"] == pytest.approx(min(val), rel=1e-6)
    # patience: a learning rate too small to improve the held-out loss stops stage 2 early; with the same split in
    # both stages (equal fractions) stage 2 draws on from stage 1's samplers
    sctraj.tl.fit_flow(a, "time", method="metricfm", **{**TINY, "n_steps": 400}, lr=1e-9, flow_val_fraction=0.1,
                       geopath_val_fraction=0.1, flow_eval_every=2, flow_patience=2)
    rec = a.uns["sctraj"]
    assert len(rec["history"]["loss"]) < 400 and rec["flow_best_step"] <= len(rec["history"]["loss"])
    # off by default: every cell trains the field, the last field is kept
    sctraj.tl.fit_flow(a, "time", method="metricfm", **TINY)
    assert "flow_best_step" not in a.uns["sctraj"] and "flow_val_loss" not in a.uns["sctraj"]["history"]
    for bad, msg in (({"flow_val_fraction": 0.5}, "flow_val_fraction"), ({"flow_val_fraction": True},
                     "flow_val_fraction"), ({"flow_eval_every": 0}, "flow_eval_every"),
                     ({"flow_patience": 0}, "flow_patience")):
        with pytest.raises(ValueError, match=msg):
            MetricFMConfig(**bad)
