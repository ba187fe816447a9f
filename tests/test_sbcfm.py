"""SB-CFM with the score ([SF]2M): Brownian-bridge statistics of the SDE samples, seeds, errors, save / load."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import sctraj

A, N, SIGMA = 1.0, 600, 0.5  # snapshot std, cells per snapshot, bridge diffusion (internal units)


@pytest.fixture(scope="module")
def toy():
    # two isotropic Gaussians of std A, 3 apart along the first axis
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(N, 2)) * A, rng.normal(size=(N, 2)) * A + [3.0, 0.0]]).astype(np.float32)
    a = ad.AnnData(obs={"t": np.repeat([0.0, 1.0], N)}, obsm={"X_pca": X})
    model = sctraj.tl.fit_flow(a, "t", method="sbcfm", sigma=SIGMA, n_steps=400, width=32, progress=False,
                               trajectory_n_grid=0)
    return a, model


def _cells_at(x, t, n=3000):
    return ad.AnnData(obs={"t": np.full(n, t)}, obsm={"X_pca": np.tile(np.asarray(x, np.float32), (n, 1))})


def test_sde_samples_have_the_bridge_variance(toy):
    a, model = toy
    # Schrodinger bridge between N(0, A^2) and N(m, A^2) for a Brownian motion of diffusion s (real units): the static
    # plan is Gaussian with cross-covariance c = (sqrt(4 A^4 + s^4) - s^2) / 2 per axis, and the bridge adds
    # s^2 t (1 - t). From one cell x0: Var(x_t | x0) = t^2 (A^2 - c^2 / A^2) + s^2 t (1 - t).
    s2 = (SIGMA * model.setup["scale"]) ** 2
    c = (np.sqrt(4 * A**4 + s2**2) - s2) / 2
    v1 = A**2 - c**2 / A**2
    for t in (0.5, 1.0):
        out = sctraj.tl.predict(_cells_at([0.0, 0.0], 0.0), model, source_time=0.0, target_time=t, stochastic=True,
                                random_state=0).obsm["X_pca"]
        np.testing.assert_allclose(out.var(0), t**2 * v1 + s2 * t * (1 - t), rtol=0.25)
        np.testing.assert_allclose(out.mean(0), [3.0 * t, 0.0], atol=0.25)
    # backward in time (the time-reversed SDE), from the target's centre
    out = sctraj.tl.predict(_cells_at([3.0, 0.0], 1.0), model, source_time=1.0, target_time=0.5, stochastic=True,
                            random_state=0).obsm["X_pca"]
    np.testing.assert_allclose(out.var(0), 0.25 * v1 + s2 * 0.25, rtol=0.25)
    # the marginal at t = 0.5 from all source cells: (A^2 + c) / 2 + s^2 / 4, as for the ODE
    src = a[a.obs["t"] == 0.0].copy()
    want = (A**2 + c) / 2 + s2 / 4
    for stochastic in (True, False):
        out = sctraj.tl.predict(src, model, source_time=0.0, target_time=0.5, stochastic=stochastic).obsm["X_pca"]
        np.testing.assert_allclose(out.var(0), want, rtol=0.2)
    # the ODE sends one cell to one place
    out = sctraj.tl.predict(_cells_at([0.0, 0.0], 0.0, 10), model, source_time=0.0, target_time=1.0).obsm["X_pca"]
    assert out.var(0).max() < 1e-10
    assert set(a.uns["sctraj"]["history"]) >= {"loss", "flow_loss", "score_loss"}


def test_stochastic_is_seeded_and_leaves_global_rngs_alone(toy):
    a, model = toy
    src = a[a.obs["t"] == 0.0][:200].copy()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state is what users seed
    torch_state = torch.get_rng_state().clone()
    kw = {"source_time": 0.0, "target_time": 1.0, "stochastic": True, "n_steps": 20}
    o1 = sctraj.tl.predict(src, model, random_state=0, **kw).obsm["X_pca"]
    o2 = sctraj.tl.predict(src, model, random_state=0, **kw).obsm["X_pca"]
    o3 = sctraj.tl.predict(src, model, random_state=1, **kw).obsm["X_pca"]
    np.testing.assert_array_equal(o1, o2)
    assert np.abs(o1 - o3).max() > 1e-3
    i1 = sctraj.tl.interpolate(a, model, [0.3, 0.7], n_cells=50, stochastic=True, random_state=3, n_steps=20)
    i2 = sctraj.tl.interpolate(a, model, [0.3, 0.7], n_cells=50, stochastic=True, random_state=3, n_steps=20)
    np.testing.assert_array_equal(i1.obsm["X_pca"], i2.obsm["X_pca"])
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_stochastic_needs_a_score(toy):
    a, _ = toy
    kw = {"n_steps": 5, "width": 8, "progress": False, "trajectory_n_grid": 0}
    ot = sctraj.tl.fit_flow(a, "t", method="otcfm", **kw)
    with pytest.raises(ValueError, match="deterministic flow"):
        sctraj.tl.predict(a, ot, source_time=0.0, target_time=1.0, stochastic=True)
    with pytest.raises(ValueError, match="deterministic flow"):
        sctraj.tl.interpolate(a, ot, 0.5, stochastic=True)
    nos = sctraj.tl.fit_flow(a, "t", method="sbcfm", score=False, **kw)
    assert "score_loss" not in a.uns["sctraj"]["history"]
    with pytest.raises(ValueError, match="score=False"):
        sctraj.tl.predict(a, nos, source_time=0.0, target_time=1.0, stochastic=True)
    sb = sctraj.tl.fit_flow(a, "t", method="sbcfm", **kw)
    with pytest.raises(ValueError, match="Euler-Maruyama"):
        sctraj.tl.predict(a, sb, source_time=0.0, target_time=1.0, stochastic=True, solver="rk4")
    with pytest.raises(TypeError, match="stochastic"):
        sctraj.tl.predict(a, sb, source_time=0.0, target_time=1.0, stochastic="yes")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        sctraj.tl.fit_flow(a, "t", method="sbcfm", sigma=0.0, **kw)


def test_sbcfm_save_load_and_h5ad(toy, tmp_path):
    a, _ = toy
    b = a.copy()
    # three time points, uneven spacing: the diffusion changes between intervals
    b.obs["t"] = np.where(np.arange(b.n_obs) % 3 == 0, 0.25, b.obs["t"].to_numpy())
    model = sctraj.tl.fit_flow(b, "t", method="sbcfm", n_steps=20, width=8, progress=False)
    b.write_h5ad(tmp_path / "a.h5ad")
    assert "score_loss" in ad.read_h5ad(tmp_path / "a.h5ad").uns["sctraj"]["history"]
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    kw = {"source_time": 0.0, "target_time": 1.0, "stochastic": True, "random_state": 5, "n_steps": 30}
    np.testing.assert_array_equal(sctraj.tl.predict(b, model, **kw).obsm["X_pca"],
                                  sctraj.tl.predict(b, m2, **kw).obsm["X_pca"])
    assert [model.method.diffusion(x) for x in (0.1, 0.5)] == [m2.method.diffusion(x) for x in (0.1, 0.5)]
    g1, g2 = model.method.diffusion(0.1), model.method.diffusion(0.5)
    np.testing.assert_allclose([g1, g2], [0.1 / np.sqrt(0.25), 0.1 / np.sqrt(0.75)], rtol=1e-6)
    # a file from before the score existed (config without "score", drift-only network) still loads, as an ODE
    old = sctraj.tl.fit_flow(b, "t", method="sbcfm", score=False, n_steps=5, width=8, progress=False,
                             trajectory_n_grid=0)
    state = old.state()
    del state["config"]["score"]
    torch.save(state, tmp_path / "old.pt")
    m3 = sctraj.tl.load_model(tmp_path / "old.pt")
    assert not m3.method.stochastic
    np.testing.assert_array_equal(sctraj.tl.predict(b, m3, source_time=0.0, target_time=1.0).obsm["X_pca"],
                                  sctraj.tl.predict(b, old, source_time=0.0, target_time=1.0).obsm["X_pca"])
