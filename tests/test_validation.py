"""Bad input gets a clear error naming the problem and the fix, and never leaves the AnnData half-written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

import sctraj


def snapshot(a):
    return (
        a.obs.copy(),
        {k: np.array(v, copy=True) for k, v in a.obsm.items()},
        sorted(a.uns.keys()),
        a.shape,
    )


def assert_unchanged(a, snap):
    obs, obsm, uns, shape = snap
    assert a.shape == shape
    pd.testing.assert_frame_equal(a.obs, obs)
    assert sorted(a.obsm.keys()) == sorted(obsm)
    for k, v in obsm.items():
        np.testing.assert_array_equal(a.obsm[k], v)
    assert sorted(a.uns.keys()) == uns


def fit(a, **kw):
    args = {**TINY, **kw}
    tk = args.pop("time_key", "time")
    return sctraj.tl.fit_flow(a, tk, **args)


BAD_FIT = [
    ({"time_key": "nope"}, KeyError, "time_key 'nope' is not a column"),
    ({"use_rep": "X_umap"}, KeyError, "not in adata.obsm"),
    ({"method": "magic"}, ValueError, "Available methods: .*otcfm"),
    ({"n_dims": 7}, ValueError, "n_dims=7 is larger than the 3 dimensions"),
    ({"n_dims": 0}, ValueError, "n_dims must be a positive integer"),
    ({"n_steps": 0}, ValueError, "n_steps must be a positive integer"),
    ({"batch_size": -5}, ValueError, "batch_size must be a positive integer"),
    ({"random_state": -1}, ValueError, "random_state must be a non-negative integer"),
    ({"random_state": 1.5}, ValueError, "random_state must be a non-negative integer"),
    ({"exclude_times": [7.0]}, ValueError, "exclude_times names time 7.0, which is not observed"),
    ({"exclude_times": [0.0, 1.0]}, ValueError, "leaves 1 time point"),
    ({"device": "tpu"}, ValueError, "device must be"),
    ({"not_a_param": 3}, TypeError, "Unknown parameter.*not_a_param"),
    ({"lr_schedule": "step"}, ValueError, "lr_schedule must be one of \\('constant', 'cosine'\\)"),
    ({"method": "vgfm", "lr_schedule": "linear"}, ValueError, "lr_schedule must be one of"),
    ({"key_added": ""}, ValueError, "key_added must be a non-empty string"),
    ({"population_key": "nope"}, KeyError, "population_key 'nope'"),
]


@pytest.mark.parametrize(("kw", "exc", "msg"), BAD_FIT, ids=[str(k) for k, _, _ in BAD_FIT])
def test_fit_bad_arguments(adata_time, kw, exc, msg):
    snap = snapshot(adata_time)
    with pytest.raises(exc, match=msg):
        fit(adata_time, **kw)
    assert_unchanged(adata_time, snap)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda(adata_time):
    snap = snapshot(adata_time)
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit(adata_time, device="cuda")
    assert_unchanged(adata_time, snap)


def _mutate(a, what):
    if what == "nan_embedding":
        a.obsm["X_pca"][3, 1] = np.nan
        return ValueError, "NaN or infinite values in 'X_pca'"
    if what == "inf_embedding":
        a.obsm["X_pca"][0, 0] = np.inf
        return ValueError, "NaN or infinite"
    if what == "nan_time":
        a.obs.loc[a.obs_names[2], "time"] = np.nan
        return ValueError, "missing or infinite values"
    if what == "string_time":
        a.obs["time"] = np.where(a.obs["time"] == 0, "early", "late")
        return ValueError, "not numbers"
    if what == "categorical_words":
        a.obs["time"] = pd.Categorical(np.where(a.obs["time"] == 0, "day_a", "day_b"))
        return ValueError, "not numbers"
    if what == "single_time":
        a.obs["time"] = 1.0
        return ValueError, "single time point"
    if what == "tiny_time":
        a.obs.loc[a.obs_names[0], "time"] = 9.0
        return ValueError, "fewer than 2 cells"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["nan_embedding", "inf_embedding", "nan_time", "string_time", "categorical_words", "single_time",
             "tiny_time"]
)
def test_fit_bad_data(adata_time, what):
    exc, msg = _mutate(adata_time, what)
    snap = snapshot(adata_time)
    with pytest.raises(exc, match=msg):
        fit(adata_time)
    assert_unchanged(adata_time, snap)


def test_categorical_numeric_time_is_accepted(adata_time):
    adata_time.obs["time"] = pd.Categorical(adata_time.obs["time"].astype(str))
    model = fit(adata_time)
    assert list(model.times) == [0.0, 1.0, 2.5]


def test_empty_and_wrong_type():
    import anndata as ad

    with pytest.raises(ValueError, match="empty"):
        sctraj.tl.fit_flow(ad.AnnData(np.zeros((0, 2))), "time")
    with pytest.raises(TypeError, match="Expected an AnnData"):
        sctraj.tl.fit_flow(np.zeros((3, 2)), "time")


def test_interrupted_fit_leaves_adata_unchanged(adata_time, monkeypatch):
    from sctraj.engine import nn as enn

    calls = {"n": 0}
    orig = enn.VectorField.forward

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(enn.VectorField, "forward", interrupting)
    snap = snapshot(adata_time)
    with pytest.raises(KeyboardInterrupt):
        fit(adata_time)
    assert_unchanged(adata_time, snap)


def test_nan_loss_is_detected_with_hint(adata_time, monkeypatch):
    from sctraj.engine import nn as enn

    orig = enn.VectorField.forward
    monkeypatch.setattr(enn.VectorField, "forward", lambda self, *a, **k: orig(self, *a, **k) * float("nan"))
    snap = snapshot(adata_time)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(adata_time)
    assert_unchanged(adata_time, snap)


def test_failure_while_writing_outputs_leaves_adata_unchanged(adata_time, monkeypatch):
    import sctraj.tl._fit as f

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(f, "compute_outputs", boom)
    snap = snapshot(adata_time)
    with pytest.raises(RuntimeError, match="boom"):
        fit(adata_time)
    assert_unchanged(adata_time, snap)


@pytest.fixture
def fitted(adata_time):
    return adata_time, fit(adata_time)


def test_predict_bad_times_and_dims(fitted):
    a, model = fitted
    snap = snapshot(a)
    with pytest.raises(ValueError, match="outside the fitted time range"):
        sctraj.tl.predict(a, model, source_time=0.0, target_time=9.0)
    with pytest.raises(ValueError, match="No cells at source_time=0.5"):
        sctraj.tl.predict(a, model, source_time=0.5, target_time=1.0)
    with pytest.raises(ValueError, match="source_time must be a number"):
        sctraj.tl.predict(a, model, source_time="zero", target_time=1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0, solver="magic")
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0, n_steps=0)
    with pytest.raises(TypeError, match="TrajectoryModel"):
        sctraj.tl.predict(a, "model", source_time=0.0, target_time=1.0)
    b = a.copy()
    b.obsm["X_pca"] = b.obsm["X_pca"][:, :2]
    with pytest.raises(ValueError, match="has 2 dimensions, but the model was fitted on all 3"):
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)
    with pytest.raises(ValueError, match="Expected cells with 3 dims"):
        model.velocity(np.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match="outside the fitted time range"):
        sctraj.tl.interpolate(a, model, [0.5, 4.0])
    with pytest.raises(ValueError, match="n_cells must be a positive integer"):
        sctraj.tl.interpolate(a, model, 0.5, n_cells=0)
    assert_unchanged(a, snap)


def test_load_model_errors(fitted, tmp_path):
    _, model = fitted
    with pytest.raises(FileNotFoundError, match="No model file"):
        sctraj.tl.load_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a readable sctraj model"):
        sctraj.tl.load_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an sctraj model file"):
        sctraj.tl.load_model(other)
    state = model.state()
    state["format_version"] = 99
    old = tmp_path / "future.pt"
    torch.save(state, old)
    with pytest.raises(ValueError, match="format version 99"):
        sctraj.tl.load_model(old)


def test_load_model_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "sctraj-model", "payload": Evil()}, p)
    with pytest.raises(ValueError, match="pickled code"):
        sctraj.tl.load_model(p)


def test_leave_one_out_errors(adata_time):
    snap = snapshot(adata_time)
    with pytest.raises(ValueError, match="not intermediate time points"):
        sctraj.tl.leave_one_out(adata_time, "time", methods=["icfm"], use_rep="X_pca", heldout=[0.0], **TINY)
    with pytest.raises(ValueError, match="Available methods"):
        sctraj.tl.leave_one_out(adata_time, "time", methods=["nope"], use_rep="X_pca")
    b = adata_time[adata_time.obs["time"] < 2].copy()
    with pytest.raises(ValueError, match="at least three time points"):
        sctraj.tl.leave_one_out(b, "time", methods=["icfm"], use_rep="X_pca")
    assert_unchanged(adata_time, snap)
