"""The AnnData returned by ``predict`` / ``interpolate``: laid out like the input so that it joins it.

* ``var`` is the input's, and ``X`` holds the expression of each predicted cell's nearest observed cell (in the fitted
  dims of ``use_rep``): a kNN read-out, not a generated expression profile (``obs["nearest_cell"]`` names the cell).
* ``obs[time_key]`` (the fit's time column, same dtype or categories) is the predicted time; ``obs[f"{key}_source"]``
  is ``"predicted"``; ``source_cell`` / ``source_time`` / ``weight`` say where each cell came from and its mass.
* ``obsm[use_rep]`` holds the pushed positions (fitted dims; any further dims of ``use_rep`` are the nearest observed
  cell's, so ``pred.obsm[use_rep][:, :n_dims]`` is the prediction); every other
  2- or 3-column ``X_*`` embedding of the input (UMAP, t-SNE, force layouts) is given at the distance-weighted mean position
  of the 15 nearest observed cells, as ``sctraj.pl`` places predictions.
* ``uns[key_added]`` carries the fit record and the model, so ``predict`` runs again on the result.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

DOC_RESULT = """\
It has the input's ``var``, and ``X`` (same type) holds the expression of each predicted cell's
    nearest observed cell in the fitted representation (a kNN read-out, named in ``obs["nearest_cell"]``), so
    ``ad.concat({"observed": adata, "predicted": pred}, label="sctraj_source")`` joins them. ``obs[time_key]`` (the
    fit's time column, same dtype) is the predicted time; ``obs[f"{key_added}_source"]`` is ``"predicted"``;
    ``obs["source_cell"]``, ``obs["source_time"]`` and ``obs["weight"]`` (mass relative to one source cell; 1 for
    mass-conserving methods) say where each cell came from; the source cells' other ``obs`` columns are kept
    (except the fit's growth rate). ``obsm[use_rep]`` holds the pushed positions in its first ``n_dims`` columns
    (further columns, if the fit used fewer, are the nearest cell's); other 2-3 column ``X_*`` embeddings (e.g.
    ``X_umap``) hold the mean position of the 15 nearest observed cells. ``uns[key_added]`` holds the model, so the
    result can be passed to ``predict`` again."""


def fill_result_doc(fn):
    fn.__doc__ = fn.__doc__.format(result=DOC_RESULT)
    return fn


def time_column(col: pd.Series, t: float, n: int):
    """``n`` copies of time ``t`` in the dtype of the observed time column ``col`` (categories extended)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = list(col.cat.categories)
        num = pd.to_numeric(pd.Series(cats, dtype=object), errors="coerce").to_numpy(float)
        hit = np.flatnonzero(np.isclose(num, t))
        if len(hit):
            label = cats[hit[0]]
        elif pd.api.types.is_numeric_dtype(col.cat.categories.dtype):
            label = int(t) if pd.api.types.is_integer_dtype(col.cat.categories.dtype) and float(t).is_integer() \
                else float(t)
        else:
            label = f"{t:g}"
        new = sorted(set(cats) | {label}, key=lambda c: float(c))
        return pd.Categorical([label] * n, categories=new)
    if pd.api.types.is_numeric_dtype(col.dtype):
        return np.full(n, float(t))
    return np.full(n, f"{t:g}", dtype=object)


def _neighbours(adata, model, points: np.ndarray, k: int = 15):
    from sklearn.neighbors import NearestNeighbors

    from .._validation import get_rep

    ref = get_rep(adata, model.use_rep, model.dim, dtype=None)
    k = min(k, len(ref))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(points)
    return dist, idx


def predicted_anndata(adata, model, order: np.ndarray, X_pred: np.ndarray, weight: np.ndarray, src: float,
                      tgt: float, key_added: str):
    """Assemble the result of ``predict``: rows are the source cells ``order`` of ``adata`` pushed to ``tgt``."""
    import anndata as ad
    import scipy.sparse as sp

    from ._store import model_record
    from ._utils import h5ad_safe

    n = len(order)
    dist, idx = _neighbours(adata, model, X_pred)
    from .._keys import growth_key

    obs = adata.obs.iloc[order].copy()
    obs = obs.drop(columns=[growth_key(key_added)], errors="ignore")  # the source cell's rate, stale at tgt
    names = obs.index.astype(str)
    obs.index = pd.Index([f"{c}_to_{tgt:g}" for c in names])
    obs[model.time_key] = time_column(adata.obs[model.time_key], tgt, n)
    obs[f"{key_added}_source"] = pd.Categorical(["predicted"] * n, categories=["observed", "predicted"])
    obs["source_cell"] = np.asarray(names, dtype=object)
    obs["source_time"] = float(src)
    obs["weight"] = np.asarray(weight, np.float64)
    obs["nearest_cell"] = np.asarray(adata.obs_names[idx[:, 0]], dtype=object)

    X = None
    if adata.X is not None:
        X = adata.X[idx[:, 0]]
        X = X.copy() if sp.issparse(X) else np.array(X)
    obsm = {}
    if model.use_rep != "X":  # pushed positions; dims beyond the fitted n_dims from the nearest observed cell
        pos = np.asarray(adata.obsm[model.use_rep])[idx[:, 0]]
        pos = np.array(pos, np.result_type(X_pred.dtype, np.float32))  # float64 embeddings keep their precision
        pos[:, : model.dim] = X_pred
        obsm[model.use_rep] = pos
    w = 1.0 / np.maximum(dist, 1e-12)
    w /= w.sum(1, keepdims=True)
    for key, emb in adata.obsm.items():
        if key == model.use_rep or not key.startswith("X_") or not isinstance(emb, np.ndarray) or emb.ndim != 2 \
                or emb.shape[1] > 3:
            continue
        obsm[key] = np.einsum("nk,nkc->nc", w, np.asarray(emb, np.float64)[idx]).astype(emb.dtype, copy=False)
    if model.use_rep == "X":  # positions are the expression itself
        X = np.array(X.toarray() if sp.issparse(X) else X, np.result_type(X_pred.dtype, np.float32))
        X[:, : model.dim] = X_pred
    record = {
        "params": {**model.setup, "config": model.method.config.to_dict()},
        "history": {k: np.asarray(v, np.float32) for k, v in model.history.items()},
        "model": model_record(model),
    }
    out = ad.AnnData(X=X, obs=obs, var=adata.var.copy(), obsm=obsm, uns={key_added: h5ad_safe(record)})
    # keep the colours of categorical annotations (scanpy's uns[f"{col}_colors"])
    for col in obs.columns:
        c = f"{col}_colors"
        if c in adata.uns and isinstance(obs[col].dtype, pd.CategoricalDtype):
            out.uns[c] = adata.uns[c]
    if isinstance(adata.uns.get("dataset"), Mapping):
        out.uns["dataset"] = adata.uns["dataset"]
    return out
