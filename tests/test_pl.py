"""Plots: image comparison against small baselines (scanpy's approach), the scanpy contract, missing keys,
colours written back, ``tl.velocity_embedding``, and every plot on the real output of every registered method."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import method_kwargs

import sctraj
import sctraj.models as M

matplotlib.use("agg")
IMAGES = Path(__file__).parent / "_images"
DPI = 40
TOL = 15


@pytest.fixture(autouse=True)
def _mpl_reset():
    from matplotlib.testing import setup

    setup()
    sctraj.settings.autoshow = False
    yield
    plt.close("all")


def _field(X):
    """A smooth 3-d field: rotation in the first two dims plus a drift in the third."""
    return np.c_[-X[:, 1] + 0.5, X[:, 0], 0.3 + 0.1 * X[:, 2]]


@pytest.fixture
def fitted():
    """What fit_flow (+ a growth-aware method) writes, built deterministically without training.

    Keys: obsm X_pca (3-d), X_umap (a nonlinear 2-d view), sctraj_velocity_pca, sctraj_trajectory;
    obs time, cell_type, sctraj_growth_rate; uns sctraj {params, history, trajectory, mass}.
    """
    import anndata as ad

    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.5])
    n = 90
    t = np.repeat(times, n)
    X = rng.normal(size=(3 * n, 3)) * 0.4
    X[:, 0] += t
    V = _field(X)
    fr = np.linspace(0, 1, 6)
    nxt = np.array([times[times > v][0] if v < times[-1] else np.nan for v in t])
    T = X[:, None] + (fr[None, :, None] * (nxt - t)[:, None, None]) * V[:, None]
    g = 0.4 - 0.3 * X[:, 1]
    a = ad.AnnData(
        X=X.astype(np.float32),
        obs=pd.DataFrame({"time": t, "cell_type": pd.Categorical(np.where(X[:, 1] > 0, "erythroid", "myeloid"))},
                         index=[f"c{i}" for i in range(3 * n)]),
        obsm={"X_pca": X.astype(np.float32), "X_umap": np.c_[X[:, 0] + 0.3 * X[:, 1] ** 2, X[:, 2] - X[:, 1]]},
    )
    a.obsm["sctraj_velocity_pca"] = V.astype(np.float32)
    a.obsm["sctraj_trajectory"] = T.astype(np.float32)
    a.obs["sctraj_growth_rate"] = g.astype(np.float32)
    grid = np.linspace(0, 2.5, 26)
    a.uns["sctraj"] = {
        "params": {"method": "toy", "time_key": "time", "use_rep": "X_pca", "n_dims": 3, "times": times,
                   "excluded_times": np.zeros(0), "fit_seconds": 1.0, "n_steps": 200},
        "history": {"loss": (np.exp(-np.arange(200) / 40) + 0.1 + 0.02 * np.sin(np.arange(200))).astype(np.float32),
                    "growth": (0.5 * np.exp(-np.arange(200) / 80) + 0.05).astype(np.float32)},
        "trajectory": {"fractions": fr, "times": times},
        "mass": {"time": grid, "predicted": np.exp(0.4 * grid), "observed": np.array([1.0, 1.6, 2.5]),
                 "observed_time": times},
    }
    a.uns["dataset"] = {"time_unit": "day"}
    return a


def _loo_table():
    rows = []
    for h in (1.0, 2.0):
        rows += [{"method": "no_movement", "heldout": h, "seed": pd.NA, "W1": 1.0 + h / 4, "fit_seconds": 0.0},
                 {"method": "ot_interpolation", "heldout": h, "seed": pd.NA, "W1": 0.5, "fit_seconds": 0.1}]
        for m, base in (("icfm", 0.7), ("otcfm", 0.55)):
            for s in (0, 1):
                rows.append({"method": m, "heldout": h, "seed": s, "W1": base + 0.05 * s + 0.1 * h,
                             "fit_seconds": 10.0})
    return pd.DataFrame(rows)


def check_image(fig, name: str, tmp_path: Path, tol: float = TOL):
    """Save ``fig`` at dpi 40 and compare with ``tests/_images/<name>.png`` (written and failed on first run)."""
    from matplotlib.testing.compare import compare_images

    assert tol <= 25, "keep tolerances tight"
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=DPI)
    expected = IMAGES / f"{name}.png"
    if not expected.exists():
        IMAGES.mkdir(exist_ok=True)
        shutil.copy(actual, expected)
        pytest.fail(f"No baseline for {name!r}; wrote {expected}. Look at it, then commit it.")
    err = compare_images(str(expected), str(actual), tol=tol, in_decorator=True)
    if err is not None:
        pytest.fail(f"{name}: image differs from the baseline (RMS {err['rms']:.2f} > {tol}); see {err['diff']}")


# ---------------------------------------------------------------------------------------------------------------
# image tests
# ---------------------------------------------------------------------------------------------------------------
def test_image_trajectories(fitted, tmp_path):
    check_image(sctraj.pl.trajectories(fitted, basis="pca", n_paths=60, return_fig=True), "trajectories", tmp_path)


def test_image_velocity_stream(fitted, tmp_path):
    sctraj.tl.velocity_embedding(fitted, basis="umap")
    fig = sctraj.pl.velocity_stream(fitted, basis="umap", color="cell_type", n_grid=20, return_fig=True)
    check_image(fig, "velocity_stream", tmp_path)


def test_image_mass(fitted, tmp_path):
    check_image(sctraj.pl.mass(fitted, return_fig=True), "mass", tmp_path)


def test_image_mass_groupby(fitted, tmp_path):
    check_image(sctraj.pl.mass(fitted, groupby="cell_type", return_fig=True), "mass_groupby", tmp_path)


def test_image_growth(fitted, tmp_path):
    check_image(sctraj.pl.growth(fitted, basis="umap", return_fig=True), "growth", tmp_path)


def test_image_marginals(fitted, tmp_path):
    check_image(sctraj.pl.marginals(fitted, return_fig=True), "marginals", tmp_path)


def test_image_training(fitted, tmp_path):
    check_image(sctraj.pl.training(fitted, return_fig=True), "training", tmp_path)


def test_image_benchmark(tmp_path):
    check_image(sctraj.pl.benchmark(_loo_table(), return_fig=True), "benchmark", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the scanpy contract, for every plotting function
# ---------------------------------------------------------------------------------------------------------------
def _with_fates(a):
    """What tl.fate_probabilities writes: P(erythroid) rises with the second coordinate; NaN at the last time."""
    p = 1.0 / (1.0 + np.exp(-3.0 * a.obsm["X_pca"][:, 1]))
    P = np.c_[p, 1.0 - p]
    P[a.obs["time"].to_numpy() == 2.5] = np.nan
    a.obsm["sctraj_fate_probabilities"] = pd.DataFrame(P, index=a.obs_names, columns=["erythroid", "myeloid"])
    a.uns["sctraj"]["fate_probabilities"] = {"groupby": "cell_type", "target_time": 2.5, "growth_weighted": False}
    return a


def _transition_table():
    return pd.DataFrame([[0.8, 0.2], [0.1, 0.9], [0.55, 0.45]], index=pd.Index(["ery", "mye", "prog"], name="day 2"),
                        columns=pd.Index(["erythroid", "myeloid"], name="day 4"))


def test_image_fate_probabilities(fitted, tmp_path):
    fig = sctraj.pl.fate_probabilities(_with_fates(fitted), basis="umap", return_fig=True)
    check_image(fig, "fate_probabilities", tmp_path)


def test_image_cell_transition(tmp_path):
    check_image(sctraj.pl.cell_transition(_transition_table(), return_fig=True), "cell_transition", tmp_path)


def _calls(a):
    sctraj.tl.velocity_embedding(a, basis="umap")
    _with_fates(a)
    return {
        "fate_probabilities": lambda **kw: sctraj.pl.fate_probabilities(a, fates="myeloid", **kw),
        "cell_transition": lambda **kw: sctraj.pl.cell_transition(_transition_table(), **kw),
        "trajectories": lambda **kw: sctraj.pl.trajectories(a, n_paths=30, **kw),
        "velocity_stream": lambda **kw: sctraj.pl.velocity_stream(a, basis="umap", n_grid=15, **kw),
        "mass": lambda **kw: sctraj.pl.mass(a, **kw),
        "growth": lambda **kw: sctraj.pl.growth(a, **kw),
        "marginals": lambda **kw: sctraj.pl.marginals(a, times=[1.0], **kw),
        "training": lambda **kw: sctraj.pl.training(a, keys="loss", **kw),
        "benchmark": lambda **kw: sctraj.pl.benchmark(_loo_table(), **kw),
        "gene_trends": lambda **kw: sctraj.pl.gene_trends(a, "0", groupby="cell_type", n_paths=20, **kw),
    }


PLOTS = ["trajectories", "velocity_stream", "mass", "growth", "marginals", "training", "benchmark",
         "fate_probabilities", "cell_transition", "gene_trends"]


def test_every_pl_function_is_covered():
    assert sorted(sctraj.pl.__all__) == sorted(PLOTS)


@pytest.mark.parametrize("name", PLOTS)
def test_contract(fitted, name, tmp_path):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    call = _calls(fitted)[name]
    assert isinstance(call(return_fig=True), Figure)
    assert isinstance(call(show=False), Axes)
    fig, ax = plt.subplots()
    assert call(ax=ax, show=False) is ax
    assert ax.has_data() or ax.collections or ax.patches
    path = tmp_path / "sub" / f"{name}.png"
    assert call(save=path, show=False) is not None
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="extension"):
        call(save=tmp_path / "noext", show=False)
    with pytest.raises(TypeError, match="show"):
        call(show="yes")


@pytest.mark.parametrize(
    ("name", "remove", "hint"),
    [
        ("trajectories", ("obsm", "sctraj_trajectory"), "sctraj.tl.fit_flow"),
        ("velocity_stream", ("obsm", "sctraj_velocity_umap"), "sctraj.tl.velocity_embedding"),
        ("mass", ("uns_mass", None), "sctraj.tl.fit_flow"),
        ("growth", ("obs", "sctraj_growth_rate"), "sctraj.tl.fit_flow"),
        ("marginals", ("obsm", "sctraj_trajectory"), "sctraj.tl.fit_flow"),
        ("training", ("uns", "sctraj"), "sctraj.tl.fit_flow"),
    ],
)
def test_missing_keys_name_the_tl_call(fitted, name, remove, hint):
    calls = _calls(fitted)
    slot, key = remove
    if slot == "uns_mass":
        del fitted.uns["sctraj"]["mass"]
    elif slot == "obs":
        del fitted.obs[key]
    else:
        del getattr(fitted, slot)[key]
    with pytest.raises(KeyError, match=hint.replace(".", r"\.")):
        calls[name](show=False)


def test_other_key_added_and_missing_basis(fitted):
    with pytest.raises(KeyError, match="key_added='run2'"):
        sctraj.pl.training(fitted, key="run2", show=False)
    with pytest.raises(KeyError, match="tsne"):
        sctraj.pl.growth(fitted, basis="tsne", show=False)
    with pytest.raises(TypeError, match="leave_one_out"):
        sctraj.pl.benchmark(fitted, show=False)
    with pytest.raises(ValueError, match="times"):
        sctraj.pl.marginals(fitted, ax=plt.subplots()[1], show=False)


def test_group_colors_written_back_and_reused(fitted):
    assert "cell_type_colors" not in fitted.uns
    sctraj.pl.mass(fitted, groupby="cell_type", show=False)
    cols = list(fitted.uns["cell_type_colors"])
    assert len(cols) == 2
    fitted.uns["cell_type_colors"] = np.array(["#ff0000", "#0000ff"], dtype=object)
    ax = sctraj.pl.mass(fitted, groupby="cell_type", show=False)
    line_colors = {matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()}
    assert {"#ff0000", "#0000ff"} <= line_colors


def test_group_masses_add_up_to_the_totals(fitted):
    from sctraj.pl._growth import _group_masses, _mass_record

    df = _group_masses(fitted, "sctraj", "cell_type", _mass_record(fitted, "sctraj"))
    tot = df.groupby(["time", "kind"])["mass"].sum()
    np.testing.assert_allclose(tot.xs("observed", level="kind").to_numpy(), [1.0, 1.6, 2.5])
    np.testing.assert_allclose(tot.xs("predicted", level="kind").to_numpy(), np.exp(0.4 * np.array([1.0, 2.5])),
                               rtol=1e-6)


def test_velocity_grid_masks_empty_space():
    from sctraj.pl._velocity import velocity_grid

    rng = np.random.default_rng(0)
    E = np.r_[rng.normal(size=(200, 2)) * 0.3, rng.normal(size=(200, 2)) * 0.3 + 6]
    V = np.tile([1.0, 0.0], (400, 1))
    xs, ys, U, W = velocity_grid(E, V, n_grid=30)
    assert U.mask[15, 15]  # the gap between the two clouds
    assert not U.mask[4, 4] and not U.mask[25, 25]
    np.testing.assert_allclose(U.compressed(), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# tl.velocity_embedding
# ---------------------------------------------------------------------------------------------------------------
def test_velocity_embedding_matches_the_jacobian(fitted):
    sctraj.tl.velocity_embedding(fitted, basis="umap")
    X, V = fitted.obsm["X_pca"].astype(float), fitted.obsm["sctraj_velocity_pca"].astype(float)
    true = np.c_[V[:, 0] + 0.6 * X[:, 1] * V[:, 1], V[:, 2] - V[:, 1]]  # d(umap)/d(pca) applied to v
    est = fitted.obsm["sctraj_velocity_umap"]
    assert est.shape == (fitted.n_obs, 2) and est.dtype == np.float32
    assert np.corrcoef(true.ravel(), est.ravel())[0, 1] > 0.99
    assert np.median(np.abs(est - true)) < 0.05 * np.abs(true).mean()
    assert list(fitted.uns["sctraj_velocity_params"]["embeddings"]) == ["umap"]


def test_velocity_embedding_on_the_fitted_rep_is_exact_and_h5ad_safe(fitted, tmp_path):
    import anndata as ad

    fitted.obsm["sctraj_velocity_pca"][:5] = np.nan
    sctraj.tl.velocity_embedding(fitted, basis="umap")
    assert np.isnan(fitted.obsm["sctraj_velocity_umap"][:5]).all()
    # basis == the fitted representation: the first two coordinates, exactly (the source key is left as it was)
    before = fitted.obsm["sctraj_velocity_pca"].copy()
    out = sctraj.tl.velocity_embedding(fitted, basis="pca", copy=True)
    np.testing.assert_array_equal(out.obsm["sctraj_velocity_pca"], before[:, :2])
    np.testing.assert_array_equal(fitted.obsm["sctraj_velocity_pca"], before)  # copy=True left adata alone
    assert list(out.uns["sctraj_velocity_params"]["embeddings"]) == ["umap", "pca"]
    fitted.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    assert "umap" in b.uns["sctraj_velocity_params"]["embeddings"]
    np.testing.assert_array_equal(b.obsm["sctraj_velocity_umap"], fitted.obsm["sctraj_velocity_umap"])


def test_velocity_embedding_errors_leave_adata_untouched(fitted):
    del fitted.uns["sctraj"]
    keys = set(fitted.obsm)
    with pytest.raises(KeyError, match=r"sctraj\.tl\.fit_flow"):
        sctraj.tl.velocity_embedding(fitted, basis="umap")
    with pytest.raises(KeyError, match="umap"):
        sctraj.tl.velocity_embedding(fitted, basis="tsne", use_rep="X_pca")
    with pytest.raises(ValueError, match="n_neighbors"):
        sctraj.tl.velocity_embedding(fitted, basis="umap", use_rep="X_pca", n_neighbors=1)
    assert set(fitted.obsm) == keys and "sctraj_velocity_params" not in fitted.uns


def test_pl_does_not_import_torch():
    code = "import sys, sctraj.pl; assert 'torch' not in sys.modules, 'sctraj.pl imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# every plot on the real output of every registered method
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", M.available_methods())
def test_every_plot_on_real_fits(adata_time, method, tmp_path):
    from sctraj.cli import save_figures

    a = adata_time
    a.obsm["X_umap"] = np.c_[a.obsm["X_pca"][:, 0], a.obsm["X_pca"][:, 1] ** 2 + a.obsm["X_pca"][:, 2]]
    model = sctraj.tl.fit_flow(a, "time", method=method, trajectory_n_grid=4, **method_kwargs(method))
    paths = save_figures(a, "sctraj", tmp_path)
    names = {p.stem for p in paths}
    assert {"velocity_stream", "trajectories", "marginals", "training"} <= names
    assert ("mass" in names) == ("mass" in a.uns["sctraj"])
    if model.has_growth:
        sctraj.pl.growth(a, show=False)
    pred = sctraj.tl.predict(a, model, source_time=0.0, target_time=1.0)
    sctraj.pl.marginals(a, predicted=pred, show=False)


# ---------------------------------------------------------------------------------------------------------------
# scanpy's conventions: save=True / suffix in figdir, autoshow, discrete times, legends, phases, grids
# ---------------------------------------------------------------------------------------------------------------
def test_save_follows_scanpy(fitted, tmp_path, monkeypatch):
    import scanpy as sc

    monkeypatch.setattr(sctraj.settings, "_figdir", None)
    old = (sc.settings.figdir, sc.settings.file_format_figs, sc.settings.plot_suffix)
    try:
        sc.settings.figdir = tmp_path / "figs"
        sc.settings.file_format_figs = "png"
        sc.settings.plot_suffix = ""
        sctraj.pl.mass(fitted, save=True, show=False)
        sctraj.pl.mass(fitted, save="_run2.svg", show=False)
        sctraj.pl.training(fitted, save="_noext", show=False)
        sctraj.pl.training(fitted, save=str(tmp_path / "explicit" / "t.pdf"), show=False)
    finally:
        sc.settings.figdir, sc.settings.file_format_figs, sc.settings.plot_suffix = old
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["mass.png", "mass_run2.svg", "training_noext.png"]
    assert (tmp_path / "explicit" / "t.pdf").is_file()
    sctraj.settings.figdir = tmp_path / "own"  # sctraj's own setting wins
    try:
        sctraj.pl.mass(fitted, save="_x.png", show=False)
    finally:
        sctraj.settings.figdir = None
    assert (tmp_path / "own" / "mass_x.png").is_file()
    with pytest.raises(TypeError, match="save must be True"):
        sctraj.pl.mass(fitted, save=3, show=False)


def test_show_none_follows_scanpy_autoshow(fitted, monkeypatch):
    import scanpy as sc

    monkeypatch.setattr(sctraj.settings, "_autoshow", None)
    old = sc.settings.autoshow
    try:
        sc.settings.autoshow = False
        assert sctraj.pl.mass(fitted) is not None  # not shown: the axes come back
        sc.settings.autoshow = True
        assert sctraj.pl.mass(fitted) is None  # shown (agg backend: a no-op)
    finally:
        sc.settings.autoshow = old


def test_discrete_time_is_categorical_with_legend(fitted):
    sctraj.tl.velocity_embedding(fitted, basis="umap")
    ax = sctraj.pl.velocity_stream(fitted, basis="umap", color="time", n_grid=15, show=False)
    leg = ax.get_legend()
    assert leg is not None and [t.get_text() for t in leg.get_texts()] == ["0", "1", "2.5"]
    assert len(ax.figure.axes) == 1  # no colour bar
    assert "time_colors" not in fitted.uns and fitted.obs["time"].dtype == float  # adata untouched


def test_trajectories_keep_the_categorical_legend(fitted):
    ax = sctraj.pl.trajectories(fitted, basis="pca", color="cell_type", n_paths=30, show=False)
    texts = {t.get_text() for leg in ax.findobj(matplotlib.legend.Legend) for t in leg.get_texts()}
    assert {"erythroid", "myeloid", "path start: observed cell"} <= texts


def test_mass_axis_starts_at_zero(fitted):
    fitted.uns["sctraj"]["mass"]["predicted"] = 1 + 0.002 * np.sin(fitted.uns["sctraj"]["mass"]["time"])
    fitted.uns["sctraj"]["mass"]["observed"] = np.array([1.0, 1.001, 0.999])
    lo, hi = sctraj.pl.mass(fitted, show=False).get_ylim()
    assert lo == 0 and hi >= 1.0
    assert sctraj.pl.mass(fitted, log=True, show=False).get_yscale() == "log"


def _with_phase2(a):
    h = a.uns["sctraj"]["history"]
    w1 = np.full(200, np.nan, np.float32)
    w1[120:] = 0.3 + 0.05 * np.exp(-np.arange(80) / 20)
    h["loss"] = h["loss"] + np.where(np.arange(200) >= 120, 0.4, 0.0).astype(np.float32)
    h["w1_loss"] = w1
    a.uns["sctraj"]["params"]["method"] = "vgfm"
    return a


def test_training_marks_phase_two(fitted, tmp_path):
    ax = sctraj.pl.training(_with_phase2(fitted), keys="loss", show=False)
    assert any(np.allclose(line.get_xdata(), 121) for line in ax.get_lines())
    assert any("phase 2" in t.get_text() for t in ax.texts)
    check_image(sctraj.pl.training(fitted, return_fig=True), "training_phases", tmp_path)


def test_training_draws_a_term_logged_every_few_steps(fitted):
    """vgfm logs its distribution-fitting terms on every phase2_every-th step (NaN between): they are drawn."""
    a = fitted.copy()
    h = a.uns["sctraj"]["history"]
    w1 = np.full(200, np.nan, np.float32)
    w1[120::6] = 0.3 + 0.05 * np.exp(-np.arange(len(w1[120::6])) / 5)
    h["w1_loss"] = w1
    ax = sctraj.pl.training(a, keys="w1_loss", show=False)
    drawn = [line for line in ax.get_lines() if np.isfinite(np.asarray(line.get_ydata(), float)).sum() > 2]
    assert len(drawn) == 2  # the raw values and their moving average (besides the phase-2 marker)
    assert np.allclose(drawn[0].get_xdata(), np.arange(121, 201, 6))
    plt.close(ax.figure)


def test_image_grid_of_panels_with_ax(fitted, tmp_path):
    """Four sctraj panels drawn into one constrained-layout grid with ax=: nothing overlaps or is cut off."""
    sctraj.tl.velocity_embedding(fitted, basis="umap")
    fig, axs = plt.subplots(2, 2, figsize=(9, 7.5), layout="constrained")
    sctraj.pl.velocity_stream(fitted, basis="umap", color="time", n_grid=15, ax=axs[0, 0], show=False)
    sctraj.pl.trajectories(fitted, basis="pca", color="cell_type", n_paths=40, ax=axs[0, 1], show=False)
    sctraj.pl.mass(fitted, groupby="cell_type", ax=axs[1, 0], show=False)
    sctraj.pl.growth(fitted, basis="umap", ax=axs[1, 1], show=False)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    fig_box = fig.bbox
    boxes = []
    for a in axs.ravel():
        for art in (a.title, *((a.xaxis.label, a.yaxis.label) if a.axison else ())):
            if art.get_text() and art.get_visible():
                bb = art.get_window_extent(r)
                assert fig_box.x0 - 1 <= bb.x0 and bb.x1 <= fig_box.x1 + 1, art.get_text()
                assert fig_box.y0 - 1 <= bb.y0 and bb.y1 <= fig_box.y1 + 1, art.get_text()
        boxes.append(a.get_tightbbox(r))
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            ov = boxes[i].intersection(boxes[i], boxes[j])
            assert ov is None or ov.width * ov.height < 0.02 * boxes[i].width * boxes[i].height, (i, j)
    check_image(fig, "grid", tmp_path)
