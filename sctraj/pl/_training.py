"""Training curves and leave-one-out benchmark results."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _utils as U

REFERENCE_LABELS = {"no_movement": "no\nmovement\n(ref.)", "ot_interpolation": "OT\ninterp.\n(ref.)"}


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    k = np.ones(window) / window
    pad = np.concatenate([np.full(window // 2, y[0]), y, np.full(window - 1 - window // 2, y[-1])])
    return np.convolve(pad, k, mode="valid")


def _phase_start(hist: dict[str, np.ndarray]) -> int | None:
    """First step of a second training phase: where a loss logged as NaN during the warm-up starts (vgfm)."""
    for name in ("w1_loss",):
        y = hist.get(name)
        if y is not None and "loss" in hist and len(y) == len(hist["loss"]):
            fin = np.flatnonzero(np.isfinite(y))
            if len(fin) and fin[0] > 0:
                return int(fin[0]) + 1  # steps are drawn from 1
    return None


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def training(
    adata,
    *,
    key: str = "sctraj",
    keys=None,
    smooth: int | None = None,
    log: bool | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Loss per training step (raw in light colour, moving average in bold).

    A flat, noisy curve at the end means more steps would not help much; a curve still falling means
    ``n_steps`` can be raised. Methods that log several terms (e.g. a flow and a growth loss) get one panel each.
    Where a method changes its objective during training (``vgfm``'s phase 2, which adds the Wasserstein and mass
    terms computed through the ODE), a dotted line marks the step, so the jump in the loss there is not mistaken for
    instability. ``metricfm``'s path-network losses (``geopath_*``) are counted in their own steps.

    Parameters
    ----------
    adata
        AnnData after :func:`sctraj.tl.fit_flow` (reads ``uns[key]["history"]``).
    key
        ``key_added`` of the fit.
    keys
        Which logged quantities to draw (all by default).
    smooth
        Moving-average window in steps (about 2% of the steps by default).
    log
        Logarithmic loss axis; by default when every value is positive and they span more than a factor of 10.
    {show_save_ax}
        With ``ax``, every quantity is drawn into that one axes.

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", use_rep="X_emb", n_steps=200, progress=False)
    >>> sctraj.pl.training(adata, save=True)  # figures/training.pdf, as scanpy would  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

    U.check_common(show, return_fig, ax, save)
    rec = U.fit_record(adata, key, needed="history")
    hist = {str(k): np.asarray(v, float).ravel() for k, v in rec["history"].items()}
    hist = {k: v for k, v in hist.items() if v.size}
    phase2 = _phase_start(hist)
    n_main = len(hist.get("loss", ()))
    if keys is not None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        miss = [k for k in keys if k not in hist]
        if miss:
            raise KeyError(f"{miss} not in adata.uns[{key!r}]['history']; logged: {sorted(hist)}.")
        hist = {k: hist[k] for k in keys}
    if not hist:
        raise ValueError(f"adata.uns[{key!r}]['history'] is empty; nothing to draw.")
    names = sorted(hist, key=lambda k: (k != "loss", k))
    method = rec["params"]["method"]
    if ax is None:
        n = len(names)
        fig, axs = plt.subplots(1, n, figsize=(3.8 * n, 3.0), squeeze=False, layout="constrained")
        axs = list(axs[0])
    else:
        fig, axs = ax.figure, [ax] * len(names)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (a, name) in enumerate(zip(axs, names, strict=True)):
        y_all = hist[name]
        # steps where a term was not computed are logged as NaN (vgfm's warm-up, and the steps between its
        # distribution-fitting evaluations): draw the steps that have a value
        fin = np.isfinite(y_all)
        x, y = np.arange(1, len(y_all) + 1)[fin], y_all[fin]
        if not len(y):
            continue
        w = smooth if smooth is not None else max(1, len(y_all) // 50)  # in steps
        w = max(1, round(w * len(y) / (x[-1] - x[0] + 1)))  # in drawn values
        col = cycle[i % len(cycle)]
        a.plot(x, y, color=col, alpha=0.25, lw=0.8)
        a.plot(x, _smooth(y, int(w)), color=col, lw=1.8, label=name)
        use_log = log if log is not None else bool((y > 0).all() and y.max() > 10 * y.min())
        if use_log:
            a.set_yscale("log")
            fmt = mticker.FuncFormatter(lambda v, _: f"{v:.3g}")
            a.yaxis.set_major_formatter(fmt)
            if y.max() / y.min() < 100:  # less than two decades: label 2x and 5x ticks too
                a.yaxis.set_minor_locator(mticker.LogLocator(subs=(2.0, 5.0)))
                a.yaxis.set_minor_formatter(fmt)
            else:
                a.yaxis.set_minor_formatter(mticker.NullFormatter())
        if phase2 is not None and len(y_all) == n_main and not name.startswith("geopath"):
            a.axvline(phase2, color="0.4", ls=":", lw=1)
            a.annotate("phase 2:\nfit through\nthe ODE", (phase2, 1), xycoords=("data", "axes fraction"),
                       xytext=(3, -2), textcoords="offset points", ha="left", va="top", fontsize="x-small",
                       color="0.3")
        a.set_xlabel("training step (path network)" if name.startswith("geopath") else "training step")
        a.set_ylabel(("loss" if name == "loss" else name) + (" (log scale)" if use_log else ""))
        a.spines[["top", "right"]].set_visible(False)
        a.grid(False)
        if ax is None:
            a.set_title(f"{name} ({method})" if name != "loss" else f"training loss ({method})", fontsize="medium")
    if ax is not None:
        ax.legend(frameon=False, fontsize="small")
        ax.set_title(f"training ({method})", fontsize="medium")
        ax.set_ylabel("loss")
    return U.finish(fig, axs[0] if len(set(map(id, axs))) == 1 else axs, show=show, save=save, name='training',
                    return_fig=return_fig)


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def benchmark(
    results: pd.DataFrame,
    *,
    metric: str = "W1",
    references: bool = True,
    time_label: str = "held-out time",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
):
    """Leave-one-out results across methods (lower is better).

    One bar per method and held-out time point (mean over seeds, with the individual seeds as dots); the untrained
    references (``no movement``: the previous snapshot as the prediction; ``OT interp.``: exact-OT
    displacement interpolation of the two neighbouring snapshots) hatched in grey, so a fit can be judged against them.

    Parameters
    ----------
    results
        The :class:`pandas.DataFrame` returned by :func:`sctraj.tl.leave_one_out` (columns ``method``, ``heldout``,
        ``seed`` and the metric).
    metric
        Column to draw: ``"W1"``, ``"W2"``, ``"MMD"`` or ``"fit_seconds"``.
    references
        Include the reference rows.
    time_label
        Name of the held-out time in the legend (e.g. ``"held-out day"``).
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
    >>> res = sctraj.tl.leave_one_out(adata, "day", methods=["icfm", "otcfm"], use_rep="X_emb")  # doctest: +SKIP
    >>> sctraj.pl.benchmark(res, time_label="held-out day")  # doctest: +SKIP
    """
    U.check_common(show, return_fig, ax, save)
    if not isinstance(results, pd.DataFrame):
        raise TypeError(
            f"results must be the DataFrame returned by sctraj.tl.leave_one_out, got {type(results).__name__}."
        )
    need = {"method", "heldout", metric}
    if not need <= set(results.columns):
        raise KeyError(
            f"results lacks column(s) {sorted(need - set(results.columns))}; pass the output of "
            "sctraj.tl.leave_one_out (metrics: W1, W2, MMD, fit_seconds)."
        )
    df = results.copy()
    if not references:
        df = df[~df["method"].isin(list(REFERENCE_LABELS))]
    if df.empty:
        raise ValueError("results has no rows to draw.")
    fitted = [m for m in pd.unique(df["method"]) if m not in REFERENCE_LABELS]
    refs = [m for m in REFERENCE_LABELS if m in set(df["method"])]
    order = fitted + refs
    held = sorted(pd.unique(df["heldout"].astype(float)))
    palette = U.default_palette(max(len(held), 1)) if len(held) > 1 else ["#4c72b0"]
    fig, ax = U.new_axes(ax, figsize=(max(4.0, 1.0 * len(order) + 1.5), 3.8))
    width = 0.8 / len(held)
    for j, h in enumerate(held):
        for i, m in enumerate(order):
            vals = df[(df["method"] == m) & np.isclose(df["heldout"].astype(float), h)][metric].astype(float)
            if vals.empty:
                continue
            x = i - 0.4 + width * (j + 0.5)
            is_ref = m in REFERENCE_LABELS
            col = "#b0b0b0" if is_ref else palette[j]
            ax.bar(x, vals.mean(), width=width * 0.9, color=col, edgecolor="white" if not is_ref else "#707070",
                   hatch="//" if is_ref else None, label=f"{time_label} {h:g}" if i == 0 else None)
            if len(vals) > 1:
                ax.scatter(np.full(len(vals), x), vals, color="k", s=8, zorder=3)
            ax.annotate(f"{vals.mean():.3g}", (x, vals.max()), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([REFERENCE_LABELS.get(m, m) for m in order], fontsize="small")
    ylab = {"W1": "W1 to held-out cells", "W2": "W2 to held-out cells", "MMD": "MMD to held-out cells",
            "fit_seconds": "fit time (s)"}.get(metric, metric)
    ax.set_ylabel(ylab + ("\n(lower is better)" if metric in ("W1", "W2", "MMD") else ""))
    ax.margins(y=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(False, axis="x")
    if len(held) > 1:
        ax.legend(frameon=False, fontsize="small")
    if title is None:
        title = "leave-one-out" + (f": {time_label} {held[0]:g}" if len(held) == 1 else "")
    ax.set_title(title, fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, name='benchmark', return_fig=return_fig)
