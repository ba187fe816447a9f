"""Public API behaviour: datasets, import hygiene, real time handling, leave_one_out, evaluate, recovery."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sctraj


def test_import_does_not_load_torch():
    code = "import sys, sctraj, sctraj.pl, sctraj.pp; assert 'torch' not in sys.modules, 'torch'; " \
           "assert 'ot' not in sys.modules, 'pot'; assert 'torchdiffeq' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("loader", "n", "rep", "tkey", "counts"),
    [
        ("hematopoiesis", 10998, "X_emb", "day", [1429, 3781, 5788]),
        ("eb", 2750, "X_pca", "day", [550] * 5),
        ("ipsc", 1896, "X_emb", "time", [231, 166, 93, 211, 122, 258, 456, 359]),
    ],
)
def test_bundled_datasets(loader, n, rep, tkey, counts, tmp_path):
    a = getattr(sctraj.datasets, loader)()
    assert a.n_obs == n and rep in a.obsm and np.isfinite(a.obsm[rep]).all()
    assert a.obs.groupby(tkey).size().tolist() == counts
    assert sctraj.datasets.__dict__[loader].__doc__.count("Provenance") == 1
    a.write_h5ad(tmp_path / "d.h5ad")


def test_gene_level_datasets(tmp_path):
    k = sctraj.datasets.klein_mesc()
    assert k.shape == (1000, 900) and k.obs.groupby("day").size().tolist() == [359, 101, 248, 292]
    counts = k.layers["counts"].toarray()
    assert np.array_equal(k.X.toarray(), counts) and np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    assert k.var_names.is_unique and k.obs["day"].dtype.kind == "f"
    r = sctraj.datasets.reprogramming()
    assert r.obs.groupby("day").size().tolist() == [318, 316, 366]
    assert {"Stromal", "Epithelial", "IPS"} <= set(r.obs["cell_type"].cat.categories)
    assert isinstance(r.uns["cell_transition_10_105_forward"], pd.DataFrame)
    assert r.uns["tmap_10_105"].shape == (318, 316)
    la = sctraj.datasets.larry()
    assert la.obs.groupby("day").size().tolist() == [34, 316, 431]
    assert la.obsm["X_clone"].shape == (781, 339) and la.obs["cell_type"].dtype == "category"
    clone_days = [set(la.obs["day"].to_numpy()[la.obsm["X_clone"][:, j].nonzero()[0]]) for j in range(339)]
    assert sum(len(s) > 1 for s in clone_days) == 126
    for name, a in [("k", k), ("r", r), ("l", la)]:
        assert getattr(sctraj.datasets, {"k": "klein_mesc", "r": "reprogramming", "l": "larry"}[name]).__doc__.count(
            "Provenance") == 1
        a.write_h5ad(tmp_path / f"{name}.h5ad")


def test_simulate_ground_truth():
    a = sctraj.datasets.simulate(n_cells=200, growth=True, growth_rates=(0.4, -0.3), random_state=1)
    sim = a.uns["simulate"]
    counts = a.obs.groupby("time").size().to_numpy()
    np.testing.assert_allclose(counts / counts[0], sim["true_mass"], rtol=0.02)
    # the stored true velocity is A x + b at the (noise-free) positions
    np.testing.assert_allclose(a.obsm["true_velocity"], a.obsm["X_sim"] @ sim["A"].T + sim["b"], rtol=1e-4, atol=1e-4)


def test_otcfm_recovers_known_velocity():
    a = sctraj.datasets.simulate(n_cells=400, times=(0.0, 0.5, 1.0, 1.5), random_state=0)
    sctraj.tl.fit_flow(a, "time", method="otcfm", use_rep="X_sim", n_steps=600, progress=False,
                       trajectory_n_grid=0)
    v, v_true = a.obsm["sctraj_velocity_sim"], a.obsm["true_velocity"]
    inner = (a.obs["time"] > 0) & (a.obs["time"] < 1.5)
    cos = (v * v_true).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(v_true, axis=1)
    assert np.median(cos[inner.to_numpy()]) > 0.95
    ratio = np.linalg.norm(v[inner.to_numpy()], axis=1) / np.linalg.norm(v_true[inner.to_numpy()], axis=1)
    assert 0.8 < np.median(ratio) < 1.25


def test_real_time_values_not_ranks():
    """Stretching time by a factor divides velocities by that factor; unequal intervals are respected."""
    a = sctraj.datasets.simulate(n_cells=120, times=(0.0, 1.0, 3.0), random_state=0)
    b = a.copy()
    b.obs["time"] = b.obs["time"] * 10
    kw = {**TINY, "use_rep": "X_sim", "method": "otcfm"}
    ma = sctraj.tl.fit_flow(a, "time", **kw)
    mb = sctraj.tl.fit_flow(b, "time", **kw)
    np.testing.assert_allclose(a.obsm["sctraj_velocity_sim"], 10 * b.obsm["sctraj_velocity_sim"], rtol=1e-4,
                               atol=1e-6)
    assert list(ma.times) == [0.0, 1.0, 3.0] and list(mb.times) == [0.0, 10.0, 30.0]


def test_excluded_time_joins_neighbours():
    a = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0, 3.0), random_state=0)
    m = sctraj.tl.fit_flow(a, "time", use_rep="X_sim", exclude_times=1.0, **TINY)
    assert list(m.times) == [0.0, 2.0, 3.0]
    assert list(a.uns["sctraj"]["params"]["excluded_times"]) == [1.0]
    # cells of the excluded time still get a velocity and a trajectory to the next kept time
    at1 = (a.obs["time"] == 1.0).to_numpy()
    assert np.isfinite(a.obsm["sctraj_velocity_sim"][at1]).all()
    assert np.isfinite(a.obsm["sctraj_trajectory"][at1]).all()


def test_first_time_excluded_gives_nan_outside_range():
    a = sctraj.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), random_state=0)
    sctraj.tl.fit_flow(a, "time", use_rep="X_sim", exclude_times=0.0, **TINY)
    at0 = (a.obs["time"] == 0.0).to_numpy()
    assert np.isnan(a.obsm["sctraj_velocity_sim"][at0]).all()
    assert np.isfinite(a.obsm["sctraj_velocity_sim"][~at0]).all()


def test_predict_interpolate_h5ad(adata_time, tmp_path):
    m = sctraj.tl.fit_flow(adata_time, "time", **TINY)
    p = sctraj.tl.predict(adata_time, m, source_time=0.0, target_time=1.0)
    assert p.obs["source_cell"].tolist() == adata_time.obs_names[adata_time.obs["time"] == 0].tolist()
    p.write_h5ad(tmp_path / "p.h5ad")
    g = sctraj.tl.interpolate(adata_time, m, 1.7)
    assert g.n_obs == int((adata_time.obs["time"] == 1.0).sum())
    assert (g.obs["source_time"] == 1.0).all()
    g.write_h5ad(tmp_path / "g.h5ad")
    # zero-length push returns the cells themselves
    same = sctraj.tl.predict(adata_time, m, source_time=1.0, target_time=1.0)
    np.testing.assert_allclose(same.obsm["X_pca"], adata_time.obsm["X_pca"][adata_time.obs["time"] == 1.0])


def test_evaluate_metrics():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    r = sctraj.tl.evaluate(X, X)
    assert r["W1"] < 1e-8 and r["W2"] < 1e-8 and r["MMD"] < 1e-6
    s = sctraj.tl.evaluate(X + np.array([3.0, 4.0]), X)
    np.testing.assert_allclose([s["W1"], s["W2"]], [5.0, 5.0], rtol=1e-6)
    # weights: all mass on the shifted half
    Y = np.concatenate([X, X + 10])
    w = np.r_[np.ones(200), np.zeros(200)]
    assert sctraj.tl.evaluate(Y, X, weights=w)["W1"] < 1e-8
    with pytest.raises(ValueError, match="equal dims"):
        sctraj.tl.evaluate(X, X[:, :1])
    # subsampling for large sets is a documented estimate
    big = rng.normal(size=(3000, 2))
    est = sctraj.tl.evaluate(big, big + 1.0, max_cells=500)["W1"]
    assert 0.8 < est < 1.6


def test_leave_one_out_table(adata_time):
    df = sctraj.tl.leave_one_out(adata_time, "time", methods=["icfm", "otcfm"], seeds=(0, 1), **TINY)
    assert list(df.columns) == ["method", "heldout", "seed", "W1", "W2", "MMD", "fit_seconds", "n_train_steps"]
    assert set(df["method"]) == {"icfm", "otcfm", "no_movement", "ot_interpolation"}
    assert (df["heldout"] == 1.0).all()
    assert len(df) == 2 * 2 + 2 and np.isfinite(df[["W1", "W2", "MMD"]].to_numpy(float)).all()
    assert "sctraj" not in adata_time.uns and "_sctraj_loo" not in adata_time.uns


def test_ot_interpolation_reference_is_exact_on_translation():
    """Cells translating at constant speed: displacement interpolation predicts the middle exactly."""
    rng = np.random.default_rng(0)
    X0 = rng.normal(size=(80, 2))
    X = np.concatenate([X0, X0 + [1.0, 0.0], X0 + [2.0, 0.0]])
    a = ad.AnnData(obs=pd.DataFrame({"t": np.repeat([0.0, 1.0, 2.0], 80)}, index=[f"c{i}" for i in range(240)]),
                   obsm={"X_pca": X})
    df = sctraj.tl.leave_one_out(a, "t", methods=[], seeds=(0,))
    ref = df.set_index("method")
    assert ref.loc["ot_interpolation", "W1"] < 1e-6
    np.testing.assert_allclose(ref.loc["no_movement", "W1"], 1.0, rtol=1e-6)


def test_scale_embedding(adata_time):
    sctraj.pp.scale_embedding(adata_time, use_rep="X_pca", n_dims=2)
    Z = adata_time.obsm["X_pca_scaled"]
    assert Z.shape == (adata_time.n_obs, 2)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-4)
    b = sctraj.pp.scale_embedding(adata_time, use_rep="X_pca", key_added="z", copy=True)
    assert "z" in b.obsm and "z" not in adata_time.obsm


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    times=st.lists(st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 2)), min_size=2, max_size=4,
                   unique=True),
    dim=st.integers(1, 4),
    n=st.integers(3, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_any_time_layout(times, dim, n, seed):
    """Any (unsorted, negative, unequal) time layout, dimension and cell count fits and writes finite outputs."""
    rng = np.random.default_rng(seed)
    tt = np.repeat(times, n)
    X = rng.normal(size=(len(tt), dim)).astype(np.float32) * 3 + tt[:, None] * 0.1
    a = ad.AnnData(obs=pd.DataFrame({"t": tt}, index=[f"c{i}" for i in range(len(tt))]), obsm={"X_pca": X})
    m = sctraj.tl.fit_flow(a, "t", method="otcfm", n_steps=3, batch_size=8, progress=False, random_state=seed % 1000,
                           width=8, depth=1, trajectory_n_grid=3)
    assert list(m.times) == sorted(times)
    assert np.isfinite(a.obsm["sctraj_velocity_pca"]).all()
    last = tt == max(times)
    assert np.isfinite(a.obsm["sctraj_trajectory"][~last]).all()
    p = sctraj.tl.predict(a, m, source_time=max(times), target_time=min(times), n_steps=4)
    assert p.obsm["X_pca"].shape == (n, dim) and np.isfinite(p.obsm["X_pca"]).all()
