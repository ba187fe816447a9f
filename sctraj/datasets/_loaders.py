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
    """
    d = _load("ipsc.npz")
    ti = d["t"].astype(int)
    return _adata(
        d["X"],
        {"time": ti.astype(float)},
        {"X_emb": d["X"].copy()},
        {"dataset": {"name": "ipsc", "source": "Bargaje et al. 2017 via TIGON", "time_unit": "index"}},
    )
