"""Shared plumbing of the plotting functions: keys, the scanpy return contract, colours, basis mapping.

Nothing here imports torch: plots only read what ``sctraj.tl`` wrote into the AnnData.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

FIT_HINT = "sctraj.tl.fit_flow(adata, time_key, key_added={key!r})"

# the parameter text shared by every plotting function (inserted into the docstrings with ``doc_params``)
DOC_SHOW_SAVE_AX = """\
ax
    A :class:`~matplotlib.axes.Axes` to draw into; a new figure is created when ``None``.
show
    Call :func:`matplotlib.pyplot.show` at the end; ``None`` follows ``sctraj.settings.autoshow`` (by default
    ``scanpy.settings.autoshow``).
save
    As in scanpy: ``True`` saves to ``{figdir}/{function name}{plot_suffix}.{file_format_figs}``
    (``scanpy.settings``); a string such as ``"_day4.png"`` is appended to the function name in the figure
    directory (the extension, if given, picks the format). A :class:`~pathlib.Path`, or a string with a directory
    (``"out/fig.png"``), is used as the file path itself.
return_fig
    Return the :class:`~matplotlib.figure.Figure` instead of the axes."""

DOC_RETURNS = """\
The :class:`~matplotlib.figure.Figure` if ``return_fig=True``; ``None`` if the figure was shown; otherwise the
:class:`~matplotlib.axes.Axes` (a list of them for multi-panel figures)."""


def doc_params(**kwds):
    """Fill ``{name}`` placeholders of a docstring (scanpy's ``_doc_params`` idea)."""

    def deco(fn):
        doc = fn.__doc__
        if doc:
            vals = {}
            for name, text in kwds.items():
                # continuation lines get the indentation of the line holding the placeholder
                indent = next((ln[: len(ln) - len(ln.lstrip())] for ln in doc.splitlines() if f"{{{name}}}" in ln), "")
                vals[name] = text.replace("\n", "\n" + indent)
            fn.__doc__ = doc.format(**vals)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------------------
# reading what tl wrote
# ---------------------------------------------------------------------------------------------------------------
def check_adata(adata) -> None:
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")


def fit_record(adata, key: str, *, needed: str | None = None, hint: str | None = None) -> Mapping:
    """``adata.uns[key]`` written by ``fit_flow`` (and ``uns[key][needed]`` when asked), or a clear KeyError."""
    check_adata(adata)
    make = hint or FIT_HINT.format(key=key)
    if key not in adata.uns or not isinstance(adata.uns[key], Mapping) or "params" not in adata.uns[key]:
        raise KeyError(
            f"adata.uns[{key!r}] with the fit record was not found. Run {make} first "
            f"(or pass the key_added you used as key=...)."
        )
    rec = adata.uns[key]
    if needed is not None and needed not in rec:
        raise KeyError(f"adata.uns[{key!r}][{needed!r}] was not found. Run {make} first.")
    return rec


def trajectory_record(adata, key: str) -> tuple[Mapping, str]:
    """The fit record of ``key`` and the key of its stored trajectories, with the fix when they are missing."""
    rec = fit_record(adata, key, needed="trajectory")
    tkey = f"{key}_trajectory"
    if tkey not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{tkey!r}] was not found. Run sctraj.tl.fit_flow(adata, time_key, key_added={key!r}) with "
            "trajectory_n_grid >= 2 (the default)."
        )
    return rec, tkey


def fit_times(adata, key: str) -> tuple[str, np.ndarray, np.ndarray]:
    """``(time_key, time of each cell, fitted time points)`` of the fit stored under ``key``."""
    rec = fit_record(adata, key)
    p = rec["params"]
    time_key = str(p["time_key"])
    if time_key not in adata.obs:
        raise KeyError(f"The fit under {key!r} used adata.obs[{time_key!r}], which this AnnData lacks.")
    from .._times import is_label_column, string_times

    col = adata.obs[time_key]
    if is_label_column(col):  # "D2", "day 4.5": the same numbers the fit used
        t = string_times(col, time_key)
    else:
        t = pd.to_numeric(pd.Series(np.asarray(col)), errors="coerce").to_numpy(float)
    return time_key, t, np.asarray(p["times"], float)


def time_unit(adata, time_key: str) -> str:
    """Axis label of the time column: ``"day"`` plus the unit when the dataset records one."""
    unit = None
    ds = adata.uns.get("dataset")
    if isinstance(ds, Mapping) and "time_unit" in ds:
        unit = str(ds["time_unit"])
    if unit and unit != time_key and unit != "index":
        return f"{readable(time_key)} ({unit})"
    return readable(time_key)


def readable(name: str) -> str:
    """A column name as an axis label: ``"day_num"`` -> ``"day num"``."""
    return str(name).replace("_", " ").strip()


def rate_unit(adata, time_key: str) -> str:
    """``"per day"`` when the dataset records its time unit, else ``"per unit of <time column>"``."""
    ds = adata.uns.get("dataset")
    unit = str(ds["time_unit"]) if isinstance(ds, Mapping) and "time_unit" in ds else None
    if unit == "index":
        return "per time step"
    return f"per {unit}" if unit else f"per unit of {readable(time_key)}"


def basis_key(adata, basis: str) -> str:
    """``"umap"`` or ``"X_umap"`` -> ``"X_umap"`` (checked to exist); any other obsm key is accepted as it is."""
    if not isinstance(basis, str):
        raise TypeError(f"basis must be the name of an embedding (str), got {type(basis).__name__}.")
    for cand in (basis if basis.startswith("X_") else f"X_{basis}", basis):
        if cand in adata.obsm:
            shape = getattr(adata.obsm[cand], "shape", ())
            if len(shape) != 2 or shape[1] < 2:
                raise ValueError(
                    f"adata.obsm[{cand!r}] has shape {tuple(shape)}; plots need a 2-d embedding (at least 2 columns). "
                    "Pass basis= a 2-d embedding such as 'umap' (sc.pp.neighbors(adata); sc.tl.umap(adata))."
                )
            return cand
    keys = ", ".join(map(repr, adata.obsm.keys())) or "none"
    hint = " Compute it first, e.g. sc.pp.neighbors(adata); sc.tl.umap(adata)." if basis in ("umap", "X_umap") else ""
    raise KeyError(f"Embedding {basis!r} is not in adata.obsm (keys: {keys}).{hint}")


def basis_name(key: str) -> str:
    return key[2:] if key.startswith("X_") else key


def to_basis(adata, points: np.ndarray, *, use_rep: str, basis: str, n_neighbors: int = 15) -> np.ndarray:
    """Place points given in the fitted representation onto a 2-d basis.

    When ``basis`` is the fitted representation itself, its first two coordinates are used (exact). Otherwise each
    point is placed at the distance-weighted mean basis position of its ``n_neighbors`` nearest observed cells in the
    fitted representation (scikit-learn neighbours), which is how paths computed in PCA space are drawn on a UMAP.
    """
    bkey = basis_key(adata, basis)
    pts = np.asarray(points, np.float64)
    if bkey == use_rep:
        return pts[..., :2]
    from sklearn.neighbors import NearestNeighbors

    from .._validation import get_rep

    ref = get_rep(adata, use_rep, pts.shape[-1], dtype=np.float64)  # only the needed columns (sparse X stays sparse)
    emb = np.asarray(adata.obsm[bkey], np.float64)[:, :2]
    flat = pts.reshape(-1, pts.shape[-1])
    out = np.full((len(flat), 2), np.nan)
    ok = np.isfinite(flat).all(1)
    if ok.any():
        k = min(n_neighbors, len(ref))
        nn = NearestNeighbors(n_neighbors=k).fit(ref)
        dist, idx = nn.kneighbors(flat[ok])
        w = 1.0 / np.maximum(dist, 1e-12)
        w /= w.sum(1, keepdims=True)
        out[ok] = np.einsum("nk,nkc->nc", w, emb[idx])
    return out.reshape(*pts.shape[:-1], 2)


MAX_DISCRETE = 12  # numeric obs columns with at most this many values (time points) are drawn as categories


def discrete_values(adata, color) -> np.ndarray | None:
    """The sorted values of a numeric obs column with few distinct values (e.g. sampled days), else ``None``."""
    if not isinstance(color, str) or color not in adata.obs:
        return None
    col = adata.obs[color]
    if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col.dtype) or \
            pd.api.types.is_bool_dtype(col.dtype):
        return None
    vals = np.unique(col.to_numpy(float)[np.isfinite(col.to_numpy(float))])
    return vals if 1 < len(vals) <= MAX_DISCRETE else None


def embedding(adata, basis: str, color, ax, *, cbar_label: str | None = None, random_state: int = 0,
              **kwargs) -> None:
    """Background cells with :func:`scanpy.pl.embedding`, labelling the colour bar it adds (if any).

    A numeric column with a few distinct values (time points) is drawn as categories, with a legend and colours
    at their real spacing on viridis, and the cells in random order, so no time point hides another.
    """
    import anndata as ad
    import scanpy as sc

    fig = ax.figure
    before = set(fig.axes)
    kw = {"frameon": False, "show": False}
    if color is None:
        kw["na_color"] = "#d9d9d9"
    vals = discrete_values(adata, color)
    if vals is not None:
        order = np.random.default_rng(random_state).permutation(adata.n_obs)
        col = adata.obs[color].to_numpy(float)[order]
        labels = [fmt_time(v) for v in vals]
        cat = pd.Categorical([fmt_time(v) if np.isfinite(v) else np.nan for v in col], categories=labels)
        tmp = ad.AnnData(obs=pd.DataFrame({color: cat}, index=adata.obs_names[order]),
                         obsm={basis: np.asarray(adata.obsm[basis])[order]})
        stored = adata.uns.get(f"{color}_colors")
        colors, _ = time_colors(vals)
        tmp.uns[f"{color}_colors"] = np.asarray(
            list(stored) if stored is not None and len(stored) == len(vals) else
            [to_hex(colors[float(v)]) for v in vals], dtype=object)
        adata = tmp
    kw.update(kwargs)
    with quiet_scanpy():
        sc.pl.embedding(adata, basis=basis, color=color, ax=ax, **kw)
    label = cbar_label if cbar_label is not None else (readable(color) if isinstance(color, str) else None)
    if label:
        for cax in set(fig.axes) - before:
            cax.set_ylabel(label, fontsize="small")
    leg = ax.get_legend()
    if leg is not None and isinstance(color, str) and not leg.get_title().get_text():
        leg.set_title(readable(color), prop={"size": "small"})


@contextlib.contextmanager
def quiet_scanpy():
    """Silence scanpy's own deprecation notices about matplotlib (``cmap.set_bad``), which users cannot act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"scanpy\.")
        yield


def to_hex(c) -> str:
    from matplotlib.colors import to_hex as _to_hex

    return _to_hex(c)


# ---------------------------------------------------------------------------------------------------------------
# colours
# ---------------------------------------------------------------------------------------------------------------
def default_palette(n: int) -> list[str]:
    from scanpy.plotting import palettes

    if n <= 20:
        return list(palettes.default_20[:n])
    if n <= 28:
        return list(palettes.default_28[:n])
    if n <= len(palettes.default_102):
        return list(palettes.default_102[:n])
    return ["#7f7f7f"] * n


def category_colors(adata, key: str) -> dict[str, str]:
    """Colours of the categories of ``obs[key]`` from ``uns[f"{key}_colors"]``; defaults are written back (scanpy)."""
    from matplotlib.colors import is_color_like, to_hex

    col = adata.obs[key]
    if not isinstance(col.dtype, pd.CategoricalDtype):
        raise TypeError(
            f"adata.obs[{key!r}] must be categorical to colour by it; convert it with "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype('category')."
        )
    cats = [str(c) for c in col.cat.categories]
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(cats) and all(is_color_like(c) for c in stored):
        colors = [to_hex(c) for c in list(stored)[: len(cats)]]
    else:
        colors = default_palette(len(cats))
        adata.uns[f"{key}_colors"] = np.asarray(colors, dtype=object)
    return dict(zip(cats, colors, strict=True))


def time_colors(times: np.ndarray, cmap: str = "viridis") -> tuple[dict[float, tuple], object]:
    """One colour per time point on a continuous colormap (real time spacing), plus the normaliser."""
    import matplotlib as mpl
    from matplotlib.colors import Normalize

    times = np.asarray(times, float)
    norm = Normalize(vmin=float(times.min()), vmax=float(times.max()) if times.max() > times.min() else 1 + times.min())
    cm = mpl.colormaps[cmap]
    return {float(t): cm(norm(t)) for t in times}, norm


def fmt_time(t: float) -> str:
    return f"{t:g}"


# ---------------------------------------------------------------------------------------------------------------
# the scanpy return contract
# ---------------------------------------------------------------------------------------------------------------
def new_axes(ax=None, *, figsize=(4.5, 4.0)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def panel_grid(n: int, ncols: int, panel_size: tuple[float, float], ax=None, *, extra_width: float = 0.0):
    """One axis per panel: a grid of ``n`` panels in ``ncols`` columns (spare axes hidden), or ``ax`` alone."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, [ax]
    nc = min(ncols, n)
    nr = int(np.ceil(n / nc))
    w, h = panel_size
    fig, axs = plt.subplots(nr, nc, figsize=(w * nc + extra_width, h * nr), squeeze=False, layout="constrained")
    axs = list(axs.ravel())
    for a in axs[n:]:
        a.set_visible(False)
    return fig, axs[:n]


_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def check_save(save, name: str = "figure") -> Path | None:
    """Where ``save`` puts the figure of the plotting function ``name`` (scanpy's rules, plus explicit paths)."""
    if save is None or save is False:
        return None
    from .._settings import settings

    sc_settings = _scanpy_settings()
    suffix = str(getattr(sc_settings, "plot_suffix", "") or "")
    default_ext = str(getattr(sc_settings, "file_format_figs", "pdf") or "pdf")
    if save is True:
        return settings.figdir / f"{name}{suffix}.{default_ext}"
    if isinstance(save, bool) or not isinstance(save, str | os.PathLike):
        raise TypeError(f"save must be True, a file-name suffix such as '_day4.png' or a path, got {save!r}.")
    if isinstance(save, str) and os.sep not in save and "/" not in save:
        # scanpy: the string is appended to the function name, in the figure directory
        stem, dot, ext = save.rpartition(".")
        if dot and ext.lower() in _FORMATS:
            return settings.figdir / f"{name}{stem}{suffix}.{ext}"
        return settings.figdir / f"{name}{save}{suffix}.{default_ext}"
    path = Path(save)
    if not path.suffix:
        raise ValueError(f"save={str(save)!r} has no file extension; use e.g. {str(save)!r} + '.png' or '.pdf'.")
    return path


def _scanpy_settings():
    try:
        import scanpy as sc
    except ImportError:  # pragma: no cover - scanpy is a dependency
        return None
    return sc.settings


def finish(fig, axes, *, show: bool | None, save, return_fig: bool, name: str = "figure"):
    """scanpy's contract: save (see ``check_save``); return the figure, nothing (when shown) or the axes."""
    import matplotlib.pyplot as plt

    from .._settings import logger, settings

    path = check_save(save, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        logger.info(f"saved figure to {path}")
    if return_fig:
        return fig
    if show is None:
        show = settings.autoshow
    if show:
        plt.show()
        return None
    return axes


def check_common(show, return_fig, ax, save) -> None:
    """Validate the contract arguments before any drawing (so a bad call leaves no half-drawn figure)."""
    from matplotlib.axes import Axes

    if show is not None and not isinstance(show, bool):
        raise TypeError(f"show must be True, False or None, got {show!r}.")
    if not isinstance(return_fig, bool):
        raise TypeError(f"return_fig must be True or False, got {return_fig!r}.")
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}.")
    check_save(save)
