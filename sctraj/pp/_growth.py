"""Prior growth rates from proliferation and apoptosis gene scores (the WOT / moscot birth-death model)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np

from .._validation import check_adata

ORGANISMS = ("mouse", "human")


def gene_set(organism: str, kind: str) -> list[str]:
    """A bundled gene list: ``kind`` is ``"proliferation"`` or ``"apoptosis"``, ``organism`` ``"mouse"`` or ``"human"``."""
    if organism not in ORGANISMS:
        raise ValueError(f"organism must be one of {ORGANISMS}, got {organism!r}; or pass your own gene lists.")
    text = resources.files("sctraj.datasets").joinpath("_data", f"{organism}_{kind}.txt").read_text()
    return [g.strip() for g in text.splitlines() if g.strip()]


def _logistic(x, lo: float, hi: float, center: float, width: float):
    return lo + (hi - lo) / (1.0 + np.exp(-4.0 / width * (x - center)))


def _match(genes: Sequence[str], var_names, what: str) -> list[str]:
    lookup = {}
    for v in map(str, var_names):
        lookup.setdefault(v.upper(), v)
    hits = list(dict.fromkeys(lookup[g.upper()] for g in genes if g.upper() in lookup))
    if not hits:
        raise ValueError(
            f"None of the {len(genes)} {what} genes is in adata.var_names (e.g. {list(genes)[:3]}). Use gene symbols as "
            "var_names (adata.var_names = adata.var['gene_symbols']), choose the right organism, or pass your own list."
        )
    return hits


def score_growth(
    adata,
    *,
    organism: str = "mouse",
    proliferation_genes: Sequence[str] | None = None,
    apoptosis_genes: Sequence[str] | None = None,
    key_added: str = "growth",
    use_raw: bool | None = None,
    layer: str | None = None,
    birth: tuple[float, float, float, float] = (0.3, 1.7, 0.25, 0.5),
    death: tuple[float, float, float, float] = (0.3, 1.7, 0.1, 0.2),
    random_state: int = 0,
    copy: bool = False,
):
    """Score proliferation and apoptosis genes and turn them into a prior growth rate per cell.

    The scores are :func:`scanpy.tl.score_genes` (mean expression of the set minus a matched control set). As in
    Waddington-OT (Schiebinger et al. 2019) and moscot (Klein et al. 2025), a birth rate ``beta`` and a death rate
    ``delta`` are smooth logistic functions of the scores, and the growth rate is ``beta - delta`` (per unit of time,
    in the units the rate bounds are chosen for; WOT uses days). The weight ``exp(beta - delta)`` is a positive growth
    prior for ``fit_flow(..., method="vgfm", weight_key=f"{key_added}_weight")``.

    The bundled gene lists (mouse and human proliferation / apoptosis) are those shipped with moscot 0.5.2
    (``moscot/utils/_data``), copyright (c) theislab, BSD-3-Clause licence.

    Parameters
    ----------
    adata
        Annotated data matrix with log-normalised expression and gene symbols as ``var_names``.
    organism
        ``"mouse"`` or ``"human"``: which bundled lists to use when no list is passed.
    proliferation_genes, apoptosis_genes
        Own gene lists (override the bundled ones). Genes absent from ``adata`` are ignored (matching is
        case-insensitive); at least one of each list must be present.
    key_added
        Prefix of the obs columns written.
    use_raw, layer
        Expression to score, as in :func:`scanpy.tl.score_genes`.
    birth, death
        ``(min, max, center, width)`` of the logistic birth and death rates as functions of the proliferation and
        apoptosis scores (WOT / moscot defaults).
    random_state
        Seed of the control-gene draw.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else an :class:`~anndata.AnnData`. Sets:

    `adata.obs[f"{key_added}_proliferation"]`, `adata.obs[f"{key_added}_apoptosis"]`
        Gene-set scores.
    `adata.obs[f"{key_added}_rate"]`
        Prior growth rate ``beta - delta``.
    `adata.obs[f"{key_added}_weight"]`
        ``exp(rate)``: positive prior for VGFM's ``weight_key``.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.klein_mesc()  # raw counts, mouse genes  # doctest: +SKIP
    >>> sctraj.pp.score_growth(adata, organism="mouse")  # doctest: +SKIP
    >>> sctraj.tl.fit_flow(adata, "day", method="vgfm", weight_key="growth_weight")  # doctest: +SKIP
    """
    import scanpy as sc

    check_adata(adata)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    for name, par in (("birth", birth), ("death", death)):
        if len(par) != 4 or not np.all(np.isfinite(par)) or par[3] <= 0 or par[0] > par[1]:
            raise ValueError(f"{name} must be (min, max, center, width) with min <= max and width > 0, got {par!r}.")
    prolif = gene_set(organism, "proliferation") if proliferation_genes is None else list(proliferation_genes)
    apopt = gene_set(organism, "apoptosis") if apoptosis_genes is None else list(apoptosis_genes)
    var_names = adata.raw.var_names if (use_raw and adata.raw is not None) else adata.var_names
    if not var_names.is_unique:
        dup = var_names[var_names.duplicated()].unique().tolist()
        raise ValueError(
            f"adata{'.raw' if use_raw and adata.raw is not None else ''}.var_names has duplicate names "
            f"({dup[:5]}{', ...' if len(dup) > 5 else ''}), so gene scores would be ambiguous. Make them unique "
            "first: adata.var_names_make_unique()."
        )
    prolif = _match(prolif, var_names, "proliferation")
    apopt = _match(apopt, var_names, "apoptosis")

    # score on a lightweight view-free copy so nothing is written to adata if anything fails
    import anndata as ad

    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not in adata.layers (keys: {list(adata.layers.keys())}).")
    if use_raw and adata.raw is not None:
        work = ad.AnnData(X=adata.raw.X, obs=adata.obs[[]].copy(), var=adata.raw.var[[]].copy())
    else:
        work = ad.AnnData(X=adata.X, obs=adata.obs[[]].copy(), var=adata.var[[]].copy(),
                          layers={layer: adata.layers[layer]} if layer is not None else None)
    kw = {"ctrl_size": min(50, max(1, work.n_vars - max(len(prolif), len(apopt)))), "random_state": random_state,
          "use_raw": False, "layer": layer if not use_raw else None}
    sc.tl.score_genes(work, prolif, score_name="p", **kw)
    sc.tl.score_genes(work, apopt, score_name="a", **kw)
    p = work.obs["p"].to_numpy(float)
    a = work.obs["a"].to_numpy(float)
    rate = _logistic(p, *birth) - _logistic(a, *death)

    adata = adata.copy() if copy else adata
    adata.obs[f"{key_added}_proliferation"] = p
    adata.obs[f"{key_added}_apoptosis"] = a
    adata.obs[f"{key_added}_rate"] = rate
    adata.obs[f"{key_added}_weight"] = np.exp(rate)
    return adata if copy else None
