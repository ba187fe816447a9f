"""Gene-level outputs: time labels, gene velocities through the PCA loadings, scVelo on sctraj's output."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import sctraj
from sctraj._validation import time_values

TINY = {"n_steps": 30, "batch_size": 32, "progress": False, "width": 16, "depth": 2, "trajectory_n_grid": 4}


# ---------------------------------------------------------------------------------------------------------------
# times as users write them
# ---------------------------------------------------------------------------------------------------------------
def _obs_adata(col):
    a = ad.AnnData(np.zeros((len(col), 2), np.float32))
    a.obs["day"] = col
    return a


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["D2", "D10", "D2", "D4"], [2, 10, 2, 4]),
        (["day 4.5", "day 0", "Day 10"], [4.5, 0, 10]),
        (["E7.5", "E6.5", "E8.25"], [7.5, 6.5, 8.25]),
        (["12h", "0h", "48h"], [12, 0, 48]),
        (["2", "4.5"], [2, 4.5]),
    ],
)
def test_time_labels_parsed_to_numbers(labels, expected):
    assert time_values(_obs_adata(labels), "day").tolist() == expected
    # a categorical of the same labels gives the same numbers, whatever the category order
    cat = pd.Categorical(labels, categories=sorted(set(labels)))
    assert time_values(_obs_adata(cat), "day").tolist() == expected


def test_object_column_mixing_numbers_and_labels():
    assert time_values(_obs_adata(np.array([2.0, "4", 7], dtype=object)), "day").tolist() == [2, 4, 7]
    with pytest.raises(ValueError, match="different prefixes"):
        time_values(_obs_adata(np.array([2.0, "D4"], dtype=object)), "day")
    with pytest.raises(ValueError, match="neither numbers nor time labels"):
        time_values(_obs_adata(np.array([True, "D4"], dtype=object)), "day")


def test_time_labels_are_ordered_by_number_and_logged(caplog):
    a = _obs_adata(pd.Categorical(["day10", "day2", "day2", "day10", "day4"]))  # lexical order: day10 < day2
    logger = logging.getLogger("sctraj")
    logger.addHandler(caplog.handler)
    try:
        t = time_values(a, "day")
    finally:
        logger.removeHandler(caplog.handler)
    assert t.tolist() == [10, 2, 2, 10, 4]
    assert "'day2' -> 2, 'day4' -> 4, 'day10' -> 10" in caplog.text


@pytest.mark.parametrize(
    "labels, msg",
    [
        (["E18.5", "P2"], "different prefixes"),
        (["12h", "2d"], "different units"),
        (["D-1", "D2"], "minus sign"),
        (["ctrl", "treated"], "not numbers"),
    ],
)
def test_time_labels_refused_with_the_fix(labels, msg):
    with pytest.raises(ValueError, match=msg) as err:
        time_values(_obs_adata(labels), "day")
    assert "adata.obs['day'] = adata.obs['day'].map({" in str(err.value)


def test_fit_on_string_days_matches_numeric_days(adata_time):
    a = adata_time.copy()
    a.obs["time"] = pd.Categorical([f"day {t:g}" for t in a.obs["time"]])
    model = sctraj.tl.fit_flow(a, "time", method="icfm", use_rep="X_pca", **TINY)
    assert list(model.times) == [0.0, 1.0, 2.5]
    # the same seed on the same numbers: identical velocities
    b = adata_time.copy()
    sctraj.tl.fit_flow(b, "time", method="icfm", use_rep="X_pca", **TINY)
    np.testing.assert_allclose(a.obsm["sctraj_velocity_pca"], b.obsm["sctraj_velocity_pca"], rtol=1e-5, atol=1e-6)
    # plots read the labels the same way: one panel per predicted time point, titled with its number
    import matplotlib.pyplot as plt

    axs = sctraj.pl.marginals(a, show=False)
    assert [ax.get_title() for ax in axs] == ["time 1", "time 2.5"]
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------
# gene velocities
# ---------------------------------------------------------------------------------------------------------------
def _gene_adata(n_per_time: int = 80, n_genes: int = 60, seed: int = 0):
    """Log-expression-like data whose mean moves along a fixed gene direction over three time points."""
    rng = np.random.default_rng(seed)
    times = [0.0, 1.0, 2.0]
    direction = np.zeros(n_genes)
    direction[:10] = 1.0  # genes 0-9 go up
    direction[10:20] = -1.0  # genes 10-19 go down
    X = []
    for t in times:
        X.append(2.0 + t * direction + 0.3 * rng.normal(size=(n_per_time, n_genes)))
    a = ad.AnnData(np.vstack(X).astype(np.float32))
    a.var_names = [f"g{i}" for i in range(n_genes)]
    a.obs["day"] = np.repeat(times, n_per_time)
    a.obs["group"] = pd.Categorical(rng.choice(["A", "B"], size=a.n_obs))
    # PCA on 40 "highly variable" genes only: the other 20 must get zero velocity
    a.var["highly_variable"] = np.arange(n_genes) < 40
    sc.pp.pca(a, n_comps=8, mask_var="highly_variable")
    return a


@pytest.fixture(scope="module")
def fitted_genes():
    a = _gene_adata()
    sctraj.tl.fit_flow(a, "day", method="otcfm", use_rep="X_pca", n_dims=5, random_state=0,
                       **{**TINY, "n_steps": 150})
    return a


def test_gene_velocity_through_loadings(fitted_genes, tmp_path):
    a = fitted_genes.copy()
    sctraj.tl.gene_velocity(a)
    G = a.layers["sctraj_velocity"]
    assert G.shape == (a.n_obs, a.n_vars) and G.dtype == np.float32
    hv = a.var["highly_variable"].to_numpy()
    assert (a.var["sctraj_velocity_genes"].to_numpy() == hv).all()
    assert np.all(G[:, ~hv] == 0)  # outside the PCA's gene set: exactly zero
    # projecting the gene velocity back with the fitted n_dims=5 loadings gives the fitted velocity
    W = a.varm["PCs"][:, :5]
    np.testing.assert_allclose(G @ W, a.obsm["sctraj_velocity_pca"], rtol=1e-4, atol=1e-5)
    # the learned dynamics: up genes increase, down genes decrease (true slope +-1 per day)
    mean = G.mean(0)
    assert mean[:10].min() > 0.3 and mean[10:20].max() < -0.3
    assert np.abs(mean[20:40]).max() < 0.5 * np.abs(mean[:20]).min()
    # scVelo's xkey: the expression decoded from the same PCA, close to the data in the PCA genes
    Ms = a.layers["Ms"]
    assert np.corrcoef(Ms[:, :20].ravel(), a.X[:, :20].ravel())[0, 1] > 0.8
    assert a.uns["sctraj"]["gene_velocity"]["n_dims"] == 5
    a.write_h5ad(tmp_path / "g.h5ad")
    back = ad.read_h5ad(tmp_path / "g.h5ad")
    np.testing.assert_array_equal(back.layers["sctraj_velocity"], G)


def test_gene_velocity_keeps_an_existing_Ms_and_copy(fitted_genes):
    a = fitted_genes.copy()
    a.layers["Ms"] = np.full(a.shape, 7.0, np.float32)
    out = sctraj.tl.gene_velocity(a, copy=True)
    assert "sctraj_velocity" not in a.layers and out is not None
    assert np.all(out.layers["Ms"] == 7.0)
    assert out.uns["sctraj"]["gene_velocity"]["expression_layer"] == ""
    assert sctraj.tl.gene_velocity(a, expression_layer=None) is None
    assert np.all(a.layers["Ms"] == 7.0)


def test_gene_velocity_errors(fitted_genes, adata_time):
    a = fitted_genes.copy()
    del a.varm["PCs"]
    with pytest.raises(KeyError, match=r"No gene loadings .*sc.pp.pca"):
        sctraj.tl.gene_velocity(a)
    assert "sctraj_velocity" not in a.layers
    b = fitted_genes.copy()
    b.varm["PCs"] = b.varm["PCs"][:, :3]
    with pytest.raises(ValueError, match="at least 5 columns"):
        sctraj.tl.gene_velocity(b)
    with pytest.raises(KeyError, match="fit record"):
        sctraj.tl.gene_velocity(_gene_adata(n_per_time=10))
    with pytest.raises(KeyError, match="loadings='nope' is not a key"):
        sctraj.tl.gene_velocity(fitted_genes.copy(), loadings="nope")


def test_gene_velocity_warns_when_loadings_do_not_match(fitted_genes, caplog):
    import logging

    a = fitted_genes.copy()
    logger = logging.getLogger("sctraj")
    logger.addHandler(caplog.handler)
    try:
        sctraj.tl.gene_velocity(a)
        assert "do not reproduce" not in caplog.text  # the PCA itself: consistent
        a.obsm["X_pca"] = a.obsm["X_pca"] * np.arange(1, 9)  # rescaled per dimension after the fit
        sctraj.tl.gene_velocity(a)
        assert "do not reproduce" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


def test_velocity_genes_ranking(fitted_genes):
    a = fitted_genes.copy()
    sctraj.tl.gene_velocity(a)
    up = sctraj.tl.velocity_genes(a, n_genes=5, direction="up")
    assert set(up["day"]) == {0.0, 1.0, 2.0}
    assert set(up["gene"]) <= {f"g{i}" for i in range(10)}  # every listed up gene is a true up gene
    down = sctraj.tl.velocity_genes(a, "group", n_genes=5, direction="down")
    assert set(down["gene"]) <= {f"g{i}" for i in range(10, 20)}
    assert list(down["group"].cat.categories) == ["A", "B"]
    both = sctraj.tl.velocity_genes(a, ["group", "day"], n_genes=3)
    assert len(both) == 2 * 3 * 3 and (both["rank"].between(1, 3)).all()
    assert both["frac_same_sign"].between(0, 1).all()
    with pytest.raises(KeyError, match="gene_velocity"):
        sctraj.tl.velocity_genes(fitted_genes)
    with pytest.raises(ValueError, match="direction"):
        sctraj.tl.velocity_genes(a, direction="sideways")


def test_gene_trends_plot(fitted_genes, tmp_path):
    import matplotlib.pyplot as plt

    a = fitted_genes.copy()
    axs = sctraj.pl.gene_trends(a, ["g0", "g15"], groupby="group", show=False, save=tmp_path / "t.png")
    assert len(axs) == 2 and (tmp_path / "t.png").exists()
    lines = axs[0].get_lines()
    assert lines  # the group means along the paths
    fig = sctraj.pl.gene_trends(a, "g0", expression="decode", return_fig=True)
    assert fig.axes
    with pytest.raises(KeyError, match="not a gene"):
        sctraj.pl.gene_trends(a, "nope", show=False)
    with pytest.raises(ValueError, match="outside the PCA"):
        sctraj.pl.gene_trends(a, "g50", expression="decode", show=False)
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------
# scVelo reads sctraj's output as it is
# ---------------------------------------------------------------------------------------------------------------
def test_scvelo_velocity_graph_and_stream_on_sctraj_output(fitted_genes, tmp_path):
    scv = pytest.importorskip("scvelo")  # the test extra installs it: this only guards a partial install
    import matplotlib.pyplot as plt

    a = fitted_genes.copy()
    sctraj.tl.gene_velocity(a)
    sc.pp.neighbors(a, n_neighbors=10, use_rep="X_pca", method="gauss")
    a.obsm["X_umap"] = a.obsm["X_pca"][:, :2].copy()  # any 2-d basis: UMAP itself is tested in test_scanpy_env
    scv.tl.velocity_graph(a, vkey="sctraj_velocity", n_jobs=1, show_progress_bar=False)
    graph = a.uns["sctraj_velocity_graph"]
    assert graph.shape == (a.n_obs, a.n_obs) and graph.nnz > 0
    ax = scv.pl.velocity_embedding_stream(a, vkey="sctraj_velocity", basis="umap", show=False)
    assert ax is not None
    V = a.obsm["sctraj_velocity_umap"]
    assert V.shape == (a.n_obs, 2) and np.isfinite(V).all()
    # the projected arrows point along the fitted PCA velocity (PC1-PC2 = this "UMAP")
    Vp = a.obsm["sctraj_velocity_pca"][:, :2]
    cos = (V * Vp).sum(1) / (np.linalg.norm(V, axis=1) * np.linalg.norm(Vp, axis=1) + 1e-12)
    assert np.median(cos) > 0.5
    plt.close("all")


def test_package_stays_small():
    """The wheel must stay under 15 MB: the uncompressed package (data included) is an upper bound of it."""
    from pathlib import Path

    root = Path(sctraj.__file__).parent
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 15e6, f"the sctraj package holds {size / 1e6:.1f} MB; the wheel must stay under 15 MB"
