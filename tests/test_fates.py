"""Fate probabilities, cell-type transitions, push / pull and couplings (issue 13), on a simulated bifurcation with
known fate probabilities; the CellRank hand-off is run for real."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import norm, spearmanr

import sctraj

FIT = {"n_steps": 300, "batch_size": 64, "width": 32, "depth": 2, "progress": False, "trajectory_n_grid": 0}


def bifurcation(n: int = 150, *, a: float = 1.2, s: float = 0.3, times=(0.0, 1.0, 2.0), n_genes: int = 0, seed=0):
    """Our own simulator of a pitchfork: ``dx = a x dt + s dW``, ``dy = 2 dt``; fate = sign of ``x`` at the end.

    Each time point is an independent snapshot of ``n`` cells started from ``x0 ~ N(0, 0.5^2)``. A cell at ``(x, t)``
    ends at ``x e^{a (T - t)} + N(0, s^2 (e^{2 a (T - t)} - 1) / (2 a))``, so its true probability of fate ``B``
    (``x_T > 0``) is ``Phi(x e^{a (T - t)} / sd)``, stored in ``obs["true_B"]``. Labels exist only at the last time.
    """
    rng = np.random.default_rng(seed)
    T = times[-1]
    X, tt = [], []
    for tv in times:
        x0, y0 = rng.normal(0, 0.5, n), rng.normal(0, 0.2, n)
        sd = np.sqrt(s**2 * (np.exp(2 * a * tv) - 1) / (2 * a))
        X.append(np.c_[x0 * np.exp(a * tv) + sd * rng.normal(size=n), y0 + 2.0 * tv])
        tt.append(np.full(n, tv))
    X, tt = np.concatenate(X), np.concatenate(tt)
    dt = T - tt
    sd = np.sqrt(s**2 * (np.exp(2 * a * dt) - 1) / (2 * a))
    with np.errstate(divide="ignore", invalid="ignore"):
        true_b = np.where(dt > 0, norm.cdf(X[:, 0] * np.exp(a * dt) / sd), np.nan)
    obs = pd.DataFrame({
        "time": tt,
        "fate": pd.Categorical(np.where(dt == 0, np.where(X[:, 0] > 0, "B", "A"), None), categories=["A", "B"]),
        "side": pd.Categorical(np.where(X[:, 0] > 0, "right", "left")),
        "true_B": true_b,
    }, index=[f"c{i}" for i in range(len(tt))])
    Xg = None
    if n_genes:
        G = rng.normal(size=(2, n_genes))
        Xg = (X @ G + 0.1 * rng.normal(size=(len(tt), n_genes))).astype(np.float32)
    adata = ad.AnnData(Xg, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]) if n_genes else None)
    adata.obsm["X_sim"] = X.astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def fitted():
    adata = bifurcation()
    models = {m: sctraj.tl.fit_flow(adata, "time", method=m, use_rep="X_sim", **FIT) for m in ("otcfm", "vgfm")}
    return adata, models


@pytest.mark.parametrize("method", ["otcfm", "vgfm"])
def test_bifurcation_recovers_true_fates(fitted, method):
    adata, models = fitted
    adata = adata.copy()
    df = sctraj.tl.fate_probabilities(adata, models[method], "fate", n_steps=20)
    assert list(df.columns) == ["A", "B"]
    for tv in (0.0, 1.0):
        here = (adata.obs["time"] == tv).to_numpy()
        rho = spearmanr(df.loc[here, "B"], adata.obs["true_B"][here]).statistic
        assert rho >= 0.8, (method, tv, rho)
    # the flow is what does it: label transfer from the cell's own position (no dynamics) ranks cells the same way
    # (x keeps its sign) but its probabilities are far off the true ones
    src = (adata.obs["time"] == 0).to_numpy()
    tgt = (adata.obs["time"] == 2).to_numpy()
    from sctraj.tl._transfer import kernel_weights

    X = adata.obsm["X_sim"]
    static = kernel_weights(X[src], X[tgt], 30) @ (adata.obs["fate"][tgt] == "B").to_numpy(float)
    true_b = adata.obs["true_B"][src].to_numpy()
    err_flow = np.abs(df.loc[src, "B"].to_numpy() - true_b).mean()
    err_static = np.abs(static - true_b).mean()
    assert err_flow < 0.6 * err_static, (err_flow, err_static)


def test_fate_probabilities_contract(fitted, tmp_path):
    adata, models = fitted
    adata = adata.copy()
    df = sctraj.tl.fate_probabilities(adata, models["otcfm"], "fate", n_steps=10, key_added="fl")
    stored = adata.obsm["fl_fate_probabilities"]
    assert isinstance(stored, pd.DataFrame) and stored.index.equals(adata.obs_names)
    early = (adata.obs["time"] < 2).to_numpy()
    np.testing.assert_allclose(df[early].sum(1), 1.0, atol=1e-9)
    assert df[~early].isna().all().all()
    assert (df[early] >= 0).all().all()
    rec = adata.uns["fl"]["fate_probabilities"]
    assert rec["target_time"] == 2.0 and rec["groupby"] == "fate" and rec["method"] == "otcfm"
    # one source time only; the rest NaN
    df1 = sctraj.tl.fate_probabilities(adata, models["otcfm"], "fate", source_times=[1], n_steps=10)
    assert df1[(adata.obs["time"] == 0).to_numpy()].isna().all().all()
    np.testing.assert_allclose(df1.loc[(adata.obs["time"] == 1).to_numpy()].to_numpy(),
                               df.loc[(adata.obs["time"] == 1).to_numpy()].to_numpy(), atol=1e-6)
    path = tmp_path / "f.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(back.obsm["fl_fate_probabilities"], stored, check_dtype=False)
    assert float(back.uns["fl"]["fate_probabilities"]["target_time"]) == 2.0


def test_growth_weighting_is_the_progeny_share(fitted):
    """vgfm: a source type's row of cell_transition is the mass-weighted mean of its cells' fate probabilities."""
    adata, models = fitted
    adata = adata.copy()
    model = models["vgfm"]
    kw = {"n_steps": 10, "n_source_neighbors": 1}
    df = sctraj.tl.fate_probabilities(adata, model, "fate", source_times=[0], **kw)
    tab = sctraj.tl.cell_transition(adata, model, 0, 2, "side", "fate", **kw)
    src = np.flatnonzero((adata.obs["time"] == 0).to_numpy())
    _, lw = model.push(adata.obsm["X_sim"][src], 0.0, 2.0, n_steps=10)
    m = np.exp(lw.astype(float))
    assert m.std() > 0  # the fitted growth makes masses differ, so the weighting is exercised
    side = adata.obs["side"].to_numpy()[src]
    for grp in ("left", "right"):
        sel = side == grp
        expect = (m[sel] @ df.iloc[src[sel]].to_numpy()) / m[sel].sum()
        np.testing.assert_allclose(tab.loc[grp].to_numpy(), expect, atol=1e-5)
    assert adata.uns["sctraj"]["fate_probabilities"]["growth_weighted"]


def test_cell_transition_push_pull(fitted):
    adata, models = fitted
    adata = adata.copy()
    model = models["otcfm"]
    fwd = sctraj.tl.cell_transition(adata, model, 1, 2, "side", "fate", n_steps=10)
    assert list(fwd.index) == ["left", "right"] and list(fwd.columns) == ["A", "B"]
    np.testing.assert_allclose(fwd.sum(1), 1.0, atol=1e-9)
    assert fwd.loc["left", "A"] > 0.8 and fwd.loc["right", "B"] > 0.8
    bwd = sctraj.tl.cell_transition(adata, model, 1, 2, "side", "fate", forward=False, n_steps=10)
    np.testing.assert_allclose(bwd.sum(0), 1.0, atol=1e-9)
    assert bwd.loc["left", "A"] > 0.8 and bwd.loc["right", "B"] > 0.8

    src = ((adata.obs["time"] == 0) & (adata.obs["side"] == "right")).to_numpy()
    pushed = sctraj.tl.push(adata, model, src, 2, n_steps=10)
    assert np.isclose(pushed.sum(), 1.0) and len(pushed) == int((adata.obs["time"] == 2).sum())
    pd.testing.assert_series_equal(sctraj.tl.push(adata, model, ("side", "right"), 2, source_time=0, n_steps=10),
                                   pushed)
    col = adata.obs["sctraj_push"]
    assert col[(adata.obs["time"] != 2).to_numpy()].isna().all()
    assert pushed[adata.obs.loc[pushed.index, "fate"] == "B"].sum() > 0.7

    pulled = sctraj.tl.pull(adata, model, ("fate", "A"), 0, key_added="anc")
    assert np.isclose(pulled.sum(), 1.0) and len(pulled) == int((adata.obs["time"] == 0).sum())
    # ancestors of fate A: the time-0 cells weighted by their true chance of becoming A (uniform would give a rank
    # correlation of 0 and a left share of 0.5; the truth puts 0.87 on the left, the tiny 300-step flow ~0.7)
    truth = 1.0 - adata.obs.loc[pulled.index, "true_B"]
    assert spearmanr(pulled, truth).statistic > 0.6
    assert pulled[(adata.obs.loc[pulled.index, "side"] == "left").to_numpy()].sum() > 0.6
    assert "anc" in adata.obs


def test_couplings_sparse_rows_sum_to_one(fitted):
    adata, models = fitted
    c = sctraj.tl.couplings(adata, models["vgfm"], n_steps=10, n_neighbors=12)
    assert list(c) == [(0.0, 1.0), (1.0, 2.0)]
    for M in c.values():
        assert sp.isspmatrix_csr(M) and M.shape == (150, 150) and M.nnz == 150 * 12
        np.testing.assert_allclose(np.asarray(M.sum(1)).ravel(), 1.0, atol=1e-9)
    # model=None: the model fit_flow stored in adata.uns["sctraj"] (the fixture's last fit, vgfm)
    stored = sctraj.tl.couplings(adata, None, n_steps=10, n_neighbors=12)
    for k, M in c.items():
        np.testing.assert_allclose(stored[k].toarray(), M.toarray(), atol=1e-5)
    sub = adata.copy()
    sub.obs["time"] = sub.obs["time"].map({0.0: "0", 1.0: "1", 2.0: "2"}).astype("category")
    assert list(sctraj.tl.couplings(sub, models["vgfm"], times=[1, 2], n_steps=5)) == [("1", "2")]


def _snapshot(adata):
    return (adata.obs.copy(), {k: np.asarray(v).copy() for k, v in adata.obsm.items()}, copy.deepcopy(dict(adata.uns)))


def _same(adata, snap):
    obs, obsm, uns = snap
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.obsm) == set(obsm)
    assert set(adata.uns) == set(uns)


def test_bad_inputs_leave_adata_unchanged(fitted):
    adata, models = fitted
    adata = adata.copy()
    model = models["otcfm"]
    snap = _snapshot(adata)
    bad = [
        (KeyError, "not a column of adata.obs", lambda: sctraj.tl.fate_probabilities(adata, model, "celltype")),
        (ValueError, "no labels among", lambda: sctraj.tl.fate_probabilities(adata, model, "fate", target_time=1)),
        (ValueError, "not before target_time",
         lambda: sctraj.tl.fate_probabilities(adata, model, "fate", target_time=2, source_times=[1, 2])),
        (ValueError, "must be before", lambda: sctraj.tl.cell_transition(adata, model, 2, 1, "side", "side")),
        (ValueError, "must be after",
         lambda: sctraj.tl.push(adata, model, (adata.obs["time"] == 2).to_numpy(), 1)),
        (ValueError, "must be before", lambda: sctraj.tl.pull(adata, model, ("fate", "A"), 2)),
        (ValueError, "has shape", lambda: sctraj.tl.push(adata, model, np.ones(5, bool), 2)),
        (ValueError, "several time points.*source_time=",
         lambda: sctraj.tl.push(adata, model, ("side", "left"), 2)),
        (TypeError, "boolean mask", lambda: sctraj.tl.push(adata, model, np.arange(adata.n_obs), 2)),
        (ValueError, "n_neighbors", lambda: sctraj.tl.fate_probabilities(adata, model, "fate", n_neighbors=0)),
    ]
    for exc, msg, call in bad:
        with pytest.raises(exc, match=msg):
            call()
        _same(adata, snap)
    # a model fitted on another embedding: missing key, or fewer dims than the model's
    other = adata.copy()
    other.obsm["X_pca"] = other.obsm.pop("X_sim")
    with pytest.raises(KeyError, match="fitted on adata.obsm\\['X_sim'\\]"):
        sctraj.tl.fate_probabilities(other, model, "fate")
    other.obsm["X_sim"] = other.obsm["X_pca"][:, :1]
    with pytest.raises(ValueError, match="fitted on 2 dims"):
        sctraj.tl.cell_transition(other, model, 0, 2, "side", "fate")
    assert "sctraj_fate_probabilities" not in other.obsm and "fate_probabilities" not in other.uns.get("sctraj", {})


def test_cellrank_realtime_kernel_gpcca():
    """The hand-off: RealTimeKernel reads tl.couplings; GPCCA finds both fates, their probabilities and drivers."""
    import cellrank as cr
    import scanpy as sc

    adata = bifurcation(n=80, n_genes=12, seed=1)
    model = sctraj.tl.fit_flow(adata, "time", method="otcfm", use_rep="X_sim", **FIT)
    adata.obs["time"] = adata.obs["time"].astype("category")
    c = sctraj.tl.couplings(adata, model, n_steps=10)
    sc.pp.neighbors(adata, use_rep="X_sim", n_neighbors=15)
    rtk = cr.kernels.RealTimeKernel(adata, time_key="time", couplings=c)
    rtk.compute_transition_matrix(self_transitions="all", conn_weight=0.2, threshold="auto")
    assert rtk.transition_matrix.shape == (adata.n_obs, adata.n_obs)
    g = cr.estimators.GPCCA(rtk)
    g.compute_schur(n_components=5)
    g.compute_macrostates(n_states=2, cluster_key="fate")
    g.predict_terminal_states()
    assert set(g.terminal_states.cat.categories) == {"A", "B"}
    ts = g.terminal_states.to_numpy()
    assert (adata.obs["side"][ts == "A"] == "left").all() and (adata.obs["side"][ts == "B"] == "right").all()
    assert (adata.obs["time"].astype(float)[pd.notna(ts)] >= 1).all()
    g.compute_fate_probabilities()
    fp = g.fate_probabilities
    b = list(fp.names).index("B")
    src = (adata.obs["time"].astype(float) < 2).to_numpy()
    assert spearmanr(np.asarray(fp)[src, b], adata.obs["true_B"][src]).statistic > 0.8
    drivers = g.compute_lineage_drivers()
    assert {"A_corr", "B_corr"} <= set(drivers.columns) and len(drivers) == 12


def test_plots_follow_the_contract(fitted, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    adata, models = fitted
    adata = adata.copy()
    with pytest.raises(KeyError, match="tl.fate_probabilities"):
        sctraj.pl.fate_probabilities(adata, basis="X_sim", show=False)
    sctraj.tl.fate_probabilities(adata, models["otcfm"], "fate", n_steps=10)
    axs = sctraj.pl.fate_probabilities(adata, basis="X_sim", show=False)
    assert len(axs) == 2 and all(isinstance(a, Axes) for a in axs)
    fig = sctraj.pl.fate_probabilities(adata, basis="sim", fates="B", return_fig=True, save=tmp_path / "f.png")
    assert (tmp_path / "f.png").exists() and fig.axes[0].get_title() == "B"
    with pytest.raises(ValueError, match="not among the computed fates"):
        sctraj.pl.fate_probabilities(adata, basis="X_sim", fates="C", show=False)
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="one panel"):
        sctraj.pl.fate_probabilities(adata, basis="X_sim", ax=ax, show=False)
    tab = sctraj.tl.cell_transition(adata, models["otcfm"], 1, 2, "side", "fate", n_steps=10)
    out = sctraj.pl.cell_transition(tab, ax=ax, show=False)
    assert out is ax and len(ax.texts) == tab.size
    with pytest.raises(TypeError, match="DataFrame"):
        sctraj.pl.cell_transition(tab.to_numpy(), show=False)
    plt.close("all")


@pytest.mark.parametrize("method", ["icfm", "otcfm", "sbcfm", "vgfm", "metricfm", "metafm"])
def test_every_method(adata_time, method):
    """Every method's model goes through the fate functions (metafm per population)."""
    from conftest import method_kwargs

    adata = adata_time
    model = sctraj.tl.fit_flow(adata, "time", method=method, use_rep="X_pca", **method_kwargs(method))
    adata.obs["type"] = pd.Categorical(np.where(adata.obsm["X_pca"][:, 0] > np.median(adata.obsm["X_pca"][:, 0]),
                                                "hi", "lo"))
    df = sctraj.tl.fate_probabilities(adata, model, "type", n_steps=5)
    early = (adata.obs["time"] < 2.5).to_numpy()
    np.testing.assert_allclose(df[early].sum(1), 1.0, atol=1e-9)
    c = sctraj.tl.couplings(adata, model, n_steps=5, n_neighbors=5)
    assert all(np.allclose(np.asarray(M.sum(1)).ravel(), 1.0) for M in c.values())
    pulled = sctraj.tl.pull(adata, model, ("type", "hi"), 0.0, target_time=2.5, n_steps=5)
    assert np.isclose(pulled.sum(), 1.0)
