"""Property-based tests (hypothesis): random dtypes, shapes, time encodings, key names and arguments.

For ``fit_flow``, ``predict``, ``interpolate``, ``leave_one_out`` and every ``pl`` function the property is the
same: either a clear error (raised by sctraj itself, not a raw exception from numpy / pandas / torch, naming the
problem) with the AnnData unchanged, or a finite, correct result. Examples are few, the data tiny and the fits a few
steps long (the whole file runs in well under a minute on one CPU); ``derandomize=True`` makes CI runs repeatable.
"""

from __future__ import annotations

import os
import traceback

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_adversarial import Snapshot

import sctraj

matplotlib.use("agg")

SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
FIT = {"n_steps": 3, "batch_size": 8, "width": 8, "depth": 1, "progress": False}
EXPECTED = (ValueError, TypeError, KeyError)


def assert_clear_error(exc: BaseException) -> None:
    """The error is one of ours: raised from sctraj's code with a message that names the problem."""
    assert isinstance(exc, EXPECTED), f"unexpected {type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    raised_in = frames[-1].filename
    assert f"{os.sep}sctraj{os.sep}" in raised_in, f"raw {type(exc).__name__} from {raised_in}: {exc}"
    msg = str(exc.args[0]) if exc.args else ""
    assert len(msg) > 20, f"unclear message: {msg!r}"


def run(fn, adata_snapshots):
    """``fn()``; on error check it is clear and every AnnData is unchanged. Returns the result or None."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - checked right here
        event(f"error: {type(e).__name__}: {str(e)[:60]}")
        if os.environ.get("ADV_DEBUG"):
            print("ERR", str(e)[:100])
        assert_clear_error(e)
        for a, snap in adata_snapshots:
            snap.check(a)
        return None
    event("result")
    return out


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
# valid choices are repeated so that about half of the examples get a result to check
VALID_TIMES = ["float", "int", "categorical", "epoch_seconds", "epoch_ns"]
TIME_ENCODINGS = VALID_TIMES * 3 + ["categorical_words", "strings", "complex", "with_nan", "bool", "datetime",
                                    "continuous"]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64] * 3 + [np.complex64, np.bool_, object]
KEYS = st.one_of(st.sampled_from(["sctraj", "run-1", "X_pca", "time"] * 3 + ["pca", "a/b", " x", "", "user"]),
                 st.text(alphabet="abcXY_-.0", min_size=1, max_size=6))


@st.composite
def datasets(draw):
    n_times = draw(st.sampled_from([3, 2]))  # a single time point is covered in test_validation
    sizes = draw(st.lists(st.sampled_from([2, 3, 5, 6, 2, 3, 1]), min_size=n_times, max_size=n_times))
    d = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    magnitude = draw(st.sampled_from([1.0, 1e-6, 1e8, 1e30]))
    offset = draw(st.sampled_from([0.0, 1e8]))
    enc = draw(st.sampled_from(TIME_ENCODINGS))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    n = sum(sizes)
    base = np.repeat(np.arange(n_times, dtype=float) * 1.5, sizes)
    X = rng.normal(size=(n, d)) * magnitude + offset + base[:, None]
    if dtype is object:
        Xd = X.astype(str).astype(object)
    elif np.dtype(dtype).kind in "iub":
        Xd = np.clip(X, -1e9, 1e9).astype(dtype)
    else:
        with np.errstate(over="ignore"):
            Xd = X.astype(dtype)
    t = {"float": base, "int": (base * 2).astype(int),
         "categorical": pd.Categorical(base), "categorical_words": pd.Categorical([f"day {v}" for v in base]),
         "epoch_seconds": 1.7e9 + base * 86400, "epoch_ns": (1.7e9 + base * 86400) * 1e9,
         "strings": np.array([f"d{v}" for v in base], dtype=object), "complex": base.astype(complex),
         "with_nan": np.where(np.arange(n) == 0, np.nan, base), "bool": base > 0,
         "datetime": pd.to_datetime(1.7e9 + base * 86400, unit="s"),
         "continuous": base + rng.uniform(0, 1, n)}[enc]
    a = ad.AnnData(obs=pd.DataFrame({"time": t}, index=[f"c{i}" for i in range(n)]),
                   obsm={"X_pca": Xd})
    a.uns["pca"] = {"variance_ratio": np.array([0.6, 0.4])}
    a.obs["user_growth_rate"] = 1.0
    return a


@settings(max_examples=30, **SETTINGS)
@given(a=datasets(), key=KEYS, method=st.sampled_from(["icfm", "otcfm"]), n_dims=st.sampled_from([None, 1, 2, 4]),
       grid=st.sampled_from([0, 2, np.int64(3), 0, 2, 1, -1, 2.0]))
def test_fit_flow_property(a, key, method, n_dims, grid):
    snap = Snapshot(a)
    model = run(lambda: sctraj.tl.fit_flow(a, "time", method=method, n_dims=n_dims, key_added=key,
                                           trajectory_n_grid=grid, **FIT), [(a, snap)])
    if model is None:
        return
    rep = "X_pca"[2:]
    v = a.obsm[f"{key}_velocity_{rep}"]
    assert v.shape == (a.n_obs, model.dim) and np.isfinite(v).all()
    assert np.isfinite(a.obs[f"{key}_growth_rate"]).all()
    assert a.uns["pca"]["variance_ratio"].tolist() == [0.6, 0.4] and (a.obs["user_growth_rate"] == 1.0).all()
    assert a.uns[key]["params"]["written_by"] == "sctraj"
    if grid:
        tr = a.obsm[f"{key}_trajectory"]
        last = model.times[-1]
        t = sctraj._validation.time_values(a, "time")
        assert np.isfinite(tr[t < last]).all()
        # a path starts at its cell
        np.testing.assert_allclose(tr[t < last, 0], np.asarray(a.obsm["X_pca"], np.float64)[t < last, : model.dim],
                                   rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# predict / interpolate on one fitted model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_model():
    a = sctraj.datasets.simulate(n_cells=20, times=(0.0, 1.0, 2.5), n_dims=2, random_state=0)
    a.obsm["X_pca"] = a.obsm["X_sim"].copy()
    model = sctraj.tl.fit_flow(a, "time", **FIT)
    return a, model


TIMES = st.sampled_from([0.0, 1.0, 2.5, np.float32(1.0), np.int64(1), 0.5, 1.7] * 3
                        + [-1.0, 9.0, np.nan, np.inf, "1", 1j, None, True])
REP_VARIANTS = ["same", "float64", "dataframe"] * 3 + ["extra_dim", "fewer_dims", "nan", "missing"]


def _variant(a, which):
    b = a.copy()
    X = b.obsm["X_pca"]
    if which == "float64":
        b.obsm["X_pca"] = X.astype(np.float64)
    elif which == "extra_dim":
        b.obsm["X_pca"] = np.c_[X, np.ones(b.n_obs)]
    elif which == "fewer_dims":
        b.obsm["X_pca"] = X[:, :1]
    elif which == "nan":
        X = X.copy()
        X[0, 0] = np.nan
        b.obsm["X_pca"] = X
    elif which == "dataframe":
        b.obsm["X_pca"] = pd.DataFrame(X, index=b.obs_names)
    elif which == "missing":
        del b.obsm["X_pca"]
    return b


@settings(max_examples=30, **SETTINGS)
@given(src=TIMES, tgt=TIMES, variant=st.sampled_from(REP_VARIANTS),
       n_steps=st.sampled_from([1, 5, np.int64(3)] * 3 + [0, 2.5, "5"]),
       solver=st.sampled_from(["euler", "rk4", "midpoint", "euler", "magic"]))
def test_predict_property(fitted_model, src, tgt, variant, n_steps, solver):
    a, model = fitted_model
    b = _variant(a, variant)
    snap = Snapshot(b)
    res = run(lambda: sctraj.tl.predict(b, model, source_time=src, target_time=tgt, n_steps=n_steps, solver=solver),
              [(b, snap)])
    snap.check(b)
    if res is None:
        return
    n_src = int((b.obs["time"] == float(src)).sum())
    assert res.n_obs == n_src and res.obsm["X_pca"].shape == (n_src, model.dim)
    assert np.isfinite(res.obsm["X_pca"]).all() and (res.obs["time"] == float(tgt)).all()
    assert (res.obs["weight"] == 1).all()
    if float(src) == float(tgt):
        np.testing.assert_allclose(res.obsm["X_pca"], np.asarray(b.obsm["X_pca"])[b.obs["time"] == float(src)],
                                   rtol=1e-6)


@settings(max_examples=20, **SETTINGS)
@given(times=st.one_of(TIMES, st.lists(TIMES, min_size=0, max_size=3)),
       n_cells=st.sampled_from([None, 1, 3, np.int64(2)] * 2 + [0, 2.0]),
       seed=st.sampled_from([0, np.int64(5), 7] * 2 + [-1, "a", 2**70]), variant=st.sampled_from(REP_VARIANTS))
def test_interpolate_property(fitted_model, times, n_cells, seed, variant):
    a, model = fitted_model
    b = _variant(a, variant)
    snap = Snapshot(b)
    res = run(lambda: sctraj.tl.interpolate(b, model, times, n_cells=n_cells, random_state=seed), [(b, snap)])
    snap.check(b)
    if res is None:
        return
    assert np.isfinite(res.obsm["X_pca"]).all()
    assert sorted(set(res.obs["time"])) == sorted({float(t) for t in np.atleast_1d(np.asarray(times, object))})
    n_times = 1 if np.ndim(times) == 0 else len(times)
    if n_cells is not None:
        assert res.n_obs == int(n_cells) * n_times


# ---------------------------------------------------------------------------------------------------------------
# leave_one_out
# ---------------------------------------------------------------------------------------------------------------
@settings(max_examples=6, **SETTINGS)
@given(heldout=st.sampled_from([None, 1.0, [1.0], None, 0.0, 7.0, "x"]),
       seeds=st.sampled_from([(0,), 0, np.int64(2), (0,), (-1,), ("a",)]),
       extra=st.sampled_from([{}, {}, {"max_cells": 5}, {"random_state": 1}, {"key_added": "k"}, {"width": 0},
                              {"exclude_times": 2.5}, {"max_cells": 0}]),
       variant=st.sampled_from(["same", "float64", "nan"]))
def test_leave_one_out_property(fitted_model, heldout, seeds, extra, variant):
    a, _ = fitted_model
    b = _variant(a, variant)
    snap = Snapshot(b)
    kw = {**FIT, **extra}
    df = run(lambda: sctraj.tl.leave_one_out(b, "time", methods=["icfm"], heldout=heldout, seeds=seeds, **kw),
             [(b, snap)])
    snap.check(b)
    if df is None:
        return
    assert set(df["method"]) == {"icfm", "no_movement", "ot_interpolation"}
    assert np.isfinite(df[["W1", "W2", "MMD"]].to_numpy(float)).all() and (df["W1"] >= 0).all()


# ---------------------------------------------------------------------------------------------------------------
# every pl function
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_adata():
    a = sctraj.datasets.simulate(n_cells=25, times=(0.0, 1.0, 2.5), n_dims=3, random_state=1)
    a.obsm["X_pca"] = a.obsm["X_sim"].copy()
    a.obsm["X_umap"] = a.obsm["X_sim"][:, :2] * 2
    a.obsm["X_line"] = a.obsm["X_sim"][:, :1].copy()
    a.obs["group"] = pd.Categorical(np.where(a.obsm["X_sim"][:, 1] > 0, "a", "b"))
    sctraj.tl.fit_flow(a, "time", method="vgfm", **FIT)
    sctraj.tl.velocity_embedding(a, basis="umap")
    sctraj.tl.fate_probabilities(a, None, "group", n_steps=5)
    table = sctraj.tl.cell_transition(a, None, 0.0, 2.5, "group", "group", n_steps=5)
    return a, table


_TABLE: dict = {}  # the tl.cell_transition table drawn by pl.cell_transition


def _loo():
    return pd.DataFrame({"method": ["icfm", "icfm", "no_movement"], "heldout": [1.0, 1.0, 1.0], "seed": [0, 1, pd.NA],
                         "W1": [0.5, 0.6, 1.0]})


PL = {
    "trajectories": lambda a, kw: sctraj.pl.trajectories(a, **kw),
    "velocity_stream": lambda a, kw: sctraj.pl.velocity_stream(a, **kw),
    "mass": lambda a, kw: sctraj.pl.mass(a, **{k: v for k, v in kw.items() if k != "basis"}),
    "growth": lambda a, kw: sctraj.pl.growth(a, **kw),
    "marginals": lambda a, kw: sctraj.pl.marginals(a, **kw),
    "training": lambda a, kw: sctraj.pl.training(a, **{k: v for k, v in kw.items() if k != "basis"}),
    "benchmark": lambda a, kw: sctraj.pl.benchmark(_loo(), **{k: v for k, v in kw.items()
                                                               if k not in ("basis", "key")}),
    "fate_probabilities": lambda a, kw: sctraj.pl.fate_probabilities(a, **kw),
    "cell_transition": lambda a, kw: sctraj.pl.cell_transition(_TABLE["table"], **{
        k: v for k, v in kw.items() if k not in ("basis", "key")}),
    "gene_trends": lambda a, kw: sctraj.pl.gene_trends(a, [a.var_names[0]], groupby="group", n_paths=10, **{
        k: v for k, v in kw.items() if k != "basis"}),
}


def test_every_pl_function_has_a_property():
    assert sorted(PL) == sorted(sctraj.pl.__all__)


@settings(max_examples=35, **SETTINGS)
@given(name=st.sampled_from(sorted(PL)), key=st.sampled_from(["sctraj"] * 5 + ["nope", 3]),
       basis=st.sampled_from(["umap", "X_umap", "pca"] * 2 + ["line", "nope", 5]),
       show=st.sampled_from([False] * 6 + ["yes"]), return_fig=st.sampled_from([False, True] * 3 + ["no"]),
       save=st.sampled_from([None] * 6 + ["noext", 3]))
def test_pl_property(fitted_adata, tmp_path_factory, name, key, basis, show, return_fig, save):
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    a, table = fitted_adata
    _TABLE["table"] = table
    figdir = sctraj.settings._figdir
    sctraj.settings.figdir = tmp_path_factory.mktemp("figs")  # save="noext" is scanpy's suffix: a file in figdir
    snap = Snapshot(a)
    kw = {"key": key, "basis": basis, "show": show, "return_fig": return_fig}
    if save is not None:
        kw["save"] = save
    if name == "velocity_stream":
        kw["vkey"] = f"{key}_velocity" if isinstance(key, str) else key
        del kw["key"]
    try:
        out = run(lambda: PL[name](a, kw), [(a, snap)])
    finally:
        plt.close("all")
        sctraj.settings.figdir = figdir
    if out is None:  # an error: run() checked that nothing changed
        return
    snap.check(a, allow_colors=True)  # a plot writes nothing but scanpy's default category colours
    if return_fig is True:
        assert isinstance(out, Figure)
    else:
        assert isinstance(out, Axes) or (isinstance(out, list) and all(isinstance(x, Axes) for x in out))
