"""Fates: fate probabilities on an embedding (one panel per fate) and the cell-type transition heatmap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import _utils as U

FATE_HINT = "sctraj.tl.fate_probabilities(adata, model, groupby, key_added={key!r})"


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def fate_probabilities(
    adata,
    *,
    key: str = "sctraj",
    basis: str = "umap",
    fates: str | Sequence[str] | None = None,
    ncols: int = 4,
    cmap: str = "viridis",
    size: float | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Fate probabilities on an embedding, one panel per fate (scanpy-style).

    Each panel colours the earlier cells by their probability of the fate (for growth-aware methods: the share of
    their progeny in it); the cells of that type observed at the target time are outlined in the fate's colour and
    the other target-time cells drawn in light grey.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fate_probabilities` (``obsm[f"{{key}}_fate_probabilities"]``).
    key
        ``key_added`` of :func:`sctraj.tl.fate_probabilities`.
    basis
        Embedding to draw on (``"umap"`` -> ``obsm["X_umap"]``; any obsm key).
    fates
        Fate(s) to draw; all by default.
    ncols
        Panels per row.
    cmap
        Colormap of the probabilities (0 to 1).
    size
        Point size; scanpy's default for the number of cells when ``None``.
    {show_save_ax}

    Returns
    -------
    {returns}
    """

    U.check_common(show, return_fig, ax, save)
    fkey = f"{key}_fate_probabilities"
    if fkey not in adata.obsm:
        raise KeyError(f"adata.obsm[{fkey!r}] was not found. Run {FATE_HINT.format(key=key)} first.")
    df = adata.obsm[fkey]
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"adata.obsm[{fkey!r}] must be the DataFrame written by {FATE_HINT.format(key=key)}.")
    all_fates = [str(c) for c in df.columns]
    if fates is None:
        chosen = all_fates
    else:
        chosen = [fates] if isinstance(fates, str) else [str(f) for f in fates]
        miss = [f for f in chosen if f not in all_fates]
        if miss or not chosen:
            raise ValueError(f"fates {miss or chosen} are not among the computed fates {all_fates}.")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
    if ax is not None and len(chosen) != 1:
        raise ValueError(f"ax= draws one panel, but there are {len(chosen)} fates; pass fates='<one fate>' as well.")
    bkey = U.basis_key(adata, basis)
    settings = adata.uns.get(key, {}).get("fate_probabilities", {}) if isinstance(adata.uns.get(key), Mapping) else {}
    groupby = settings.get("groupby")
    view = np.asarray(adata.obsm[bkey], float)[:, :2]
    P = df.to_numpy(float)
    has = np.isfinite(P).all(1)
    target = None
    if groupby is not None and groupby in adata.obs and "target_time" in settings:
        time_key = None
        rec = adata.uns.get(key, {})
        if isinstance(rec, Mapping) and isinstance(rec.get("params"), Mapping):
            time_key = rec["params"].get("time_key")
        if time_key is not None and time_key in adata.obs:
            t = pd.to_numeric(pd.Series(np.asarray(adata.obs[time_key])), errors="coerce").to_numpy(float)
            target = np.isclose(t, float(settings["target_time"]))
    labels = adata.obs[groupby].astype(str).to_numpy() if target is not None else None
    colors = U.category_colors(adata, groupby) if target is not None and isinstance(
        adata.obs[groupby].dtype, pd.CategoricalDtype) else {}

    n = len(chosen)
    fig, axs = U.panel_grid(n, ncols, (3.4, 3.2), ax, extra_width=0.6)
    s = size if size is not None else 120000 / max(adata.n_obs, 1)
    s = float(np.clip(s, 1.0, 40.0))
    sc_art = None
    for a, fate in zip(axs, chosen, strict=True):
        j = all_fates.index(fate)
        a.scatter(view[:, 0], view[:, 1], s=s * 0.6, c="#e6e6e6", edgecolors="none", rasterized=True)
        if target is not None:
            hit = target & (labels == fate)
            a.scatter(view[hit, 0], view[hit, 1], s=s * 1.2, c=colors.get(fate, "#444444"), edgecolors="none",
                      rasterized=True, label=f"{fate} (observed)")
        order = np.flatnonzero(has)[np.argsort(P[has, j])]
        sc_art = a.scatter(view[order, 0], view[order, 1], s=s, c=P[order, j], cmap=cmap, vmin=0, vmax=1,
                           edgecolors="none", rasterized=True)
        a.set_title(fate, fontsize="medium")
        a.set_xticks([])
        a.set_yticks([])
        bn = U.basis_name(bkey)
        a.set_xlabel(f"{bn} 1", fontsize="small")
        a.set_ylabel(f"{bn} 2", fontsize="small")
        for sp_ in a.spines.values():
            sp_.set_visible(False)
        if target is not None:
            a.legend(loc="best", fontsize="x-small", frameon=False, markerscale=1.5)
    if sc_art is not None:
        growth = bool(settings.get("growth_weighted", False))
        cb = fig.colorbar(sc_art, ax=axs, shrink=0.8)
        cb.set_label("share of progeny" if growth else "fate probability", fontsize="small")
    return U.finish(fig, axs if len(axs) > 1 else axs[0], show=show, save=save, return_fig=return_fig,
                    name='fate_probabilities')


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def cell_transition(
    table: pd.DataFrame,
    *,
    fmt: str = ".2f",
    cmap: str = "Blues",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Heatmap of a cell-type transition table with the values written in the cells.

    Parameters
    ----------
    table
        The :class:`pandas.DataFrame` returned by :func:`sctraj.tl.cell_transition` (or moscot's
        ``cell_transition``): rows are source types, columns target types.
    fmt
        Format of the printed values (``""`` prints none).
    cmap
        Colormap (0 to the table's maximum).
    title
        Panel title.
    {show_save_ax}

    Returns
    -------
    {returns}
    """
    U.check_common(show, return_fig, ax, save)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"table must be the DataFrame returned by sctraj.tl.cell_transition, got {type(table).__name__}."
        )
    vals = table.to_numpy(dtype=float)
    if vals.size == 0:
        raise ValueError("The transition table is empty.")
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a format string such as '.2f', got {fmt!r}.")
    nr, nc = vals.shape
    fig, ax = U.new_axes(ax, figsize=(0.55 * nc + 2.6, 0.45 * nr + 1.6))
    vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=0, vmax=vmax or 1.0, aspect="auto")
    ax.set_xticks(range(nc))
    ax.set_xticklabels([str(c) for c in table.columns], rotation=90, fontsize="small")
    ax.set_yticks(range(nr))
    ax.set_yticklabels([str(r) for r in table.index], fontsize="small")
    ax.set_xlabel(str(table.columns.name or "target"))
    ax.set_ylabel(str(table.index.name or "source"))
    if fmt:
        for i in range(nr):
            for j in range(nc):
                v = vals[i, j]
                if np.isfinite(v):
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize="x-small",
                            color="white" if v > 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, shrink=0.8).set_label("share", fontsize="small")
    if title is not None:
        ax.set_title(title, fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, return_fig=return_fig,
                    name='cell_transition')
