"""Cell paths over an embedding, and predicted vs observed cells per time point."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _utils as U


def _default_basis(adata, use_rep: str) -> str:
    for b in ("X_umap", use_rep):
        if b in adata.obsm:
            return b
    return use_rep


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def trajectories(
    adata,
    *,
    key: str = "sctraj",
    basis: str | None = None,
    color: str | None = None,
    n_paths: int = 300,
    cmap: str = "viridis",
    linewidth: float = 0.8,
    alpha: float = 0.8,
    random_state: int = 0,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
    **kwargs,
):
    """Paths of individual cells over an embedding, coloured by time.

    Each drawn path starts at an observed cell and follows the learned flow to the next fitted time point
    (``obsm[f"{{key}}_trajectory"]``, written by :func:`sctraj.tl.fit_flow`); the colour along the path is the time,
    on the same scale as the colour bar. A dot marks where each path starts.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow`.
    key
        ``key_added`` of the fit.
    basis
        Embedding to draw on. Default: ``"umap"`` if present, else the fitted representation (first two
        dimensions). Paths live in the fitted representation; on another basis each point is placed at the weighted
        mean position of its nearest observed cells.
    color
        obs column or gene for the background cells (:func:`scanpy.pl.embedding`); light grey when ``None``.
        Categorical columns (and numeric ones with a few values, such as time points) get a legend.
    n_paths
        Number of paths drawn (a random subset of the cells that have one).
    cmap
        Colormap of time.
    linewidth, alpha
        Look of the paths.
    random_state
        Seed of the subset.
    title
        Panel title.
    {show_save_ax}
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", use_rep="X_emb", n_steps=200, progress=False)
    >>> sctraj.pl.trajectories(adata, basis="emb", n_paths=100, show=False)  # doctest: +ELLIPSIS
    <Axes: ...>
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    U.check_common(show, return_fig, ax, save)
    rec, tkey = U.trajectory_record(adata, key)
    if isinstance(n_paths, bool) or not isinstance(n_paths, int) or n_paths < 1:
        raise ValueError(f"n_paths must be a positive integer, got {n_paths!r}.")
    use_rep = str(rec["params"]["use_rep"])
    bkey = U.basis_key(adata, basis if basis is not None else _default_basis(adata, use_rep))
    time_key, t, times = U.fit_times(adata, key)
    T = np.asarray(adata.obsm[tkey], float)
    frac = np.asarray(rec["trajectory"]["fractions"], float)
    has = np.isfinite(T).all((1, 2))
    if not has.any():
        raise ValueError(f"adata.obsm[{tkey!r}] holds no finite paths (all cells at the last time point?).")
    # stratified subset: the same share of every time point's cells
    rng = np.random.default_rng(random_state)
    cand = np.flatnonzero(has)
    pick = cand if len(cand) <= n_paths else np.sort(rng.choice(cand, n_paths, replace=False))
    nxt = np.array([times[times > tv + 1e-12][0] for tv in t[pick]])
    tt = t[pick, None] + frac[None] * (nxt - t[pick])[:, None]  # time at each path point
    P = U.to_basis(adata, T[pick], use_rep=use_rep, basis=bkey)

    fig, ax = U.new_axes(ax, figsize=(5.2, 4.6))
    before_axes = list(fig.axes)
    U.embedding(adata, bkey, color, ax, **{"alpha": 0.5, **kwargs})
    _, norm = U.time_colors(times, cmap)
    segs = np.stack([P[:, :-1], P[:, 1:]], axis=2).reshape(-1, 2, 2)
    tmid = (0.5 * (tt[:, :-1] + tt[:, 1:])).ravel()
    lc = LineCollection(segs, cmap=cmap, norm=norm, linewidths=linewidth, alpha=alpha, zorder=3)
    lc.set_array(tmid)
    ax.add_collection(lc)
    ax.scatter(P[:, 0, 0], P[:, 0, 1], s=6, c=tt[:, 0], cmap=cmap, norm=norm, zorder=4, edgecolors="none")
    ax.scatter(P[:, -1, 0], P[:, -1, 1], s=10, marker=">", c=tt[:, -1], cmap=cmap, norm=norm, zorder=4,
               edgecolors="none")
    # time colour bar below the panel, so the right margin stays free for the legend of ``color``
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, location="bottom", shrink=0.6, pad=0.02,
                      aspect=30)
    cb.set_label(f"time along the path: {U.time_unit(adata, time_key)}", fontsize="small")
    cb.set_ticks(times)
    cb.set_ticklabels([U.fmt_time(x) for x in times])
    cb.ax.tick_params(labelsize="small")
    from matplotlib.lines import Line2D

    key = [Line2D([], [], ls="", marker="o", ms=4, color="#555555", label="path start: observed cell"),
           Line2D([], [], ls="", marker=">", ms=5, color="#555555", label="path end: next time point")]
    color_legend = ax.get_legend()  # scanpy's legend of a categorical ``color``: merged with the marker key
    if color_legend is not None:
        handles = list(color_legend.legend_handles) + key
        labels = [t.get_text() for t in color_legend.get_texts()] + [h.get_label() for h in key]
        ax.legend(handles=handles, labels=labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                  fontsize="small", title=U.readable(color), title_fontsize="small")
    elif len(fig.axes) > len(before_axes) + 1:  # scanpy added a colour bar for a continuous ``color``
        ax.legend(handles=key, loc="lower left", frameon=False, fontsize="x-small")
    else:
        ax.legend(handles=key, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="x-small")
    if title is None:
        title = f"{len(pick)} cell paths ({rec['params']['method']})"
    ax.set_title(title, fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, name='trajectories', return_fig=return_fig)


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def marginals(
    adata,
    *,
    key: str = "sctraj",
    predicted=None,
    basis: str | None = None,
    times=None,
    n_cells: int = 2000,
    size: float | None = None,
    random_state: int = 0,
    ncols: int = 4,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Predicted vs observed cells at each time point.

    One panel per target time point: the observed cells of that time (grey) and the cells predicted there by
    pushing the previous time point's cells through the learned flow (red), on a 2-d view of the fitted
    representation. Where the red cells cover the grey ones, the model reproduces the snapshot.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow`.
    key
        ``key_added`` of the fit.
    predicted
        Optional AnnData returned by :func:`sctraj.tl.predict` or :func:`sctraj.tl.interpolate` (``obs[time_key]``,
        ``obsm[use_rep]``, ``obs["weight"]``). When ``adata`` joins observed and predicted cells
        (``ad.concat({{"observed": adata, "predicted": pred}}, label="sctraj_source", uns_merge="first")``), the
        cells with ``obs[f"{{key}}_source"] == "predicted"`` are used. Otherwise the endpoints of ``obsm[f"{{key}}_trajectory"]`` are used
        (every cell pushed to the next fitted time point). With weights (growth-aware methods), point size follows
        each predicted cell's mass.
    basis
        2-d view; default: the first two dimensions of the fitted representation (predicted cells are not snapped
        onto other embeddings, which would hide errors). Another basis places predictions at the mean position of
        their nearest observed cells.
    times
        Target time points to show (default: all that have a prediction).
    n_cells
        At most this many cells drawn per set and panel.
    size
        Point size (automatic by default).
    random_state
        Seed of the subsampling.
    ncols
        Panels per row.
    {show_save_ax}
        ``ax`` needs exactly one panel (pass ``times=[t]``).

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import anndata as ad
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", use_rep="X_emb", n_steps=200, progress=False)
    >>> sctraj.pl.marginals(adata, show=False)  # every cell pushed to the next day  # doctest: +SKIP
    >>> pred = sctraj.tl.predict(adata, source_time=2, target_time=4)
    >>> both = ad.concat({{"observed": adata, "predicted": pred}}, label="sctraj_source", uns_merge="first")
    >>> sctraj.pl.marginals(both, show=False)  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    U.check_common(show, return_fig, ax, save)
    rec = U.fit_record(adata, key)
    src_col = f"{key}_source"
    if predicted is None and src_col in adata.obs and (adata.obs[src_col] == "predicted").any():
        is_pred = (adata.obs[src_col] == "predicted").to_numpy()  # observed + predicted joined with ad.concat
        adata, predicted = adata[~is_pred], adata[is_pred]
    use_rep = str(rec["params"]["use_rep"])
    time_key, t, fitted = U.fit_times(adata, key)
    bkey = U.basis_key(adata, basis if basis is not None else use_rep)
    n_dims = int(rec["params"].get("n_dims", 2))
    rng = np.random.default_rng(random_state)

    # predictions per target time: (points in use_rep, weights or None, source time)
    preds: dict[float, tuple[np.ndarray, np.ndarray | None, float]] = {}
    if predicted is None:
        tkey = f"{key}_trajectory"
        if tkey not in adata.obsm:
            raise KeyError(
                f"adata.obsm[{tkey!r}] was not found. Run sctraj.tl.fit_flow(adata, time_key, key_added={key!r}) "
                "with trajectory_n_grid >= 2, or pass predicted=sctraj.tl.predict(...)."
            )
        end = np.asarray(adata.obsm[tkey], float)[:, -1]
        for k in range(len(fitted) - 1):
            m = np.isclose(t, fitted[k]) & np.isfinite(end).all(1)
            if m.any():
                preds[float(fitted[k + 1])] = (end[m], None, float(fitted[k]))
    else:
        from anndata import AnnData

        pkey = time_key if isinstance(predicted, AnnData) and time_key in predicted.obs else "time"
        if not isinstance(predicted, AnnData) or pkey not in predicted.obs or use_rep not in predicted.obsm:
            raise ValueError(
                f"predicted must be the AnnData returned by sctraj.tl.predict / interpolate, with "
                f"obs[{time_key!r}] and obsm[{use_rep!r}]."
            )
        pt = pd.to_numeric(pd.Series(np.asarray(predicted.obs[pkey])), errors="coerce").to_numpy(float)
        src = predicted.obs["source_time"].to_numpy(float) if "source_time" in predicted.obs else np.full_like(pt, np.nan)
        w = predicted.obs["weight"].to_numpy(float) if "weight" in predicted.obs else None
        for tv in np.unique(pt):
            m = pt == tv
            preds[float(tv)] = (np.asarray(predicted.obsm[use_rep], float)[m], None if w is None else w[m],
                                float(np.nanmin(src[m])) if np.isfinite(src[m]).any() else np.nan)
    if times is not None:
        want = [float(x) for x in np.atleast_1d(times)]
        miss = [x for x in want if not any(np.isclose(x, p) for p in preds)]
        if miss:
            raise ValueError(f"No predicted cells at time(s) {miss}; available: {sorted(preds)}.")
        preds = {p: v for p, v in preds.items() if any(np.isclose(p, x) for x in want)}
    if not preds:
        raise ValueError("Nothing to draw: no predicted cells.")
    if ax is not None and len(preds) != 1:
        raise ValueError(f"ax= draws one panel, but there are {len(preds)} time points; pass times=[t] as well.")

    n = len(preds)
    fig, axs = U.panel_grid(n, ncols, (3.6, 3.4), ax)
    pred_color = "#d6604d"
    view = np.asarray(adata.obsm[bkey], float)[:, :2]
    s = size if size is not None else max(2.0, 60000 / max(adata.n_obs, 1) ** 1.0 * 0.15)
    for a, (tv, (pts, w, src)) in zip(axs, sorted(preds.items()), strict=True):
        obs_m = np.isclose(t, tv)
        O = view[obs_m]
        if len(O) > n_cells:
            O = O[rng.choice(len(O), n_cells, replace=False)]
        P = U.to_basis(adata, pts[:, :n_dims], use_rep=use_rep, basis=bkey)
        ww = None if w is None else np.asarray(w, float)
        if len(P) > n_cells:
            sel = rng.choice(len(P), n_cells, replace=False)
            P, ww = P[sel], None if ww is None else ww[sel]
        a.scatter(view[:, 0], view[:, 1], s=s * 0.5, c="#f0f0f0", edgecolors="none", rasterized=True)
        a.scatter(O[:, 0], O[:, 1], s=s, c="#8c8c8c", edgecolors="none", alpha=0.6, rasterized=True)
        sz = s if ww is None or np.allclose(ww, ww.mean()) else s * ww / ww.mean()
        a.scatter(P[:, 0], P[:, 1], s=sz, color=pred_color, edgecolors="none", alpha=0.6, rasterized=True)
        src_txt = f" from {time_key} {U.fmt_time(src)}" if np.isfinite(src) else ""
        held = any(np.isclose(tv, x) for x in np.asarray(rec["params"].get("excluded_times", []), float))
        a.set_title(f"{time_key} {U.fmt_time(tv)}" + (" (held out)" if held else ""), fontsize="medium")
        a.legend(
            handles=[
                Line2D([], [], ls="", marker="o", color="#8c8c8c", label=f"observed ({obs_m.sum()} cells)"),
                Line2D([], [], ls="", marker="o", color=pred_color, label=f"predicted{src_txt}"),
            ],
            loc="best", fontsize="x-small", frameon=False, markerscale=1.5,
        )
        bn = U.basis_name(bkey)
        a.set_xlabel(f"{bn} 1")
        a.set_ylabel(f"{bn} 2")
        a.set_xticks([])
        a.set_yticks([])
    return U.finish(fig, axs if len(axs) > 1 else axs[0], show=show, save=save, name='marginals', return_fig=return_fig)
