"""Streamlines of the learned velocity on a 2-d embedding."""

from __future__ import annotations

import numpy as np

from . import _utils as U


def velocity_grid(E: np.ndarray, V: np.ndarray, *, n_grid: int = 40, smooth: float = 0.5, min_density: float = 1.0):
    """Average cell velocities onto a regular grid with a Gaussian kernel (scVelo's idea, written afresh).

    Each grid point gets the kernel-weighted mean velocity of the cells near it (scikit-learn neighbours); the kernel
    width is ``smooth`` times the grid spacing times two. Grid points whose summed kernel weight is below
    ``min_density`` x 2% of the 99th percentile of those sums (where there are almost no cells) are masked, so no
    streamlines are drawn through empty space.

    Returns ``(xs, ys, U, V)`` with masked arrays ``U``, ``V`` of shape ``(n_grid, n_grid)`` (rows = y).
    """
    from sklearn.neighbors import NearestNeighbors

    lo, hi = E.min(0), E.max(0)
    pad = 0.02 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n_grid)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n_grid)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    spacing = np.array([xs[1] - xs[0], ys[1] - ys[0]])
    # work in units of grid spacing so both axes are smoothed alike
    Es, Gs = E / spacing, grid / spacing
    width = max(2.0 * smooth, 1e-3)
    k = int(min(len(E), max(10, len(E) // 50)))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(Es).kneighbors(Gs)
    w = np.exp(-0.5 * (dist / width) ** 2)
    mass = w.sum(1)
    Vg = np.einsum("gk,gkc->gc", w, V[idx]) / np.maximum(mass, 1e-12)[:, None]
    thresh = min_density * 0.02 * np.percentile(mass, 99)
    mask = (mass < max(thresh, 1e-8)).reshape(n_grid, n_grid)
    Ug = np.ma.masked_array(Vg[:, 0].reshape(n_grid, n_grid), mask=mask)
    Vv = np.ma.masked_array(Vg[:, 1].reshape(n_grid, n_grid), mask=mask)
    return xs, ys, Ug, Vv


@U.doc_params(show_save_ax=U.DOC_SHOW_SAVE_AX, returns=U.DOC_RETURNS)
def velocity_stream(
    adata,
    *,
    basis: str = "umap",
    vkey: str = "sctraj_velocity",
    color: str | None = None,
    density: float = 1.5,
    smooth: float = 0.5,
    n_grid: int = 40,
    min_density: float = 1.0,
    arrow_color: str = "k",
    arrow_size: float = 1.0,
    linewidth: float = 1.0,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
    return_fig: bool = False,
    **kwargs,
):
    """Streamlines of the learned cell velocities on a 2-d embedding.

    Cells are drawn with :func:`scanpy.pl.embedding` (so ``color`` works as in scanpy, with ``uns[f"{{color}}_colors"]``)
    and the velocities, averaged on a grid, as streamlines on top.

    Parameters
    ----------
    adata
        AnnData with ``obsm[f"X_{{basis}}"]`` and the projected velocities ``obsm[f"{{vkey}}_{{basis}}"]``, written by
        :func:`sctraj.tl.velocity_embedding` (or by :func:`sctraj.tl.fit_flow` when ``basis`` is the fitted
        representation; only its first two dimensions are drawn).
    basis
        Embedding to draw on (``"umap"``, ``"X_umap"``, ``"pca"``, ...).
    vkey
        Velocity key prefix (``f"{{key_added}}_velocity"``).
    color
        obs column or gene to colour cells by (scanpy's ``color``); light grey when ``None``. A numeric column with a
        few values (time points) is drawn as categories with a legend.
    density
        Streamline density (:func:`matplotlib.pyplot.streamplot`).
    smooth
        Kernel width of the grid average, in grid spacings.
    n_grid
        Grid points per axis.
    min_density
        Hide streamlines where few cells are nearby (multiples of 2% of the 99th percentile of cell density).
    arrow_color, arrow_size, linewidth
        Look of the streamlines.
    title
        Panel title; by default the method that was fitted.
    {show_save_ax}
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``size``, ``palette``, ``legend_loc``, ``frameon``, ...).

    Returns
    -------
    {returns}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.hematopoiesis()
    >>> _ = sctraj.tl.fit_flow(adata, "day", use_rep="X_emb", n_steps=200, progress=False)
    >>> sctraj.pl.velocity_stream(adata, basis="emb", vkey="sctraj_velocity", color="day", save="_hema.png")  # doctest: +SKIP
    """
    U.check_adata(adata)
    U.check_common(show, return_fig, ax, save)
    bkey = U.basis_key(adata, basis)
    bname = U.basis_name(bkey)
    vk = f"{vkey}_{bname}"
    if vk not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{vk!r}] (velocities on {bname!r}) was not found. Run "
            f"sctraj.tl.velocity_embedding(adata, basis={bname!r}, vkey={vkey!r}) after sctraj.tl.fit_flow."
        )
    for name, val in (("density", density), ("smooth", smooth), ("arrow_size", arrow_size), ("linewidth", linewidth)):
        if not isinstance(val, int | float) or isinstance(val, bool) or val <= 0:
            raise ValueError(f"{name} must be a positive number, got {val!r}.")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 5:
        raise ValueError(f"n_grid must be an integer >= 5, got {n_grid!r}.")
    E = np.asarray(adata.obsm[bkey], float)[:, :2]
    V = np.asarray(adata.obsm[vk], float)[:, :2]
    ok = np.isfinite(V).all(1) & np.isfinite(E).all(1)
    if ok.sum() < 3:
        raise ValueError(f"adata.obsm[{vk!r}] has fewer than 3 finite velocities; nothing to draw.")

    fig, ax = U.new_axes(ax)
    U.embedding(adata, bkey, color, ax, **kwargs)
    xs, ys, Ug, Vg = velocity_grid(E[ok], V[ok], n_grid=n_grid, smooth=smooth, min_density=min_density)
    ax.streamplot(xs, ys, Ug, Vg, color=arrow_color, density=density, linewidth=linewidth, arrowsize=arrow_size,
                  zorder=3)
    key = vkey[: -len("_velocity")] if vkey.endswith("_velocity") else vkey
    method = None
    rec = adata.uns.get(key)
    if isinstance(rec, dict) and "params" in rec:
        method = rec["params"].get("method")
    if title is None:
        title = f"velocity ({method})" if method else "velocity"
        if color is not None:
            title += f"\ncells coloured by {U.readable(color)}"
    ax.set_title(title, fontsize="medium")
    return U.finish(fig, ax, show=show, save=save, name='velocity_stream', return_fig=return_fig)
