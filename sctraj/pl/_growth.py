"""Growth-aware fits: total mass over time and per-cell growth rates."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from . import _utils as U

GROWTH_HINT = "sctraj.tl.fit_flow(adata, time_key, method=<a growth-aware method such as 'vgfm'>, key_added={key!r})"


def _mass_record(adata, key: str) -> dict[str, np.ndarray]:
    rec = U.fit_record(adata, key, needed="mass", hint=GROWTH_HINT.format(key=key))
    m = rec["mass"]
    if not isinstance(m, Mapping) or not {"time", "predicted", "observed"} <= set(m):
        raise KeyError(
            f"adata.uns[{key!r}]['mass'] must hold 'time', 'predicted' and 'observed' (as written by growth-aware "
            f"methods). Re-run {GROWTH_HINT.format(key=key)}."
        )
    out = {k: np.asarray(m[k], float).ravel() for k in ("time", "predicted", "observed")}
    if "observed_time" in m:
        out["observed_time"] = np.asarray(m["observed_time"], float).ravel()
    elif len(out["observed"]) == len(out["time"]):
        out["observed_time"] = out["time"]
    else:  # observed at the fitted time points, predicted on a finer grid
        out["observed_time"] = np.asarray(rec["params"]["times"], float).ravel()
    if len(out["predicted"]) != len(out["time"]) or len(out["observed"]) != len(out["observed_time"]):
        raise ValueError(f"adata.uns[{key!r}]['mass'] has arrays of mismatched lengths.")
    return out


def _group_masses(adata, key: str, groupby: str, m: dict[str, np.ndarray]) -> pd.DataFrame:
    """Observed and predicted mass of each group at each fitted time point after the first."""
    from sklearn.neighbors import NearestNeighbors

    rec = U.fit_record(adata, key)
    use_rep = str(rec["params"]["use_rep"])
    n_dims = int(rec["params"]["n_dims"])
    time_key, t, fitted = U.fit_times(adata, key)
    tkey, gkey = f"{key}_trajectory", f"{key}_growth_rate"
    for need, slot in ((tkey, "obsm"), (gkey, "obs")):
        if need not in getattr(adata, slot):
            raise KeyError(f"adata.{slot}[{need!r}] was not found. Run {GROWTH_HINT.format(key=key)}.")
    labels = adata.obs[groupby].astype(str).to_numpy()
    X = np.asarray(adata.obsm[use_rep], float)[:, :n_dims]
    end = np.asarray(adata.obsm[tkey], float)[:, -1]
    g = adata.obs[gkey].to_numpy(float)
    ok = np.isfinite(m["observed"])
    o_ord = np.argsort(m["observed_time"][ok])
    obs_tot = np.interp(fitted, m["observed_time"][ok][o_ord], m["observed"][ok][o_ord])
    p_ord = np.argsort(m["time"])
    pred_tot = np.interp(fitted, m["time"][p_ord], m["predicted"][p_ord])
    rows = []
    for k, tv in enumerate(fitted):
        here = np.isclose(t, tv)
        share = pd.Series(labels[here]).value_counts(normalize=True)
        for grp, sh in share.items():
            rows.append({"time": tv, "group": grp, "kind": "observed", "mass": float(sh * obs_tot[k])})
        if k == 0:
            continue
        prev = np.isclose(t, fitted[k - 1]) & np.isfinite(end).all(1) & np.isfinite(g)
        if not prev.any() or not here.any():
            continue
        nn = NearestNeighbors(n_neighbors=1).fit(X[here])
        lab = labels[here][nn.kneighbors(end[prev], return_distance=False)[:, 0]]
        w = np.exp(g[prev] * (tv - fitted[k - 1]))
        w = w / w.sum() * pred_tot[k]
        for grp, val in pd.Series(w).groupby(lab).sum().items():
            rows.append({"time": tv, "group": grp, "kind": "predicted", "mass": float(val)})
    return pd.DataFrame(rows)


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def mass(
    adata,
    *,
    key: str = "sctraj",
    groupby: str | None = None,
    log: bool = False,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Predicted vs observed total cell mass over time (growth-aware methods).

    The line is the mass predicted by integrating the learned growth rates (``uns[key]["mass"]["predicted"]``), the
    dots the observed relative mass (e.g. cell counts or ``total_mass``) the model was fitted to, both relative to
    the first time point. With ``groupby``, one colour per group: dots are the observed mass of the group (its share
    of the cells times the observed total), crosses the predicted mass that lands in the group when the previous
    time point's cells are pushed forward (each predicted cell takes the label of its nearest observed cell and a
    weight ``exp(growth rate x interval)`` from its growth rate at the start, scaled to the predicted total).

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow` with a growth-aware method (``uns[key]["mass"]`` with ``"time"``,
        ``"predicted"`` and ``"observed"``).
    key
        ``key_added`` of the fit.
    groupby
        Categorical obs column (cell type, cluster) to split the mass by; colours from
        ``uns[f"{{groupby}}_colors"]`` (defaults are written there, as scanpy does).
    log
        Logarithmic mass axis. Otherwise the axis starts at zero, so that small fluctuations of a nearly constant
        mass are not drawn as growth.
    title
        Panel title.
    {show_save_ax}

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", method="vgfm", use_rep="X_emb", n_steps=200, progress=False)  # doctest: +SKIP
    >>> sctraj.pl.mass(adata)  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    U.check_common(show, return_fig, ax, save)
    m = _mass_record(adata, key)
    time_key, _, fitted = U.fit_times(adata, key)
    if groupby is not None and groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} is not a column of adata.obs.")
    palette = U.category_colors(adata, groupby) if groupby is not None else None
    df = _group_masses(adata, key, groupby, m) if groupby is not None else None

    fig, ax = U.new_axes(ax, figsize=(5.0, 3.6) if groupby is None else (6.2, 3.8))
    method = U.fit_record(adata, key)["params"]["method"]
    if groupby is None:
        order = np.argsort(m["time"])
        ax.plot(m["time"][order], m["predicted"][order], color="#1f77b4", lw=2, label=f"predicted ({method})")
        ok = np.isfinite(m["observed"])
        ax.scatter(m["observed_time"][ok], m["observed"][ok], color="k", s=30, zorder=3, label="observed")
        ax.legend(frameon=False, fontsize="small")
    else:
        for grp, col in palette.items():
            o = df[(df.group == grp) & (df.kind == "observed")].sort_values("time")
            p = df[(df.group == grp) & (df.kind == "predicted")].sort_values("time")
            if len(o):
                ax.plot(o.time, o.mass, "-o", color=col, ms=5, lw=1)
            if len(p):
                ax.scatter(p.time, p.mass, marker="x", color=col, s=40, zorder=3)
        handles = [Line2D([], [], color=c, marker="o", lw=1, label=g) for g, c in palette.items()
                   if (df.group == g).any()]
        handles += [Line2D([], [], ls="", marker="o", color="k", label="observed"),
                    Line2D([], [], ls="", marker="x", color="k", label=f"predicted ({method})")]
        ax.legend(handles=handles, frameon=False, fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  title=U.readable(groupby), title_fontsize="small")
    if log:
        ax.set_yscale("log")
    else:  # an honest axis: from zero, so that noise of a fraction of a percent does not look like growth
        ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    ax.set_xlabel(U.time_unit(adata, time_key))
    ax.set_ylabel(f"total mass\n(relative to {U.readable(time_key)} {U.fmt_time(fitted.min())})")
    ax.set_xticks(fitted)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title if title is not None else "cell mass over time", fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, name='mass', return_fig=return_fig)


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def growth(
    adata,
    *,
    key: str = "sctraj",
    basis: str | None = None,
    cmap=None,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
    **kwargs,
):
    """Per-cell growth rate on an embedding (red: expanding, blue: shrinking, white: steady).

    Reads ``obs[f"{{key}}_growth_rate"]`` (d log mass / dt at each cell's own time, per unit of the time column)
    written by :func:`sctraj.tl.fit_flow`; mass-conserving methods write 0 everywhere.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow`.
    key
        ``key_added`` of the fit.
    basis
        Embedding to draw on; default ``"umap"`` if present, else the fitted representation.
    cmap
        Diverging colormap centred on 0; by default blue - light grey - red, so that cells with no growth stay
        visible on a white background.
    title
        Panel title.
    {show_save_ax}
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``size``, ``vmin``, ``vmax``, ...).

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", method="vgfm", use_rep="X_emb", n_steps=200, progress=False)  # doctest: +SKIP
    >>> sctraj.pl.growth(adata, basis="emb")  # doctest: +SKIP
    """
    import scanpy as sc

    from .._settings import logger

    U.check_common(show, return_fig, ax, save)
    gkey = f"{key}_growth_rate"
    rec = U.fit_record(adata, key)
    if gkey not in adata.obs:
        raise KeyError(f"adata.obs[{gkey!r}] was not found. Run {GROWTH_HINT.format(key=key)} first.")
    use_rep = str(rec["params"]["use_rep"])
    time_key = str(rec["params"]["time_key"])
    bkey = U.basis_key(adata, basis if basis is not None else ("X_umap" if "X_umap" in adata.obsm else use_rep))
    vals = adata.obs[gkey].to_numpy(float)
    method = rec["params"]["method"]
    conserving = bool(np.nanmax(np.abs(vals)) == 0)
    if conserving:
        logger.warning(f"growth: method {method!r} conserves mass; every growth rate is 0.")
    if cmap is None:
        from matplotlib.colors import LinearSegmentedColormap

        cmap = LinearSegmentedColormap.from_list(
            "sctraj_growth", ["#2166ac", "#92c5de", "#d0d0d0", "#f4a582", "#b2182b"])
    fig, ax = U.new_axes(ax, figsize=(5.0, 4.0))
    lim = float(np.nanpercentile(np.abs(vals), 99)) or 1.0
    kw = {"frameon": False, "show": False, "ax": ax, "cmap": cmap, "vmin": -lim, "vmax": lim,
          "colorbar_loc": "right"}
    kw.update(kwargs)
    before = set(fig.axes)
    with U.quiet_scanpy():
        sc.pl.embedding(adata, basis=bkey, color=gkey, **kw)
    for cax in set(fig.axes) - before:
        cax.set_ylabel(f"growth rate, d log(mass)/dt ({U.rate_unit(adata, time_key)})", fontsize="small")
    if title is None:
        title = f"growth rate ({method}" + (": conserves mass, 0 everywhere)" if conserving else ")")
    ax.set_title(title, fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, name='growth', return_fig=return_fig)
