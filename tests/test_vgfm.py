"""VGFM (joint velocity-growth flow matching) and the growth prior from gene scores."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import sctraj
from sctraj.models.vgfm import VGFM, VGFMConfig, semi_relaxed_plan

FAST = {"progress": False, "width": 32, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small networks on 2 shared cores: one torch thread avoids spin-waiting (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def growth_fit():
    """A modest VGFM fit on simulated data with two populations growing at different constant rates."""
    a = sctraj.datasets.simulate(growth=True, n_cells=200, times=(0.0, 1.0, 2.0), random_state=1)
    model = sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_sim", n_steps=400, batch_size=128,
                               phase2_batch=128, **FAST)
    return a, model


def test_mass_within_5_percent_of_truth(growth_fit):
    a, _ = growth_fit
    rec = a.uns["sctraj"]["mass"]
    true = np.asarray(a.uns["simulate"]["true_mass"])
    pred = np.asarray(rec["predicted_at_observed"])
    assert np.all(np.abs(pred - true) / true < 0.05), (pred, true)
    # the record is ready for pl.mass: a grid that contains the fitted times, observed values at those times
    assert set(np.round(rec["observed_time"], 6)) <= set(np.round(rec["time"], 6))
    assert len(rec["predicted"]) == len(rec["time"]) and rec["predicted"][0] == pytest.approx(1.0)


def test_growth_rates_recovered(growth_fit):
    a, _ = growth_fit
    g = a.obs["sctraj_growth_rate"].to_numpy()
    r = np.corrcoef(g, a.obs["true_growth_rate"].to_numpy())[0, 1]
    assert r >= 0.9, r


def test_predict_weights_follow_growth(growth_fit):
    a, model = growth_fit
    p = sctraj.tl.predict(a, model, source_time=0.0, target_time=2.0)
    w = p.obs["weight"].to_numpy()
    fast = p.obs["population"].to_numpy() == "A"  # growth rate 0.5 vs -0.2
    assert w[fast].mean() > 1.5 and w[~fast].mean() < 1.0
    assert w.mean() == pytest.approx(a.uns["simulate"]["true_mass"][-1], rel=0.05)


@pytest.mark.parametrize("head", ["separate", "shared"])
def test_mass_ode_constant_growth_gives_exp(head):
    """Through TrajectoryModel.push: with g = c (per tau) the mass after time t is exp(c t / T)."""
    from sctraj.models import TrajectoryModel

    method = VGFM(2, VGFMConfig(width=8, depth=1, growth_head=head))
    with torch.no_grad():
        for p in method.parameters():
            p.zero_()
        if head == "separate":
            method.growth_net.net[-1].bias.fill_(0.8)  # d log w / d tau = 0.8 everywhere
        else:
            assert method.growth_net is None and method.net.net[-1].out_features == 3  # velocity (2) + growth (1)
            method.net.net[-1].bias[2] = 0.8
    setup = {"times": [0.0, 4.0], "mean": [0.0, 0.0], "scale": 1.0, "use_rep": "X", "time_key": "t"}
    model = TrajectoryModel(method, setup)
    X = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    grid = np.array([1.0, 2.0, 4.0])
    xs, lw = model.push(X, 0.0, grid, n_steps=40)
    np.testing.assert_allclose(np.exp(lw), np.exp(0.8 * grid / 4.0)[:, None].repeat(5, 1), rtol=1e-5)
    np.testing.assert_allclose(xs[-1], X, atol=1e-6)  # zero velocity
    np.testing.assert_allclose(model.growth_rate(X, 1.0), 0.2, rtol=1e-5)  # per unit of real time


def test_zero_growth_reduces_to_balanced_flow():
    """Balanced data (equal counts, no growth): unit row masses, growth ~ 0, weights ~ 1."""
    a = sctraj.datasets.simulate(growth=False, n_cells=150, times=(0.0, 1.0, 2.0), random_state=0)
    x0 = a.obsm["X_sim"][a.obs["time"].to_numpy() == 0]
    x1 = a.obsm["X_sim"][a.obs["time"].to_numpy() == 1]
    plan = semi_relaxed_plan(x0, x1, ratio=1.0)
    np.testing.assert_allclose(plan.sum(0), 1 / len(x1), rtol=1e-6)  # hard target marginal
    np.testing.assert_allclose(len(x0) * plan.sum(1), 1.0, atol=0.35)
    m = sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_sim", n_steps=150, batch_size=64,
                           phase2=False, **FAST)
    g = a.obs["sctraj_growth_rate"].to_numpy()
    assert np.abs(g).mean() < 0.1
    p = sctraj.tl.predict(a, m, source_time=0.0, target_time=2.0)
    assert p.obs["weight"].mean() == pytest.approx(1.0, abs=0.1)


def test_semi_relaxed_plan_growth_and_prior():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(40, 2))
    x1 = rng.normal(size=(60, 2))
    plan = semi_relaxed_plan(x0, x1, ratio=1.5)
    assert plan.sum() == pytest.approx(1.5)  # total target mass = relative population size
    np.testing.assert_allclose(plan.sum(0), 1.5 / 60, rtol=1e-6)
    # a large tau approaches the reference (uniform growth, or the prior when one is given)
    prior = np.where(np.arange(40) < 20, 2.0, 1.0)
    rows = 40 * semi_relaxed_plan(x0, x1, prior, ratio=1.5, tau=1e4).sum(1)
    np.testing.assert_allclose(rows, 1.5 * prior / prior.mean(), rtol=0.05)


def test_total_mass_and_weight_key(adata_time):
    a = adata_time
    m = sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=10, batch_size=16,
                           total_mass={0.0: 10, 1.0: 20, 2.5: 40}, **FAST)
    rec = a.uns["sctraj"]["mass"]
    np.testing.assert_allclose(rec["observed"], [1, 2, 4])
    assert rec["source"] == "total_mass" and m.method.meta["mass_source"] == "total_mass"
    a.obs["prior"] = np.linspace(0.5, 2.0, a.n_obs)
    sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=10, batch_size=16, weight_key="prior",
                       key_added="w", **FAST)
    assert a.uns["w"]["params"]["method"] == "vgfm"


@pytest.mark.parametrize(
    ("total_mass", "err", "match"),
    [
        ({0.0: 1, 1.0: 2}, ValueError, "no value for time"),
        ({0.0: 1, 1.0: 2, 2.5: -1}, ValueError, "positive and finite"),
        ({0.0: 1, 1.0: 2, 2.5: np.inf}, ValueError, "positive and finite"),
        ({0.0: 1, 1.0: 2, 2.5: 3, 7.0: 4}, ValueError, "not a fitted time"),
        ({0.0: 1, 1.0: "x", 2.5: 3}, ValueError, "must be a number"),
        ([1, 2, 3], TypeError, "must be a dict"),
    ],
)
def test_total_mass_validation(adata_time, total_mass, err, match):
    a = adata_time
    before = (set(a.obs.columns), set(a.obsm), set(a.uns))
    with pytest.raises(err, match=match):
        sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, total_mass=total_mass, **FAST)
    assert (set(a.obs.columns), set(a.obsm), set(a.uns)) == before


def test_total_mass_ignores_excluded_time(adata_time):
    a = adata_time
    sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, exclude_times=[1.0],
                       total_mass={0.0: 1, 1.0: 2, 2.5: 3}, **FAST)
    np.testing.assert_allclose(a.uns["sctraj"]["mass"]["observed"], [1, 3])


def test_bad_weight_key_and_params(adata_time):
    a = adata_time
    with pytest.raises(KeyError, match="score_growth"):
        sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, weight_key="nope", **FAST)
    a.obs["neg"] = -1.0
    with pytest.raises(ValueError, match="positive and finite"):
        sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, weight_key="neg", **FAST)
    with pytest.raises(ValueError, match="cost_norm"):
        sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, cost_norm="median", **FAST)
    with pytest.raises(ValueError, match="reg"):
        sctraj.tl.fit_flow(a, "time", method="vgfm", use_rep="X_pca", n_steps=5, reg=0, **FAST)
    assert "sctraj" not in a.uns


def test_score_growth_tiny_anndata(tmp_path):
    prolif = sctraj.pp._growth.gene_set("mouse", "proliferation")
    apopt = sctraj.pp._growth.gene_set("mouse", "apoptosis")
    other = [f"Gene{i}" for i in range(60)]
    genes = prolif[:10] + apopt[:10] + other
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(30, len(genes))).astype(np.float32)
    X[:15, :10] += 8  # first half proliferates
    X[15:, 10:20] += 8  # second half dies
    a = ad.AnnData(X=np.log1p(X), var=pd.DataFrame(index=[g.upper() for g in genes]))  # case-insensitive match
    sctraj.pp.score_growth(a, organism="mouse")
    for c in ("growth_proliferation", "growth_apoptosis", "growth_rate", "growth_weight"):
        assert c in a.obs and np.isfinite(a.obs[c]).all()
    r = a.obs["growth_rate"].to_numpy()
    assert r[:15].mean() > r[15:].mean()
    assert (a.obs["growth_weight"] > 0).all()
    a.write_h5ad(tmp_path / "g.h5ad")
    b = sctraj.pp.score_growth(a, organism="human", key_added="h", copy=True)
    assert "h_rate" in b.obs and "h_rate" not in a.obs
    with pytest.raises(ValueError, match="organism"):
        sctraj.pp.score_growth(a, organism="fly")
    with pytest.raises(ValueError, match="None of the"):
        sctraj.pp.score_growth(a, proliferation_genes=["NotAGene"])


def test_semi_relaxed_plan_precision_and_far_outlier(monkeypatch):
    """The single-precision solve matches double precision; a source cell far from every target (whose float32
    kernel row would underflow to 0) is solved in double precision instead of failing."""
    import sctraj.models.vgfm as vg

    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(50, 3)), rng.normal(size=(70, 3))
    fast = semi_relaxed_plan(x0, x1, ratio=2.0)
    monkeypatch.setattr(vg, "_F32_MAX_EXPONENT", -1.0)  # forces double precision
    exact = semi_relaxed_plan(x0, x1, ratio=2.0)
    monkeypatch.undo()
    np.testing.assert_allclose(fast.sum(1), exact.sum(1), rtol=1e-4)
    np.testing.assert_allclose(fast.sum(0), 2.0 / 70, rtol=1e-5)
    far = x0.copy()
    for value in (8.0, 40.0):  # C / reg ~ 400 (float32 kernel row is 0) and ~ 950 (float64 too)
        far[0] = value
        plan = semi_relaxed_plan(far, x1, ratio=2.0)
        assert np.isfinite(plan).all()
        np.testing.assert_allclose(plan.sum(0), 2.0 / 70, rtol=1e-3)


def test_config_of_files_written_before_the_shared_head():
    """Saved configs without ``growth_head`` / ``ode_solver`` are models with a separate growth network."""
    saved = VGFMConfig(width=8, depth=1).to_dict()
    del saved["growth_head"], saved["ode_solver"]
    cfg = VGFMConfig.from_saved(saved)
    assert (cfg.growth_head, cfg.ode_solver) == ("separate", "euler")
    assert VGFM(3, cfg).growth_net is not None
    with pytest.raises(ValueError, match="growth_head"):
        VGFMConfig(growth_head="trunk")
    with pytest.raises(ValueError, match="ode_solver"):
        VGFMConfig(ode_solver="rk4")
