"""Meta Flow Matching: the kNN-graph GCN encoder, the population simulator, and metafm's population handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sctraj
from sctraj.datasets import simulate_populations, true_flow
from sctraj.engine.gnn import PopulationEncoder, batch_graphs, knn_graph, knn_indices

FAST = {"n_steps": 30, "batch_size": 16, "progress": False, "width": 16, "depth": 2, "gnn_width": 8, "gnn_depth": 2,
        "trajectory_n_grid": 0, "use_rep": "X_sim"}


@pytest.fixture
def pops():
    return simulate_populations(n_populations=6, n_test=2, n_cells=25, times=(0.0, 1.0), random_state=1)


# -- encoder ------------------------------------------------------------------------------------------------------
def test_knn_indices_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    nbr = knn_indices(torch.as_tensor(x), 5, chunk_size=7).numpy()
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(nbr, np.argsort(d, axis=1)[:, :5])
    assert knn_indices(torch.as_tensor(x[:3]), 10).shape == (3, 2)  # k clipped to n - 1


def test_knn_graph_is_the_normalised_symmetric_adjacency():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2))
    k = 4
    A = knn_graph(torch.as_tensor(x), k).adj.to_dense().numpy()
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    B = np.zeros((30, 30))
    B[np.repeat(np.arange(30), k), np.argsort(d, axis=1)[:, :k].ravel()] = 1
    B = np.maximum(B, B.T) + np.eye(30)
    dinv = 1 / np.sqrt(B.sum(1))
    np.testing.assert_allclose(A, dinv[:, None] * B * dinv[None], rtol=1e-6)
    assert (A > 0).sum() <= 30 * (2 * k + 1)
    # k = 0: self-loops only (DeepSets)
    np.testing.assert_allclose(knn_graph(torch.as_tensor(x), 0).adj.to_dense().numpy(), np.eye(30))


def test_encoder_is_permutation_invariant_and_batches_exactly():
    torch.manual_seed(0)
    enc = PopulationEncoder(3, width=8, depth=3, k=5)
    xs = [torch.randn(n, 3) for n in (20, 7, 33)]
    single = torch.cat([enc(x) for x in xs])
    gs = [enc.graph(x) for x in xs]
    g, pool = batch_graphs(gs)
    batched = enc.encode(torch.cat(xs), g, pool)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    perm = torch.randperm(20)
    torch.testing.assert_close(enc(xs[0][perm]), enc(xs[0]), rtol=1e-5, atol=1e-6)
    # different populations get different embeddings
    assert not torch.allclose(single[0], single[2])


# -- simulator ----------------------------------------------------------------------------------------------------
def test_simulate_populations_ground_truth(pops):
    a = pops
    assert set(a.obs["split"]) == {"train", "test"}
    assert (a.obs["split"] == "test").sum() == 2 * 25 * 2
    u = a.uns["simulate_populations"]
    assert len(u["test_populations"]) == 2
    # each cell is the exact flow of its origin, and the stored velocity is the time derivative of that flow
    for i, p in enumerate(u["populations"][:3]):
        m = (a.obs["population"] == p).to_numpy() & (a.obs["time"] == 1.0).to_numpy()
        X0 = a.obsm["true_origin"][m]
        np.testing.assert_allclose(true_flow(X0, 1.0, u["centers"][i], u["axes"][i]), a.obsm["X_sim"][m], atol=1e-5)
        np.testing.assert_allclose(true_flow(X0, 0.0, u["centers"][i], u["axes"][i]), X0, atol=1e-6)
        h = 1e-4
        fd = (true_flow(X0, 1.0 + h, u["centers"][i], u["axes"][i])
              - true_flow(X0, 1.0 - h, u["centers"][i], u["axes"][i])) / (2 * h)
        np.testing.assert_allclose(fd, a.obsm["true_velocity"][m], atol=1e-4)


def test_simulate_populations_dynamics_depend_on_the_population():
    a = simulate_populations(n_populations=2, n_test=0, n_cells=5, random_state=0)
    u = a.uns["simulate_populations"]
    x = np.zeros((1, 2))
    v = [sctraj.datasets._simulate_populations.true_velocity(x + u["centers"][0] + 0.2 * u["axes"][0],
                                                           u["centers"][i], u["axes"][i]) for i in range(2)]
    assert not np.allclose(v[0], v[1])  # same position, different velocity


def test_simulate_populations_options_and_errors():
    a = simulate_populations(n_populations=4, n_test=1, n_cells=10, n_dims=4, n_treatments=2)
    assert a.obsm["X_sim"].shape == (4 * 10 * 3, 4)
    assert set(a.obs["treatment"]) == {"control", "drug"}
    with pytest.raises(ValueError, match="n_dims"):
        simulate_populations(n_dims=1)
    with pytest.raises(ValueError, match="n_test"):
        simulate_populations(n_populations=3, n_test=3)
    with pytest.raises(ValueError, match="n_treatments"):
        simulate_populations(n_treatments=3)


# -- metafm -------------------------------------------------------------------------------------------------------
def test_metafm_predicts_unseen_populations_from_source_cells_only(pops, tmp_path):
    tr = pops[pops.obs["split"] == "train"].copy()
    te = pops[(pops.obs["split"] == "test") & (pops.obs["time"] == 0.0)].copy()
    model = sctraj.tl.fit_flow(tr, "time", method="metafm", population_key="population", **FAST)
    assert sorted(tr.uns["sctraj"]["populations"]) == sorted(set(tr.obs["population"]))
    out = sctraj.tl.predict(te, model, source_time=0.0, target_time=1.0)
    assert out.n_obs == te.n_obs and np.isfinite(out.obsm["X_sim"]).all()
    assert (out.obs["population"].to_numpy() == te.obs["population"].to_numpy()).all()
    # each population is pushed with its own embedding: the same cells give different velocities
    X = te.obsm["X_sim"][:10]
    labs = te.obs["population"].unique()
    c = [model.population_condition(te.obsm["X_sim"][(te.obs["population"] == p).to_numpy()]) for p in labs[:2]]
    assert not np.allclose(model.velocity(X, 0.5, cond=c[0]), model.velocity(X, 0.5, cond=c[1]))
    with pytest.raises(ValueError, match="population"):
        model.velocity(X, 0.5)
    # save / load: identical predictions
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    out2 = sctraj.tl.predict(te, m2, source_time=0.0, target_time=1.0)
    np.testing.assert_array_equal(out.obsm["X_sim"], out2.obsm["X_sim"])
    # a new AnnData without the population column is a clear error
    del te.obs["population"]
    with pytest.raises(KeyError, match="population"):
        sctraj.tl.predict(te, model, source_time=0.0, target_time=1.0)


def test_metafm_condition_key(tmp_path):
    a = simulate_populations(n_populations=6, n_test=0, n_cells=20, times=(0.0, 1.0), n_treatments=2)
    model = sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", condition_key="treatment",
                               coupling="independent", **FAST)
    assert a.uns["sctraj"]["params"]["condition_key"] == "treatment"
    assert model.method.meta["conditions"] == ["control", "drug"]
    X = a.obsm["X_sim"][(a.obs["population"] == "P000").to_numpy() & (a.obs["time"] == 0).to_numpy()]
    c1, c2 = model.population_condition(X, "control"), model.population_condition(X, "drug")
    assert c1.shape == (1, 8 + 2) and not torch.equal(c1, c2)
    with pytest.raises(ValueError, match="Unknown condition"):
        model.population_condition(X, "placebo")
    b = a[a.obs["time"] == 0].copy()
    b.obs["treatment"] = b.obs["treatment"].cat.rename_categories({"drug": "placebo"})
    with pytest.raises(ValueError, match="Unknown condition"):
        sctraj.tl.predict(b, model, source_time=0.0, target_time=1.0)
    model.save(tmp_path / "m.pt")
    m2 = sctraj.tl.load_model(tmp_path / "m.pt")
    np.testing.assert_array_equal(model.population_condition(X, "drug").numpy(), m2.population_condition(X, "drug").numpy())


def test_metafm_input_errors_leave_adata_untouched(pops):
    a = pops
    before = (set(a.obs.columns), set(a.obsm), set(a.uns))

    def same():
        return (set(a.obs.columns), set(a.obsm), set(a.uns)) == before

    with pytest.raises(ValueError, match="population_key"):
        sctraj.tl.fit_flow(a, "time", method="metafm", **FAST)
    a.obs["one"] = "x"
    with pytest.raises(ValueError, match="at least two"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="one", **FAST)
    a.obs["gappy"] = a.obs["population"].astype(str).where(a.obs["time"] == 0, "late")
    with pytest.raises(ValueError, match="two or more time points"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="gappy", **FAST)
    with pytest.raises(ValueError, match="one value per population"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", condition_key="time", **FAST)
    with pytest.raises(KeyError, match="condition_key"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", condition_key="nope", **FAST)
    with pytest.raises(ValueError, match="coupling"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", coupling="sinkhorn", **FAST)
    a.obs["holes"] = a.obs["population"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("holes")] = np.nan
    with pytest.raises(ValueError, match="missing population labels"):
        sctraj.tl.fit_flow(a, "time", method="metafm", population_key="holes", **FAST)
    for c in ("one", "gappy", "holes"):
        del a.obs[c]
    assert same()


def test_metafm_caps_the_cells_the_encoder_sees(pops):
    tr = pops[pops.obs["split"] == "train"].copy()
    kw = {**FAST, "gnn_depth": 1}  # two tiny ReLU layers can collapse to a constant embedding after 30 steps
    model = sctraj.tl.fit_flow(tr, "time", method="metafm", population_key="population", max_population_cells=10, **kw)
    src = tr.obsm["X_sim"][((tr.obs["population"] == tr.obs["population"].iloc[0]) & (tr.obs["time"] == 0.0))
                           .to_numpy()]
    assert len(src) > 10
    # the encoder sees a seeded subset of 10 cells: the same embedding on every call, equal to that subset's own
    c1, c2 = model.population_condition(src), model.population_condition(src)
    np.testing.assert_array_equal(c1.numpy(), c2.numpy())
    keep = np.sort(np.random.default_rng(0).choice(len(src), size=10, replace=False))
    np.testing.assert_allclose(c1.numpy(), model.population_condition(src[keep]).numpy(), rtol=1e-6, atol=1e-7)
    assert np.abs(c1.numpy() - model.population_condition(src[-10:]).numpy()).max() > 1e-6
    with pytest.raises(ValueError, match="max_population_cells"):
        sctraj.tl.fit_flow(tr, "time", method="metafm", population_key="population", max_population_cells=0, **FAST)


def _conds(adata, model, mask):
    from sctraj.tl._utils import population_groups

    labs = adata.obs["population"].astype(str).to_numpy()
    return {labs[pos[0]]: cond for pos, cond in population_groups(adata, model, mask)}


def test_metafm_embeds_each_population_from_its_first_fitted_time():
    # with the first time excluded, the embedding must come from the first *fitted* time's cells, not from t=0
    a = simulate_populations(n_populations=4, n_test=0, n_cells=15, times=(0.0, 1.0, 2.0), random_state=2)
    model = sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", exclude_times=[0.0],
                               **{**FAST, "gnn_depth": 1, "n_steps": 10})
    t = a.obs["time"].to_numpy()
    got = _conds(a, model, t == 2.0)
    for p, cond in got.items():
        pop = (a.obs["population"] == p).to_numpy()
        want = model.population_condition(a.obsm["X_sim"][pop & (t == 1.0)])
        torch.testing.assert_close(cond, want, rtol=0, atol=0)
        assert not torch.allclose(cond, model.population_condition(a.obsm["X_sim"][pop & (t == 0.0)]))
    # predict from t=1 on the full data equals predict on the data without the excluded time's cells
    out = sctraj.tl.predict(a, model, source_time=1.0, target_time=2.0)
    out2 = sctraj.tl.predict(a[t > 0].copy(), model, source_time=1.0, target_time=2.0)
    np.testing.assert_array_equal(out.obsm["X_sim"], out2.obsm["X_sim"])


def test_metafm_same_population_same_embedding_in_training_and_outputs(monkeypatch):
    # populations larger than max_population_cells: training and outputs must subsample the same cells
    a = simulate_populations(n_populations=4, n_test=0, n_cells=25, times=(0.0, 1.0), random_state=3)
    seen = []
    graph = PopulationEncoder.graph

    def spy(self, x):
        seen.append(x.detach().clone())
        return graph(self, x)

    monkeypatch.setattr(PopulationEncoder, "graph", spy)
    model = sctraj.tl.fit_flow(a, "time", method="metafm", population_key="population", max_population_cells=10,
                               **{**FAST, "gnn_depth": 1, "n_steps": 10})
    pops = sorted(set(a.obs["population"].astype(str)))
    # fit_flow builds one graph per population before training (sorted labels), then embeds for its outputs
    train_src = dict(zip(pops, seen[: len(pops)], strict=True))
    assert all(len(x) == 10 for x in train_src.values())
    out = _conds(a, model, np.ones(a.n_obs, bool))
    assert sorted(out) == pops
    with torch.no_grad():
        for p in pops:
            torch.testing.assert_close(out[p], model.method.encoder(train_src[p]), rtol=1e-5, atol=1e-6)


def test_metafm_unlabelled_cells_are_an_error_not_a_population(pops):
    tr = pops[pops.obs["split"] == "train"].copy()
    model = sctraj.tl.fit_flow(tr, "time", method="metafm", population_key="population",
                               **{**FAST, "n_steps": 5})
    te = tr[tr.obs["time"] == 0.0].copy()
    te.obs["population"] = te.obs["population"].astype(object)
    te.obs.iloc[:3, te.obs.columns.get_loc("population")] = np.nan
    with pytest.raises(ValueError, match="no population label"):
        sctraj.tl.predict(te, model, source_time=0.0, target_time=1.0)
