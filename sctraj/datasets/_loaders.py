"""Loaders for the small real time courses shipped inside the package (``sctraj/datasets/_data``)."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd


def _load(name: str):
    with files("sctraj.datasets").joinpath("_data", name).open("rb") as fh:
        return dict(np.load(fh, allow_pickle=False))


def _adata(X, obs, obsm, uns):
    import anndata as ad

    obs = pd.DataFrame(obs)
    obs.index = [f"cell{i}" for i in range(len(obs))]
    return ad.AnnData(X=np.asarray(X, np.float32), obs=obs, obsm=obsm, uns=uns)


def hematopoiesis():
    """Mouse hematopoiesis with lineage tracing (Weinreb et al. 2020), a 2-d embedding at days 2, 4 and 6.

    10,998 cells (1,429 / 3,781 / 5,788 per day): the population grows strongly, which makes it the standard test
    for growth-aware methods (TIGON, DeepRUOT, VGFM).

    Returns
    -------
    AnnData with ``obs["day"]`` (2, 4, 6; float), ``obs["time_index"]`` (0, 1, 2), ``obsm["X_emb"]`` (the 2-d
    embedding; also in ``X``).

    Notes
    -----
    Provenance: ``data/mouse_hematopoiesis.csv`` of the VGFM repository (DongyiWang-66/VGFM, commit a7962119),
    identical to DeepRUOT's copy and to TIGON's ``Input/Lineage.npy`` (MIT). Raw data: Weinreb, Rodriguez-Fraticelli,
    Camargo & Klein, Science 367 (2020). How the 2-d embedding was made is not documented upstream; ``samples``
    0/1/2 are in-vitro days 2/4/6. Licence: the upstream TIGON repository is MIT; check the original authors' terms
    before redistributing outside sctraj.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> sorted(adata.obs["day"].unique().tolist())
    [2.0, 4.0, 6.0]
    """
    d = _load("hematopoiesis.npz")
    X = d["X"]
    ti = d["t"].astype(int)
    return _adata(
        X,
        {"day": (2.0 * ti + 2.0), "time_index": ti},
        {"X_emb": X.copy()},
        {"dataset": {"name": "hematopoiesis", "source": "Weinreb et al. 2020 via TIGON/VGFM", "time_unit": "day"}},
    )


def eb():
    """Embryoid-body differentiation (Moon et al. 2019), a 2,750-cell subset with 5 time points and 100 PCs.

    Returns
    -------
    AnnData with ``obs["day"]`` (middle of each sampling window: 1.5, 7.5, 13.5, 19.5, 25.5), ``obs["time_index"]``
    (0-4), ``obs["split"]`` (``"val"``/``"test"``: the NLSB file each cell came from), ``obs["eb_index"]`` (row of the
    original TrajectoryNet file) and ``obsm["X_pca"]`` (100-d, not centred; also in ``X``).

    Notes
    -----
    The benchmark protocol (TrajectoryNet, TorchCFM, Metric FM) uses the first 5 PCs, standardised
    (:func:`sctraj.pp.scale_embedding`), with time points 1, 2, 3 held out in turn. This is a class-balanced subset
    (200 + 350 cells per time point), not the full benchmark split, so absolute numbers differ from the papers'.

    Provenance: ``data/val_rna.npz`` and ``data/test_rna.npz`` of take-koshizuka/NLSB (commit 2a0228f9; MIT,
    Copyright (c) 2022 Takeshi Koshizuka), a subset of the TrajectoryNet EB data (Tong et al. 2020; raw data
    Moon et al., Nature Biotechnology 2019). Sampling windows: days 0-3, 6-9, 12-15, 18-21, 24-27.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.eb()
    >>> "X_pca" in adata.obsm
    True
    """
    d = _load("eb.npz")
    ti = d["t"].astype(int)
    mids = np.array([1.5, 7.5, 13.5, 19.5, 25.5])
    return _adata(
        d["X"],
        {
            "day": mids[ti],
            "time_index": ti,
            "split": pd.Categorical(d["split"].astype(str)),
            "eb_index": d["idx"].astype(int),
        },
        {"X_pca": d["X"].copy()},
        {"dataset": {"name": "eb", "source": "Moon et al. 2019 via TrajectoryNet/NLSB", "time_unit": "day"}},
    )


def ipsc():
    """iPSC to cardiomyocyte differentiation, single-cell qPCR (Bargaje et al. 2017), 8 time points, 4 dims.

    1,896 cells (231 / 166 / 93 / 211 / 122 / 258 / 456 / 359 per time point).

    Returns
    -------
    AnnData with ``obs["time"]`` (the time-point index 0-7 as float) and ``obsm["X_emb"]`` (4-d; also in ``X``).

    Notes
    -----
    The real sampling times are not stored upstream, so the index is the time (equal spacing assumed).
    Provenance: ``Input/Bifurcation.npy`` of yutongo/TIGON (commit 7fb46bc3; MIT). Raw data: Bargaje et al., PNAS
    114 (2017). Preprocessing is not documented upstream.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.ipsc()
    >>> "X_emb" in adata.obsm
    True
    """
    d = _load("ipsc.npz")
    ti = d["t"].astype(int)
    return _adata(
        d["X"],
        {"time": ti.astype(float)},
        {"X_emb": d["X"].copy()},
        {"dataset": {"name": "ipsc", "source": "Bargaje et al. 2017 via TIGON", "time_unit": "index"}},
    )


def _read_h5ad(name: str):
    from importlib.resources import as_file

    import anndata as ad

    with as_file(files("sctraj.datasets").joinpath("_data", name)) as path:
        return ad.read_h5ad(path)


def klein_mesc():
    """Mouse embryonic stem cells after LIF withdrawal (Klein et al. 2015): raw UMI counts, days 0, 2, 4 and 7.

    1,000 cells (359 / 101 / 248 / 292 per day) x 900 genes. The one bundled time course that starts from counts, so
    it runs a whole scanpy pipeline (``normalize_total``, ``log1p``, ``highly_variable_genes``, ``pca``,
    ``neighbors``, ``umap``, ``leiden``) before :func:`sctraj.tl.fit_flow`; see the ``scanpy_pipeline`` tutorial.

    Returns
    -------
    AnnData with raw integer UMI counts (float32, sparse CSR) in ``X`` and ``layers["counts"]``, gene symbols as
    ``var_names``, ``obs["day"]`` (0, 2, 4, 7; float) and ``obs["time_index"]`` (0-3). No cell types.

    Notes
    -----
    Provenance: ``tmscc/data/klein/profile.txt`` and ``labels.txt`` of tarohi24/tmscc (commit 5e0f30fd; MIT), a
    900-gene subset chosen by that repository. Raw data: Klein, Mazutis, Akartuna et al., "Droplet barcoding for
    single-cell transcriptomics applied to embryonic stem cells", Cell 161 (2015), GEO GSE65525 (inDrops). The labels
    file stores the day itself (0, 2, 4, 7). Licence: MIT for the repository copy; check the original authors' terms
    before redistributing outside sctraj.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.klein_mesc()  # doctest: +SKIP
    """
    import anndata as ad
    import scipy.sparse as sp

    d = _load("klein_mesc.npz")
    X = sp.csr_matrix((d["data"].astype(np.float32), d["indices"], d["indptr"]), shape=tuple(d["shape"]))
    day = d["day"].astype(float)
    obs = pd.DataFrame({"day": day, "time_index": np.searchsorted(np.unique(day), day)}, index=d["cells"].astype(str))
    var = pd.DataFrame(index=d["genes"].astype(str))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    adata.uns["dataset"] = {"name": "klein_mesc", "source": "Klein et al. 2015 via tmscc", "time_unit": "day"}
    return adata


def reprogramming():
    """Fibroblast-to-iPSC reprogramming (Schiebinger et al. 2019), a 1,000-cell subset at days 10, 10.5 and 11.

    318 / 316 / 366 cells x 1,479 genes, log-normalised expression in ``X``, with cell types and moscot's own
    results for the same cells, a reference to compare sctraj's cell-type transitions with.

    Returns
    -------
    AnnData with ``obs["day"]`` (10.0, 10.5, 11.0), ``obs["cell_type"]`` (Stromal, Epithelial, Trophoblast, IPS,
    Neural, unknown), ``obs["batch"]``; ``uns`` holds moscot's transport maps ``tmap_10_105``, ``tmap_105_11``,
    ``tmap_10_11`` and cell-type transition tables ``cell_transition_10_105_forward`` / ``_backward``. No embedding:
    run ``sc.pp.pca`` first.

    Notes
    -----
    Provenance: ``tests/data/moscot_temporal_tests.h5ad`` of theislab/moscot (commit 0741c824; BSD-3-Clause), made
    by moscot's test suite from the WOT serum arm. Raw data: Schiebinger, Shu, Tabaka et al., Cell 176 (2019).

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.reprogramming()  # doctest: +SKIP
    """
    adata = _read_h5ad("reprogramming.h5ad")
    adata.uns["dataset"] = {"name": "reprogramming", "source": "Schiebinger et al. 2019 via moscot", "time_unit": "day"}
    return adata


def larry():
    """Lineage-traced hematopoiesis (LARRY; Weinreb et al. 2020), a 781-cell subset at days 2, 4 and 6 with clones.

    34 / 316 / 431 cells x 2,481 genes. Each cell carries a clonal barcode: 126 clones have cells at more than one
    day, so the fates a cell's sisters took at day 6 are observed, the ground truth for fate probabilities.

    Returns
    -------
    AnnData with normalised counts in ``X`` (each cell sums to 1e4), ``obs["day"]`` (2, 4, 6; float),
    ``obs["cell_type"]`` (undiff, Monocyte, Baso, Neutrophil, Mast, Meg, Erythroid and rarer types; also in the
    original ``obs["state_info"]``), ``obs["time_info"]`` (the original string day), ``obsm["X_clone"]`` (sparse cells x
    339 clone barcode matrix), ``obsm["X_pca"]`` (40-d), ``obsm["X_emb"]`` (2-d), ``obsm["X_umap"]``, and the kNN
    graph of the source file in ``obsp``.

    Notes
    -----
    Only 34 day-2 cells: use it to test fates against clonal truth, not to benchmark W1. Provenance:
    ``tests/data/test_adata_preprocessed.h5ad`` of AllonKleinLab/cospar (commit ca54cad8; MIT). Raw data: Weinreb,
    Rodriguez-Fraticelli, Camargo & Klein, "Lineage tracing on transcriptional landscapes links state to fate during
    differentiation", Science 367 (2020).

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.larry()  # doctest: +SKIP
    """
    adata = _read_h5ad("larry.h5ad")
    adata.obs["day"] = adata.obs["time_info"].astype(str).astype(float)
    adata.obs["cell_type"] = adata.obs["state_info"].astype("category")
    adata.uns["dataset"] = {"name": "larry", "source": "Weinreb et al. 2020 via CoSpar", "time_unit": "day"}
    return adata
