"""The model stored in the AnnData (get_model, model=None), fit_flow(copy=True), and predictions that join the data."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import TINY, method_kwargs

import sctraj
import sctraj.models as M

METHODS = M.available_methods()


def _digest(adata, path) -> str:
    adata.write_h5ad(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", METHODS)
def test_stored_model_survives_h5ad(adata_time, method, tmp_path):
    """write_h5ad -> read_h5ad -> predict(model=None) gives the same cells as the in-memory model, every method."""
    a = adata_time
    model = sctraj.tl.fit_flow(a, "time", method=method, **method_kwargs(method))
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    stored = sctraj.tl.get_model(b)
    assert stored.method_name == method and stored.dim == model.dim
    # every network tensor (incl. method extras: growth nets, metric/geodesic nets, encoders) comes back exactly
    s1, s2 = model.method.state_dict(), stored.method.state_dict()
    assert set(s1) == set(s2)
    for k in s1:
        np.testing.assert_array_equal(s1[k].cpu().numpy(), s2[k].cpu().numpy(), err_msg=k)
    assert stored.method.config == model.method.config
    for t0, t1 in ((0.0, 2.5), (2.5, 1.0)):
        p_mem = sctraj.tl.predict(a, model, source_time=t0, target_time=t1)
        p_disk = sctraj.tl.predict(b, source_time=t0, target_time=t1)
        np.testing.assert_array_equal(p_mem.obsm["X_pca"], p_disk.obsm["X_pca"])
        np.testing.assert_array_equal(p_mem.obs["weight"], p_disk.obs["weight"])
        assert p_mem.obs_names.tolist() == p_disk.obs_names.tolist()
    g_mem = sctraj.tl.interpolate(a, model, [0.5, 1.7], n_cells=10)
    g_disk = sctraj.tl.interpolate(b, times=[0.5, 1.7], n_cells=10)
    np.testing.assert_array_equal(g_mem.obsm["X_pca"], g_disk.obsm["X_pca"])
    np.testing.assert_array_equal(model.history["loss"], np.asarray(stored.history["loss"], np.float32))


def test_get_model_errors(adata_time):
    with pytest.raises(KeyError, match="Run sctraj.tl.fit_flow"):
        sctraj.tl.get_model(adata_time)
    with pytest.raises(KeyError, match="Run sctraj.tl.fit_flow"):
        sctraj.tl.predict(adata_time, source_time=0.0, target_time=1.0)
    sctraj.tl.fit_flow(adata_time, "time", key_added="fit1", **TINY)
    with pytest.raises(KeyError, match=r"Fitted models in this AnnData: \['fit1'\]"):
        sctraj.tl.get_model(adata_time)
    assert sctraj.tl.get_model(adata_time, key_added="fit1").method_name == "otcfm"
    adata_time.uns["fit1"]["model"]["format"] = "something-else"
    with pytest.raises(ValueError, match="not an sctraj model"):
        sctraj.tl.get_model(adata_time, key_added="fit1")
    del adata_time.uns["fit1"]["model"]["weights"]
    with pytest.raises(ValueError, match="not a complete sctraj model record"):
        sctraj.tl.get_model(adata_time, key_added="fit1")
    with pytest.raises(TypeError, match="model must be the TrajectoryModel"):
        sctraj.tl.predict(adata_time, "otcfm", source_time=0.0, target_time=1.0)


def test_copy_leaves_input_byte_identical(adata_time, tmp_path):
    a = adata_time
    before = _digest(a, tmp_path / "before.h5ad")
    fitted = sctraj.tl.fit_flow(a, "time", copy=True, **TINY)
    assert _digest(a, tmp_path / "after.h5ad") == before
    assert "sctraj" not in a.uns and "sctraj_velocity_pca" not in a.obsm
    assert isinstance(fitted, ad.AnnData) and fitted is not a
    assert "sctraj_velocity_pca" in fitted.obsm and "sctraj_growth_rate" in fitted.obs
    # the model of the copy is the one fitted in place with the same seed
    model = sctraj.tl.fit_flow(a, "time", **TINY)
    np.testing.assert_array_equal(fitted.obsm["sctraj_velocity_pca"], a.obsm["sctraj_velocity_pca"])
    p1 = sctraj.tl.predict(fitted, source_time=0.0, target_time=1.0)
    p2 = sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0)
    np.testing.assert_array_equal(p1.obsm["X_pca"], p2.obsm["X_pca"])
    with pytest.raises(TypeError, match="copy must be True or False"):
        sctraj.tl.fit_flow(a, "time", copy="yes", **TINY)


def test_prediction_joins_the_data(adata_time, tmp_path):
    a = adata_time
    a.X = np.arange(a.n_obs * a.n_vars, dtype=np.float32).reshape(a.n_obs, a.n_vars)
    a.obs["day"] = a.obs["time"].map(lambda t: f"{t:g}").astype("category")
    a.obsm["X_umap"] = a.obsm["X_pca"][:, :2] * 3.0
    sctraj.tl.fit_flow(a, "day", **TINY)
    pred = sctraj.tl.predict(a, source_time=0.0, target_time=2.5)
    n0 = int((a.obs["time"] == 0).sum())
    # var and X follow the input: X rows are the nearest observed cells' expression
    assert pred.n_vars == a.n_vars and pred.var_names.tolist() == a.var_names.tolist()
    np.testing.assert_array_equal(pred.X, a[pred.obs["nearest_cell"].to_numpy()].X)
    # the fit's time column holds the predicted time (same categorical labels), and the source is marked
    assert isinstance(pred.obs["day"].dtype, pd.CategoricalDtype)
    assert set(pred.obs["day"]) == {"2.5"} and (pred.obs["source_time"] == 0.0).all()
    assert (pred.obs["sctraj_source"] == "predicted").all() and "sctraj_growth_rate" not in pred.obs
    assert pred.obsm["X_umap"].shape == (n0, 2) and np.isfinite(pred.obsm["X_umap"]).all()
    # concat works, plainly and with the observed/predicted label
    both = ad.concat([a, pred])
    assert both.n_obs == a.n_obs + n0 and both.n_vars == a.n_vars
    assert sorted(both.obs["day"].cat.categories) == ["0", "1", "2.5"]
    lab = ad.concat({"observed": a, "predicted": pred}, label="sctraj_source")
    assert lab.obs["sctraj_source"].value_counts().to_dict() == {"observed": a.n_obs, "predicted": n0}
    assert lab.obs_names.is_unique
    lab.write_h5ad(tmp_path / "both.h5ad")
    # predictions carry the model: predict on the result of predict
    back = sctraj.tl.predict(pred, source_time=2.5, target_time=1.0)
    assert back.n_obs == n0 and set(back.obs["day"]) == {"1"}
    np.testing.assert_array_equal(back.obs["source_cell"], pred.obs_names)
    # numeric time columns stay numeric
    sctraj.tl.fit_flow(a, "time", **TINY)
    p = sctraj.tl.predict(a, source_time=1.0, target_time=1.7)
    assert p.obs["time"].dtype == np.float64 and (p.obs["time"] == 1.7).all()
    assert ad.concat([a, p]).obs["time"].dtype == np.float64


def test_pl_draws_observed_and_predicted_together(adata_time):
    import matplotlib.pyplot as plt

    a = adata_time
    sctraj.tl.fit_flow(a, "time", **TINY)
    pred = sctraj.tl.predict(a, source_time=0.0, target_time=2.5)
    both = ad.concat({"observed": a, "predicted": pred}, label="sctraj_source", uns_merge="first")
    axs = sctraj.pl.marginals(both, show=False)  # predicted cells found through obs["sctraj_source"]
    ax = axs if not isinstance(axs, list) else axs[0]
    assert "predicted" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    plt.close("all")
    ax = sctraj.pl.marginals(a, predicted=pred, show=False)
    assert ax.get_title().startswith("time 2.5")
    plt.close("all")


def test_trajectories_opt_in_above_size(adata_time, capfd, monkeypatch):
    monkeypatch.setattr(sctraj.settings, "trajectory_max_mb", 1e-4)
    monkeypatch.setattr(sctraj.settings, "_verbosity", 1)
    sctraj.tl.fit_flow(adata_time, "time", **TINY)
    err = capfd.readouterr().err
    assert "Not writing obsm['sctraj_trajectory']" in err and "trajectory_n_grid=10" in err and "MB" in err
    assert "sctraj_trajectory" not in adata_time.obsm
    sctraj.tl.fit_flow(adata_time, "time", trajectory_n_grid=4, **TINY)  # explicit: written
    assert adata_time.obsm["sctraj_trajectory"].shape[1] == 4
    assert "Not writing" not in capfd.readouterr().err


def test_verbosity_zero_prints_nothing(adata_time, capfd, monkeypatch):
    import scanpy as sc

    monkeypatch.setattr(sctraj.settings, "_verbosity", None)  # follow scanpy
    old = sc.settings.verbosity
    try:
        _check_verbosity(adata_time, capfd, sc)
    finally:
        sc.settings.verbosity = old


def _check_verbosity(adata_time, capfd, sc):
    sc.settings.verbosity = 0
    assert sctraj.settings.verbosity == 0
    kw = {**TINY, "progress": True}
    sctraj.tl.fit_flow(adata_time, "time", method="vgfm", **kw)
    sctraj.tl.predict(adata_time, source_time=0.0, target_time=1.0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    sc.settings.verbosity = 2  # info: what was written, without internal keys of the loop
    sctraj.tl.fit_flow(adata_time, "time", **{**TINY, "progress": False})
    err = capfd.readouterr().err
    assert "fitting 'otcfm'" in err and "uns['sctraj']" in err
    sctraj.settings.verbosity = 0  # sctraj's own setting wins over scanpy's
    sctraj.tl.fit_flow(adata_time, "time", **kw)
    assert capfd.readouterr() == ("", "")
    with pytest.raises(ValueError, match="verbosity must be an integer 0-4"):
        sctraj.settings.verbosity = "loud"


def test_one_progress_display_per_fit_clean_in_logs(adata_time, capfd, monkeypatch):
    """metricfm trains in two phases: one display, and in a log file (stderr not a terminal) only plain lines."""
    monkeypatch.setattr(sctraj.settings, "_verbosity", 1)
    kw = {**method_kwargs("metricfm"), "progress": True}
    sctraj.tl.fit_flow(adata_time, "time", method="metricfm", **kw)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and "\x1b" not in err
    assert 1 <= len(lines) <= 6 and all(ln.startswith("metricfm") and "steps" in ln for ln in lines)
    assert lines[-1].startswith("metricfm: ") and "(100%)" in lines[-1]

    from sctraj.engine.progress import FitProgress, fit_progress, phase

    with fit_progress(True) as prog:  # phases inside a fit extend the same display
        prog.kind = "lines"
        with phase(10, "a", True) as p1, phase(30, "b", True) as p2:
            assert p1 is prog and p2 is prog and prog.total == 40
    assert isinstance(prog, FitProgress)
    capfd.readouterr()


def test_leave_one_out_logs_no_internal_keys(adata_time, capfd, monkeypatch):
    monkeypatch.setattr(sctraj.settings, "_verbosity", 2)
    sctraj.tl.leave_one_out(adata_time, "time", methods=["otcfm"], seeds=[0], n_steps=20, batch_size=32,
                            progress=False, width=16, depth=2)
    err = capfd.readouterr().err
    assert "leave_one_out: otcfm heldout=1" in err and "_sctraj_loo" not in err
