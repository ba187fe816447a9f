"""Issue 18, an adversarial round: one regression test per reported item, named after it.

Data loss / security
    test_key_added_existing_uns_entry_is_refused, test_key_added_not_h5ad_safe_is_refused,
    test_key_added_overwriting_user_obs_or_obsm_is_refused, test_refit_clears_stale_keys,
    test_refit_clears_stale_velocity_projections, test_fate_probabilities_never_writes_into_user_keys,
    test_model_save_is_atomic,
    test_numpy_scalar_params_save_and_load, test_load_model_checks_header_before_allocating,
    test_cli_refuses_out_equal_to_input, test_cli_bad_basis_fails_before_the_fit
Silent wrong results
    test_huge_magnitude_embedding, test_large_offset_float64_embedding, test_float64_beyond_float32_range,
    test_epoch_second_and_nanosecond_times, test_near_duplicate_times_consistent_in_fit_and_predict,
    test_complex_times_refused, test_predict_more_dims_refused, test_predict_fewer_dims_message,
    test_metafm_nan_population_labels_refused, test_metafm_condition_ignores_excluded_cells,
    test_width_or_depth_zero_refused, test_concurrent_fits_in_threads_match_serial,
    test_thread_settings_shared_safely_between_threads
Crashes / unclear errors
    test_predict_on_predict_result, test_obsm_dataframe_non_numeric_column, test_backed_sparse_X_use_rep_X,
    test_score_growth_duplicate_var_names, test_bad_parameter_types (lr="0.001", width="64", activation="foo",
    random_state="abc" / 2**64), test_numpy_integers_and_floats_accepted, test_leave_one_out_own_arguments,
    test_load_model_torch_file_without_sctraj_keys, test_model_save_to_directory, test_pl_1d_embedding,
    test_continuous_time_column_short_error
Memory
    test_evaluate_memory_is_one_cost_matrix, test_use_rep_X_sparse_reads_needed_columns_only,
    test_sparse_X_use_rep_X_through_velocity_embedding_and_plots, test_leave_one_out_does_not_copy_X
"""

from __future__ import annotations

import threading

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import TINY

import sctraj

FAST = {**TINY, "n_steps": 10}


def deep_equal(a, b) -> bool:
    if isinstance(a, dict) or hasattr(a, "keys"):
        return hasattr(b, "keys") and set(a.keys()) == set(b.keys()) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and (a.dtype.kind == "O" and list(a.ravel()) == list(b.ravel())
                                       or np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


class Snapshot:
    """Everything of an AnnData a function could change (obs, obsm, uns deeply, X)."""

    def __init__(self, a):
        self.obs = a.obs.copy()
        self.obsm = {k: np.array(v, copy=True) for k, v in a.obsm.items()}
        self.uns = _copy_uns(a.uns)
        self.shape = a.shape

    def check(self, a, *, allow_colors: bool = False):
        """Nothing changed (``allow_colors``: except new ``uns[f"{col}_colors"]``, which scanpy's plots write)."""
        assert a.shape == self.shape
        pd.testing.assert_frame_equal(a.obs, self.obs)
        assert sorted(a.obsm.keys()) == sorted(self.obsm)
        for k, v in self.obsm.items():
            np.testing.assert_array_equal(a.obsm[k], v)
        uns = dict(a.uns)
        if allow_colors:
            uns = {k: v for k, v in uns.items() if k in self.uns or not k.endswith("_colors")}
        assert deep_equal(uns, self.uns)


def _copy_uns(u):
    return {k: _copy_uns(v) if hasattr(v, "keys") else (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
            for k, v in u.items()}


def fit(a, **kw):
    args = {**FAST, **kw}
    return sctraj.tl.fit_flow(a, args.pop("time_key", "time"), **args)


# ---------------------------------------------------------------------------------------------------------------
# data loss / security
# ---------------------------------------------------------------------------------------------------------------
def test_key_added_existing_uns_entry_is_refused(adata_time):
    a = adata_time
    a.uns["pca"] = {"variance_ratio": np.array([0.5, 0.3, 0.2])}
    snap = Snapshot(a)
    with pytest.raises(ValueError, match=r"uns\['pca'\] already exists and was not written by sctraj.*key_added="):
        fit(a, key_added="pca")
    snap.check(a)


def test_key_added_not_h5ad_safe_is_refused(adata_time, tmp_path):
    a = adata_time
    snap = Snapshot(a)
    for key in ("run/1", " run", "a\x00b"):
        with pytest.raises(ValueError, match="cannot be stored in an .h5ad file"):
            fit(a, key_added=key)
    snap.check(a)
    fit(a, key_added="run-1")
    a.write_h5ad(tmp_path / "a.h5ad")
    assert ad.read_h5ad(tmp_path / "a.h5ad").uns["run-1"]["params"]["written_by"] == "sctraj"


def test_key_added_overwriting_user_obs_or_obsm_is_refused(adata_time):
    a = adata_time
    a.obs["mine_growth_rate"] = 1.0
    a.obsm["other_velocity_pca"] = np.ones((a.n_obs, 3))
    snap = Snapshot(a)
    with pytest.raises(ValueError, match=r"overwrite obs\['mine_growth_rate'\].*key_added='mine_2'"):
        fit(a, key_added="mine")
    with pytest.raises(ValueError, match=r"overwrite obsm\['other_velocity_pca'\]"):
        fit(a, key_added="other")
    snap.check(a)


def test_refit_clears_stale_keys(adata_time):
    import matplotlib

    matplotlib.use("agg")
    a = adata_time
    a.obsm["X_alt"] = a.obsm["X_pca"][:, :2] * 2
    fit(a, method="otcfm")
    assert "sctraj_velocity_pca" in a.obsm and "sctraj_trajectory" in a.obsm
    fit(a, method="icfm", use_rep="X_alt", trajectory_n_grid=0)
    assert "sctraj_velocity_pca" not in a.obsm  # the otcfm velocities are gone, not shown under "icfm"
    assert "sctraj_trajectory" not in a.obsm
    assert "sctraj_velocity_alt" in a.obsm and a.uns["sctraj"]["params"]["method"] == "icfm"
    assert list(a.uns["sctraj"]["params"]["written_keys"]["obsm"]) == ["sctraj_velocity_alt"]
    with pytest.raises(KeyError, match="sctraj_trajectory"):
        sctraj.pl.trajectories(a, show=False)
    # an older record without the key list is still recognised as sctraj's
    rec = a.uns["sctraj"]
    del rec["params"]["written_keys"], rec["params"]["written_by"]
    fit(a, method="otcfm")
    assert "sctraj_velocity_alt" not in a.obsm and "sctraj_velocity_pca" in a.obsm


def test_refit_clears_stale_velocity_projections(adata_time):
    a = adata_time
    a.obsm["X_umap"] = a.obsm["X_pca"][:, :2] + 1
    fit(a)
    sctraj.tl.velocity_embedding(a, basis="umap")
    assert "sctraj_velocity_umap" in a.obsm
    fit(a, method="icfm")
    assert "sctraj_velocity_umap" not in a.obsm and "sctraj_velocity_params" not in a.uns


def test_fate_probabilities_never_writes_into_user_keys(adata_time):
    a = adata_time
    a.obs["kind"] = pd.Categorical(np.where(a.obsm["X_pca"][:, 0] > 0, "p", "q"))
    model = fit(a)
    a.uns["pca"] = {"variance_ratio": np.array([0.5, 0.5])}
    a.obsm["mine_fate_probabilities"] = np.ones((a.n_obs, 2))
    snap = Snapshot(a)
    with pytest.raises(ValueError, match=r"uns\['pca'\] already exists and was not written by sctraj"):
        sctraj.tl.fate_probabilities(a, model, "kind", key_added="pca", n_steps=5)
    with pytest.raises(ValueError, match=r"obsm\['mine_fate_probabilities'\] already exists"):
        sctraj.tl.fate_probabilities(a, model, "kind", key_added="mine", n_steps=5)
    snap.check(a)
    sctraj.tl.fate_probabilities(a, None, "kind", n_steps=5)  # the fit's own key: allowed, and owned by the fit
    assert "sctraj_fate_probabilities" in a.obsm
    fit(a, method="icfm")  # a refit removes the previous fit's fate probabilities
    assert "sctraj_fate_probabilities" not in a.obsm
    sctraj.tl.fate_probabilities(a, model, "kind", key_added="other", n_steps=5)  # a fresh key for a model passed in
    fit(a, key_added="other")  # and a fit may take that key over
    assert "other_fate_probabilities" not in a.obsm


def test_model_save_is_atomic(adata_time, tmp_path, monkeypatch):
    model = fit(adata_time)
    path = tmp_path / "m.pt"
    model.save(path)
    good = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        model.save(path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good  # the previous model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left
    sctraj.tl.load_model(path)


def test_numpy_scalar_params_save_and_load(adata_time, tmp_path):
    model = fit(adata_time, sigma=np.float64(0.2), width=np.int64(16), n_steps=np.int64(10))
    assert type(model.method.config.sigma) is float and type(model.method.config.width) is int
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    assert m2.method.config.sigma == 0.2
    X = adata_time.obsm["X_pca"][:5]
    np.testing.assert_array_equal(model.velocity(X, 1.0), m2.velocity(X, 1.0))


def test_load_model_checks_header_before_allocating(adata_time, tmp_path, monkeypatch):
    model = fit(adata_time)
    state = model.state()
    built = []
    import sctraj.models.cfm as cfm

    orig = cfm.OTCFM.__init__

    def spy(self, dim, *a, **k):
        built.append((dim, torch.empty(0).device.type))
        orig(self, dim, *a, **k)

    monkeypatch.setattr(cfm.OTCFM, "__init__", spy)
    crafted = dict(state, dim=10**9)
    torch.save(crafted, tmp_path / "huge.pt")
    with pytest.raises(ValueError, match="dim=1000000000"):
        sctraj.tl.load_model(tmp_path / "huge.pt")
    assert built == []  # refused before any network was built
    lying = dict(state, dim=7, setup={**state["setup"], "mean": [0.0] * 7})  # consistent header, tensors of dim 3
    torch.save(lying, tmp_path / "lying.pt")
    with pytest.raises(ValueError, match="do not match a 'otcfm' network of dim=7"):
        sctraj.tl.load_model(tmp_path / "lying.pt")
    assert all(d == 7 for d, _ in built) and len(built) == 1  # only a shape-only (meta) build
    for broken, msg in [({"setup": {**state["setup"], "times": [1.0]}}, "increasing"),
                        ({"config": {"width": "64"}}, "config is not valid"),
                        ({"method": "nope"}, "Unknown method")]:
        torch.save(dict(state, **broken), tmp_path / "b.pt")
        with pytest.raises(ValueError, match=msg):
            sctraj.tl.load_model(tmp_path / "b.pt")


def test_cli_refuses_out_equal_to_input(adata_time, tmp_path, capsys):
    from sctraj.cli import main

    p = tmp_path / "in.h5ad"
    adata_time.write_h5ad(p)
    before = p.read_bytes()
    for out in (str(p), str(tmp_path / "." / "in.h5ad")):
        rc = main(["fit", str(p), "--time-key", "time", "--out", out, "--quiet", "--n-steps", "5"])
        assert rc == 2 and "is the input file" in capsys.readouterr().err
    assert p.read_bytes() == before


def test_cli_bad_basis_fails_before_the_fit(adata_time, tmp_path, capsys, monkeypatch):
    from sctraj.cli import main

    p = tmp_path / "in.h5ad"
    adata_time.write_h5ad(p)
    monkeypatch.setattr(sctraj.tl, "fit_flow", lambda *a, **k: pytest.fail("fit ran before the basis check"))
    rc = main(["fit", str(p), "--time-key", "time", "--out", str(tmp_path / "o.h5ad"), "--figures",
               str(tmp_path / "f"), "--basis", "tsne"])
    assert rc == 2 and "'tsne' is not in adata.obsm" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# silent wrong results
# ---------------------------------------------------------------------------------------------------------------
def _fit_on(a, X, **kw):
    b = a.copy()
    b.obsm["X_pca"] = X
    fit(b, random_state=0, **kw)
    return b


def test_huge_magnitude_embedding(adata_time):
    X = adata_time.obsm["X_pca"].astype(np.float64)
    ref = _fit_on(adata_time, X)
    for mag in (1e20, 1e30):
        big = _fit_on(adata_time, X * mag)
        v = big.obsm["sctraj_velocity_pca"]
        assert np.isfinite(v).all()
        np.testing.assert_allclose(v / mag, ref.obsm["sctraj_velocity_pca"], rtol=1e-4, atol=1e-6)
    # the same in float32 (1e30 is within float32's range): the scale is computed without overflow
    big32 = _fit_on(adata_time, (X * 1e30).astype(np.float32))
    assert np.isfinite(big32.obsm["sctraj_velocity_pca"]).all()


def test_large_offset_float64_embedding(adata_time):
    X = adata_time.obsm["X_pca"].astype(np.float64)
    ref = _fit_on(adata_time, X)
    off = _fit_on(adata_time, X + 1e8)
    np.testing.assert_allclose(off.obsm["sctraj_velocity_pca"], ref.obsm["sctraj_velocity_pca"], rtol=1e-4,
                               atol=1e-5)
    tr = off.obsm["sctraj_trajectory"]
    assert tr.dtype == np.float64
    np.testing.assert_allclose(tr - 1e8, ref.obsm["sctraj_trajectory"], atol=1e-4)  # cells did not collapse
    model = sctraj.tl.fit_flow(off, "time", key_added="m2", **FAST)
    pred = sctraj.tl.predict(off, model, source_time=0.0, target_time=1.0)
    assert np.ptp(pred.obsm["X_pca"][:, 0]) > 0.1


def test_float64_beyond_float32_range(adata_time):
    X = adata_time.obsm["X_pca"].astype(np.float64) * 1e200
    b = _fit_on(adata_time, X)  # was "NaN or infinite values" (a cast to float32)
    assert np.isfinite(b.obsm["sctraj_velocity_pca"]).all()


def _days(a, values):
    b = a.copy()
    b.obs["time"] = b.obs["time"].map(dict(zip([0.0, 1.0, 2.5], values, strict=True))).astype(float)
    return b


def test_epoch_second_and_nanosecond_times(adata_time):
    day = 86400.0
    t0 = 1.7e9
    ref = _days(adata_time, [0.0, 1.0, 2.5])
    mref = fit(ref)
    for scale, offset in ((day, t0), (day * 1e9, t0 * 1e9)):
        times = [offset, offset + scale, offset + 2.5 * scale]
        b = _days(adata_time, times)
        m = fit(b, exclude_times=[times[1]])
        assert m.times.tolist() == [times[0], times[2]]
        m = fit(b)
        # identical dynamics: velocities per second (ns) = velocities per day / scale
        np.testing.assert_allclose(b.obsm["sctraj_velocity_pca"] * scale, ref.obsm["sctraj_velocity_pca"],
                                   rtol=1e-3, atol=1e-4)
        p = sctraj.tl.predict(b, m, source_time=times[0], target_time=times[1])
        q = sctraj.tl.predict(ref, mref, source_time=0.0, target_time=1.0)
        np.testing.assert_allclose(p.obsm["X_pca"], q.obsm["X_pca"], rtol=1e-3, atol=1e-4)
    # one hour apart in epoch seconds are two different times (an absolute/relative-to-value tolerance merged them)
    c = _days(adata_time, [t0, t0 + 3600, t0 + 7200])
    m = fit(c)
    assert len(m.times) == 3
    with pytest.raises(ValueError, match="No cells at source_time"):
        sctraj.tl.predict(c, m, source_time=t0 + 1800, target_time=t0 + 7200)


def test_near_duplicate_times_consistent_in_fit_and_predict(adata_time):
    b = adata_time.copy()
    t = b.obs["time"].to_numpy().copy()
    t[np.flatnonzero(t == 1.0)[:5]] = 1.0 + 5e-9
    b.obs["time"] = t
    snap = Snapshot(b)
    with pytest.raises(ValueError, match="apart.*Round the time column"):  # the fit does not treat them as two times
        fit(b)
    snap.check(b)
    model = fit(adata_time)
    n1 = int((adata_time.obs["time"] == 1.0).sum())
    # ... and predict, with the same tolerance (1e-6 of the span), treats 1 + 5e-9 as time 1
    assert sctraj.tl.predict(adata_time, model, source_time=1.0 + 5e-9, target_time=2.5).n_obs == n1
    with pytest.raises(ValueError, match="No cells at source_time"):
        sctraj.tl.predict(adata_time, model, source_time=1.0 + 1e-4, target_time=2.5)
    with pytest.raises(ValueError, match="exclude_times names time"):
        fit(adata_time, exclude_times=[1.0 + 1e-4])
    assert fit(adata_time, exclude_times=[1.0 + 5e-9]).times.tolist() == [0.0, 2.5]


def test_complex_times_refused(adata_time):
    b = adata_time.copy()
    b.obs["time"] = b.obs["time"].astype(complex)
    snap = Snapshot(b)
    with pytest.raises(ValueError, match="complex"):
        fit(b)
    snap.check(b)
    with pytest.raises(ValueError, match="real"):
        fit(adata_time, exclude_times=[1 + 0j])
    model = fit(adata_time)
    with pytest.raises(ValueError, match="real"):
        sctraj.tl.predict(adata_time, model, source_time=0.0, target_time=1 + 1j)
    with pytest.raises(ValueError, match="real"):
        sctraj.tl.interpolate(adata_time, model, [0.5j])


def test_predict_more_dims_refused(adata_time):
    model = fit(adata_time)
    b = adata_time.copy()
    b.obsm["X_pca"] = np.c_[b.obsm["X_pca"], np.zeros(b.n_obs)]
    with pytest.raises(ValueError, match="has 4 dimensions, but the model was fitted on all 3"):
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)
    # a model fitted on the first n_dims accepts wider embeddings (it was told to use the first ones)
    m2 = fit(b, n_dims=3, key_added="k2")
    p = sctraj.tl.predict(b, m2, source_time=0.0, target_time=1.0)
    assert p.obsm["X_pca"].shape[1] == 4 and np.isfinite(p.obsm["X_pca"]).all()  # 3 predicted dims + 1 carried


def test_predict_fewer_dims_message(adata_time):
    model = fit(adata_time)
    b = adata_time.copy()
    b.obsm["X_pca"] = b.obsm["X_pca"][:, :2]
    with pytest.raises(ValueError, match="has 2 dimensions") as e:
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)
    assert "n_dims" not in str(e.value)


def test_metafm_nan_population_labels_refused(adata_time):
    model = fit(adata_time, method="metafm", population_key="replicate")
    b = adata_time.copy()
    b.obs["replicate"] = b.obs["replicate"].astype(object)
    b.obs.iloc[:4, b.obs.columns.get_loc("replicate")] = np.nan
    with pytest.raises(ValueError, match="no population label in adata.obs\\['replicate'\\]"):
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)


def test_metafm_condition_ignores_excluded_cells(adata_time):
    a = adata_time
    model = fit(a, method="metafm", population_key="replicate", exclude_times=[0.0])
    with_excluded = sctraj.tl.predict(a, model, source_time=1.0, target_time=2.5)
    without = sctraj.tl.predict(a[a.obs["time"] > 0].copy(), model, source_time=1.0, target_time=2.5)
    np.testing.assert_array_equal(with_excluded.obsm["X_pca"], without.obsm["X_pca"])


@pytest.mark.parametrize("kw", [{"width": 0}, {"depth": 0}, {"width": -3}])
def test_width_or_depth_zero_refused(adata_time, kw):
    snap = Snapshot(adata_time)
    with pytest.raises(ValueError, match=f"{next(iter(kw))} must be a positive integer"):
        fit(adata_time, **kw)
    snap.check(adata_time)


def test_concurrent_fits_in_threads_match_serial(adata_time):
    n_threads = torch.get_num_threads()
    rng_state = torch.random.get_rng_state()
    seeds = (1, 2)
    serial = {}
    for s in seeds:
        b = adata_time.copy()
        fit(b, random_state=s, n_steps=15)
        serial[s] = b.obsm["sctraj_velocity_pca"]
    out, errors = {}, []

    def run(s):
        try:
            b = adata_time.copy()
            fit(b, random_state=s, n_steps=15)
            out[s] = b.obsm["sctraj_velocity_pca"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for _ in range(2):
        ths = [threading.Thread(target=run, args=(s,)) for s in seeds]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        assert not errors
        for s in seeds:
            np.testing.assert_array_equal(out[s], serial[s])
    assert torch.get_num_threads() == n_threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_thread_settings_shared_safely_between_threads():
    """torch's thread count is process-wide: with a plain save / set / restore per thread, overlapping blocks restore
    each other's value and leave it changed (or change it mid-fit). cpu_threads holds the value inside every block
    and restores the caller's value."""
    import time

    from sctraj.engine.trainer import cpu_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen, errors = [], []
    start = threading.Barrier(2)

    def work(delay):
        try:
            start.wait()
            with cpu_threads(1):
                time.sleep(delay)
                seen.append(torch.get_num_threads())
                with cpu_threads(1):  # nested, same value
                    seen.append(torch.get_num_threads())
            time.sleep(delay)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        for delays in ((0.01, 0.03), (0.03, 0.01)):
            ths = [threading.Thread(target=work, args=(d,)) for d in delays]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            assert torch.get_num_threads() == 2
        assert not errors, errors
        assert seen == [1] * 8, seen
        with cpu_threads(1):  # a nested block of one thread may set another value and gets the outer one back
            with cpu_threads(3):
                assert torch.get_num_threads() == 3
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------
# crashes / unclear errors
# ---------------------------------------------------------------------------------------------------------------
def test_predict_on_predict_result(adata_time):
    model = fit(adata_time)
    p = sctraj.tl.predict(adata_time, model, source_time=0.0, target_time=1.0)
    p.obs["time"] = 1.0
    q = sctraj.tl.predict(p, model, source_time=1.0, target_time=2.5)
    assert q.n_obs == p.n_obs and list(q.obs.columns).count("source_cell") == 1
    assert np.isfinite(q.obsm["X_pca"]).all()


def test_obsm_dataframe_non_numeric_column(adata_time):
    a = adata_time
    a.obsm["X_df"] = pd.DataFrame({"a": np.arange(a.n_obs, dtype=float), "b": ["x"] * a.n_obs}, index=a.obs_names)
    snap = Snapshot(a)
    with pytest.raises(ValueError, match="non-numeric column.*'b'"):
        fit(a, use_rep="X_df")
    snap.check(a)
    a.obsm["X_num"] = pd.DataFrame(a.obsm["X_pca"], index=a.obs_names, columns=["p1", "p2", "p3"])
    fit(a, use_rep="X_num")
    assert np.isfinite(a.obsm["sctraj_velocity_num"]).all()


def test_backed_sparse_X_use_rep_X(adata_time, tmp_path):
    b = ad.AnnData(X=sp.csr_matrix(np.c_[adata_time.obsm["X_pca"], np.zeros((adata_time.n_obs, 5))]
                                   .astype(np.float32)), obs=adata_time.obs[["time"]].copy())
    b.write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    from sctraj._validation import get_rep

    X = get_rep(backed, "X", 3)
    np.testing.assert_allclose(X, adata_time.obsm["X_pca"], rtol=1e-6)
    model = sctraj.tl.fit_flow(backed.to_memory(), "time", use_rep="X", n_dims=3, **FAST)
    p = sctraj.tl.predict(backed, model, source_time=0.0, target_time=1.0)
    assert np.isfinite(p.X[:, :3]).all()  # use_rep="X": the predicted positions are X's first n_dims columns


def test_score_growth_duplicate_var_names():
    a = ad.AnnData(np.abs(np.random.default_rng(0).normal(size=(30, 4))).astype(np.float32))
    a.var_names = ["Mki67", "Top2a", "Mki67", "Bax"]
    snap = Snapshot(a)
    with pytest.raises(ValueError, match="duplicate.*var_names_make_unique"):
        sctraj.pp.score_growth(a, proliferation_genes=["Mki67", "Top2a"], apoptosis_genes=["Bax"])
    snap.check(a)


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"lr": "0.001"}, TypeError, "lr must be float, got '0.001' \\(str\\). Pass a number, e.g. lr=0.001"),
        ({"width": "64"}, TypeError, "width must be int, got '64'"),
        ({"width": 16.5}, TypeError, "width must be int"),
        ({"activation": "foo"}, ValueError, "activation must be one of"),
        ({"activation": 3}, TypeError, "activation must be str"),
        ({"random_state": "abc"}, ValueError, "random_state must be a non-negative integer"),
        ({"random_state": 2**64}, ValueError, "below 2\\*\\*63"),
        ({"lr": float("nan")}, ValueError, "lr must be a positive finite number"),
        ({"sigma": np.array([0.1, 0.2])}, TypeError, "sigma must be float"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_bad_parameter_types(adata_time, kw, exc, msg):
    snap = Snapshot(adata_time)
    with pytest.raises(exc, match=msg):
        fit(adata_time, **kw)
    snap.check(adata_time)


def test_numpy_integers_and_floats_accepted(adata_time, tmp_path):
    a = adata_time
    fit(a, trajectory_n_grid=np.int64(5), n_steps=np.int32(10), batch_size=np.int64(16), random_state=np.uint8(3))
    assert a.obsm["sctraj_trajectory"].shape[1] == 5
    m = fit(a, method="vgfm", reg=np.float32(0.05), tau=np.float64(1.0), key_added="g", n_steps=np.int64(10))
    assert type(m.method.config.reg) is float
    m.save(tmp_path / "g.pt")
    sctraj.tl.load_model(tmp_path / "g.pt")
    gen = sctraj.tl.interpolate(a, m, [0.5], n_cells=np.int64(4), random_state=np.int64(1))
    assert gen.n_obs == 4


def test_leave_one_out_own_arguments(adata_time):
    snap = Snapshot(adata_time)
    with pytest.raises(TypeError, match="use seeds=|pass seeds="):
        sctraj.tl.leave_one_out(adata_time, "time", methods=["icfm"], random_state=1)
    with pytest.raises(TypeError, match="writes nothing into adata; drop key_added"):
        sctraj.tl.leave_one_out(adata_time, "time", methods=["icfm"], key_added="x")
    snap.check(adata_time)


def test_load_model_torch_file_without_sctraj_keys(tmp_path):
    torch.save({"format": "sctraj-model", "format_version": 1}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="'method' entry is missing"):
        sctraj.tl.load_model(tmp_path / "m.pt")


def test_model_save_to_directory(adata_time, tmp_path):
    model = fit(adata_time)
    with pytest.raises(IsADirectoryError, match="is a directory.*model.pt"):
        model.save(tmp_path)


PL_CALLS = {
    "trajectories": lambda a: sctraj.pl.trajectories(a, basis="line", show=False),
    "velocity_stream": lambda a: sctraj.pl.velocity_stream(a, basis="line", show=False),
    "growth": lambda a: sctraj.pl.growth(a, basis="line", show=False),
    "marginals": lambda a: sctraj.pl.marginals(a, basis="line", show=False),
    "trajectories_on_1d_fit": lambda a: sctraj.pl.trajectories(a, key="one", show=False),
}


@pytest.mark.parametrize("name", list(PL_CALLS))
def test_pl_1d_embedding(adata_time, name):
    import matplotlib

    matplotlib.use("agg")
    a = adata_time
    a.obsm["X_line"] = a.obsm["X_pca"][:, :1].copy()
    fit(a)
    fit(a, use_rep="X_line", key_added="one")
    snap = Snapshot(a)
    with pytest.raises(ValueError, match="plots need a 2-d embedding"):
        PL_CALLS[name](a)
    snap.check(a)


def test_continuous_time_column_short_error(adata_time):
    b = adata_time.copy()
    b.obs["time"] = np.random.default_rng(0).uniform(0, 10, b.n_obs)
    with pytest.raises(ValueError, match="looks continuous.*Bin the times") as e:
        fit(b)
    assert len(str(e.value)) < 600
    model = fit(adata_time)
    with pytest.raises(ValueError) as e:
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)
    assert len(str(e.value)) < 400


# ---------------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------------
def test_evaluate_memory_is_one_cost_matrix():
    import tracemalloc

    n = 700
    rng = np.random.default_rng(0)
    P, Q = rng.normal(size=(n, 5)), rng.normal(size=(n, 5)) + 0.3
    r0 = sctraj.tl.evaluate(P, Q, mmd_cells=100)
    tracemalloc.start()
    r = sctraj.tl.evaluate(P, Q, mmd_cells=100)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r == r0
    nm = n * n * 8
    # our cost matrix plus POT's returned plan (both n x m float64) and small blocks; the old code also held
    # M**2 and the |x|^2 + |y|^2 - 2xy temporaries (>= 4 n x m)
    assert peak < 2.3 * nm, peak / nm
    ot = pytest.importorskip("ot")
    M = ot.dist(P, Q, metric="euclidean")
    a = np.full(n, 1 / n)
    assert r["W1"] == pytest.approx(ot.emd2(a, a, M, numItermax=10**7), rel=1e-9)
    assert r["W2"] == pytest.approx(np.sqrt(ot.emd2(a, a, M**2, numItermax=10**7)), rel=1e-9)


def test_use_rep_X_sparse_reads_needed_columns_only():
    import tracemalloc

    from sctraj._validation import get_rep

    n, g = 2000, 20000
    X = sp.random(n, g, density=2e-4, format="csr", dtype=np.float32, random_state=0)
    a = ad.AnnData(X=X)
    tracemalloc.start()
    Y = get_rep(a, "X", 5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(Y, X[:, :5].toarray())
    assert peak < 5 * 2**20, peak  # the dense X would be n * g * 4 = 160 MB


def test_sparse_X_use_rep_X_through_velocity_embedding_and_plots(adata_time):
    import matplotlib

    matplotlib.use("agg")
    a = ad.AnnData(X=sp.csr_matrix(np.c_[adata_time.obsm["X_pca"], np.zeros((adata_time.n_obs, 200))]
                                   .astype(np.float32)), obs=adata_time.obs[["time"]].copy(),
                   obsm={"X_umap": adata_time.obsm["X_pca"][:, :2] * 3})
    sctraj.tl.fit_flow(a, "time", use_rep="X", n_dims=3, **FAST)
    sctraj.tl.velocity_embedding(a, basis="umap")  # read X's 3 fitted columns; a dense 203-column copy before
    assert np.isfinite(a.obsm["sctraj_velocity_umap"]).all()
    sctraj.pl.trajectories(a, basis="umap", show=False)  # to_basis read np.asarray(sparse X): an object array
    import matplotlib.pyplot as plt

    plt.close("all")


def test_leave_one_out_does_not_copy_X(adata_time, monkeypatch):
    import sctraj.tl._fit as f

    a = ad.AnnData(X=np.ones((adata_time.n_obs, 500), np.float32), obs=adata_time.obs[["time"]].copy(),
                   obsm={"X_pca": adata_time.obsm["X_pca"]})
    a.layers["counts"] = a.X.copy()
    seen = []
    orig = f.fit_flow

    def spy(work, *args, **kw):
        seen.append((work.X, dict(work.layers), list(work.obsm)))
        return orig(work, *args, **kw)

    monkeypatch.setattr(f, "fit_flow", spy)
    monkeypatch.setattr(ad.AnnData, "copy", lambda self, *a, **k: pytest.fail("leave_one_out copied the AnnData"))
    df = sctraj.tl.leave_one_out(a, "time", methods=["icfm"], use_rep="X_pca", references=False, **FAST)
    assert len(df) == 1 and np.isfinite(df["W1"]).all()
    assert seen and all(x is None and not layers and obsm[0] == "X_pca" for x, layers, obsm in seen)
