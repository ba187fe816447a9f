"""Contract tests run for every registered method (new methods are covered automatically)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from conftest import method_kwargs

import sctraj
import sctraj.models as M

METHODS = M.available_methods()


def test_six_methods_registered():
    assert {"icfm", "otcfm", "sbcfm"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_fit_writes_keys_and_roundtrips(adata_time, method, tmp_path):
    a = adata_time
    model = sctraj.tl.fit_flow(a, "time", method=method, **method_kwargs(method))
    d = model.dim
    v = a.obsm["sctraj_velocity_pca"]
    assert v.shape == (a.n_obs, d) and np.isfinite(v).all()
    g = a.obs["sctraj_growth_rate"].to_numpy()
    assert np.isfinite(g).all()
    if not model.has_growth:
        assert (g == 0).all()
    tr = a.obsm["sctraj_trajectory"]
    assert tr.shape == (a.n_obs, 10, d)
    last = a.obs["time"].to_numpy() == a.obs["time"].max()
    assert np.isnan(tr[last]).all() and np.isfinite(tr[~last]).all()
    # trajectories start at the cells themselves
    np.testing.assert_allclose(tr[~last, 0], a.obsm["X_pca"][~last], atol=1e-5)
    rec = a.uns["sctraj"]
    assert rec["params"]["method"] == method
    assert rec["params"]["use_rep"] == "X_pca"
    assert len(rec["history"]["loss"]) >= 20 and np.isfinite(rec["history"]["loss"]).all()
    assert "version" in rec["params"] and "config" in rec["params"]
    # h5ad round trip
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(b.obsm["sctraj_velocity_pca"], v)
    np.testing.assert_array_equal(b.obsm["sctraj_trajectory"], tr)
    assert b.uns["sctraj"]["params"]["method"] == method
    # save / load gives identical velocities
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    X = a.obsm["X_pca"][:20]
    cond = model.population_condition(X) if model.setup.get("population_key") else None
    cond2 = m2.population_condition(X) if model.setup.get("population_key") else None
    np.testing.assert_array_equal(model.velocity(X, 1.0, cond=cond), m2.velocity(X, 1.0, cond=cond2))
    p1 = sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0)
    p2 = sctraj.tl.predict(a, m2, source_time=0.0, target_time=1.0)
    np.testing.assert_array_equal(p1.obsm["X_pca"], p2.obsm["X_pca"])
    np.testing.assert_array_equal(p1.obs["weight"], p2.obs["weight"])


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_results(adata_time, method):
    a, b = adata_time.copy(), adata_time.copy()
    m1 = sctraj.tl.fit_flow(a, "time", method=method, random_state=3, **method_kwargs(method))
    m2 = sctraj.tl.fit_flow(b, "time", method=method, random_state=3, **method_kwargs(method))
    np.testing.assert_array_equal(a.uns["sctraj"]["history"]["loss"], b.uns["sctraj"]["history"]["loss"])
    np.testing.assert_array_equal(a.obsm["sctraj_velocity_pca"], b.obsm["sctraj_velocity_pca"])
    p1 = sctraj.tl.predict(a, m1, source_time=0.0, target_time=2.5)
    p2 = sctraj.tl.predict(b, m2, source_time=0.0, target_time=2.5)
    np.testing.assert_array_equal(p1.obsm["X_pca"], p2.obsm["X_pca"])
    c = adata_time.copy()
    sctraj.tl.fit_flow(c, "time", method=method, random_state=4, **method_kwargs(method))
    assert not np.array_equal(a.uns["sctraj"]["history"]["loss"], c.uns["sctraj"]["history"]["loss"])


@pytest.mark.parametrize("method", METHODS)
def test_predict_and_interpolate(adata_time, method):
    a = adata_time
    model = sctraj.tl.fit_flow(a, "time", method=method, **method_kwargs(method))
    before = a.copy()
    fwd = sctraj.tl.predict(a, model, source_time=0.0, target_time=2.5)
    n0 = int((a.obs["time"] == 0).sum())
    assert fwd.n_obs == n0 and fwd.obsm["X_pca"].shape == (n0, model.dim)
    assert (fwd.obs["time"] == 2.5).all() and np.isfinite(fwd.obs["weight"]).all()
    assert (fwd.obs["weight"] > 0).all()
    if not model.has_growth:
        assert (fwd.obs["weight"] == 1).all()
    back = sctraj.tl.predict(a, model, source_time=2.5, target_time=1.0)
    assert back.n_obs == int((a.obs["time"] == 2.5).sum())
    gen = sctraj.tl.interpolate(a, model, [0.5, 1.7], n_cells=15)
    assert gen.n_obs == 30 and sorted(set(gen.obs["time"])) == [0.5, 1.7]
    # predict / interpolate never modify the input
    assert set(a.obsm) == set(before.obsm) and set(a.obs.columns) == set(before.obs.columns)
