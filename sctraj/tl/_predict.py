"""Push observed cells through a fitted flow (``predict``) and generate cells at any time (``interpolate``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validation import check_adata, check_int, check_random_state, model_rep, summarize, time_mask, time_values
from ._result import fill_result_doc, predicted_anndata
from ._store import resolve_model
from ._utils import population_groups


def _sde_generator(model, stochastic, solver, random_state):
    """The seeded torch generator of ``stochastic=True`` (``None`` otherwise), after checking the model can."""
    if not isinstance(stochastic, bool | np.bool_):
        raise TypeError(f"stochastic must be True or False, got {stochastic!r}.")
    if not stochastic:
        return None
    import torch

    model.check_stochastic(solver)
    gen = torch.Generator(device=model.device)
    gen.manual_seed(check_random_state(random_state))
    return gen


@fill_result_doc
def predict(
    adata,
    model=None,
    *,
    source_time: float,
    target_time: float,
    n_steps: int = 100,
    solver: str = "euler",
    key_added: str = "sctraj",
    stochastic: bool = False,
    random_state: int = 0,
):
    """Push the cells observed at ``source_time`` to ``target_time`` (forward or backward in time).

    Parameters
    ----------
    adata
        AnnData with ``obs[model.time_key]`` and ``obsm[model.use_rep]`` (it may be new data, e.g. unseen
        populations for Meta FM).
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` (default) uses the model stored in
        ``adata.uns[key_added]`` by :func:`fit_flow` (see :func:`get_model`).
    source_time, target_time
        Times within the fitted range; ``source_time`` must be observed in ``adata``.
    n_steps
        ODE steps over the interval.
    solver
        ``"euler"`` (the benchmark protocol), ``"midpoint"``, ``"rk4"`` or ``"dopri5"`` (adaptive).
    key_added
        Where the model is stored when ``model=None``; the result's ``sctraj_source``-style column and model record
        use the same prefix.
    stochastic
        ``False``: integrate the learned ODE (every method; deterministic). ``True``: sample the learned stochastic
        dynamics ``dx = [v + g^2/2 grad log p] dt + g dW`` of a ``"sbcfm"`` model by Euler-Maruyama with
        ``n_steps`` steps, so that each source cell gets one random fate (repeat the cells, or call again with
        another seed, for a distribution of fates). Other methods learn no score: ``True`` is an error for them.
    random_state
        Seed of the SDE's noise (``stochastic=True`` only): the same seed gives the same result; global random
        states are not touched.

    Returns
    -------
    A new AnnData, one row per source cell (``adata`` is not modified). {result}

    Examples
    --------
    >>> import anndata as ad
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> _ = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)
    >>> pred = sctraj.tl.predict(adata, source_time=0.0, target_time=1.0)
    >>> both = ad.concat({{"observed": adata, "predicted": pred}}, label="sctraj_source")
    >>> back = sctraj.tl.predict(pred, source_time=1.0, target_time=0.0)  # predictions carry the model
    """
    check_adata(adata)
    model = resolve_model(adata, model, key_added)
    gen = _sde_generator(model, stochastic, solver, random_state)
    t = time_values(adata, model.time_key)
    src = model.check_time(source_time, "source_time")
    tgt = model.check_time(target_time, "target_time")
    mask = time_mask(t, src, model.time_tolerance)
    if not mask.any():
        raise ValueError(
            f"No cells at source_time={source_time!r} in adata.obs[{model.time_key!r}] "
            f"(observed: {summarize(np.unique(t))})."
        )
    X = model_rep(adata, model)
    out = np.empty((mask.sum(), model.dim), X.dtype)
    logw = np.zeros(mask.sum(), np.float32)
    order = np.flatnonzero(mask)
    where = {p: k for k, p in enumerate(order)}
    for pos, cond in population_groups(adata, model, mask):
        xs, lw = model.push(X[pos], src, tgt, n_steps=n_steps, solver=solver, cond=cond, stochastic=stochastic,
                            generator=gen)
        k = np.array([where[p] for p in pos])
        out[k], logw[k] = xs, lw
    return predicted_anndata(adata, model, order, out, np.exp(logw.astype(np.float64)), src, tgt, key_added)


@fill_result_doc
def interpolate(
    adata,
    model=None,
    times: float | Sequence[float] | None = None,
    *,
    n_cells: int | None = None,
    n_steps: int = 100,
    solver: str = "euler",
    random_state: int = 0,
    key_added: str = "sctraj",
    stochastic: bool = False,
):
    """Generate cells at any times in the fitted range, observed or not.

    For each requested time ``t``, cells are drawn from the latest time point of ``model`` at or before ``t``
    (the first one for earlier times) and pushed to ``t``.

    Parameters
    ----------
    adata
        The AnnData the model was fitted on (or one with the same time column and embedding).
    model
        A fitted :class:`~sctraj.models.TrajectoryModel`; ``None`` (default) uses the one stored in
        ``adata.uns[key_added]``.
    times
        One time or a list of times (required; keyword or third positional argument).
    n_cells
        Cells generated per time (drawn with replacement when larger than the source population); all source cells
        when ``None``.
    n_steps, solver, stochastic
        As in :func:`predict`: ``stochastic=True`` samples a ``"sbcfm"`` model's SDE instead of its ODE.
    random_state
        Seed of the cell draw and of the SDE's noise.
    key_added
        As in :func:`predict`.

    Returns
    -------
    AnnData of generated cells, laid out as :func:`predict`'s result (one ``obs[time_key]`` value per requested
    time). {result}

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> _ = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)
    >>> gen = sctraj.tl.interpolate(adata, times=[0.5, 1.5], n_cells=20)
    >>> gen.n_obs
    40
    """
    import anndata as ad

    check_adata(adata)
    if times is None and model is not None and not hasattr(model, "push"):
        model, times = None, model  # interpolate(adata, 1.5) or interpolate(adata, [1, 2]): times where model goes
    if times is None:
        raise TypeError("interpolate() needs times=...: one time or a list of times in the fitted range.")
    model = resolve_model(adata, model, key_added)
    times = [times] if np.ndim(times) == 0 else list(times)
    if not times:
        raise ValueError("times is empty: pass one time or a list of times.")
    n_cells = check_int("n_cells", n_cells, allow_none=True)
    t_obs = time_values(adata, model.time_key)
    _sde_generator(model, stochastic, solver, 0)  # fail before any work
    rng = np.random.default_rng(check_random_state(random_state))
    tol = model.time_tolerance
    parts = []
    for tq in times:
        tq = model.check_time(tq, "time")
        avail = np.array([s for s in model.times if time_mask(t_obs, s, tol).any()])
        if len(avail) == 0:
            raise ValueError("adata has no cells at any of the model's time points.")
        before = avail[avail <= tq + tol]
        src = float(before[-1] if len(before) else avail[0])
        pool = np.flatnonzero(time_mask(t_obs, src, tol))
        pick = pool if n_cells is None else rng.choice(pool, size=n_cells, replace=n_cells > len(pool))
        sub = adata[np.sort(pick)] if n_cells is None else adata[pick]
        res = predict(sub, model, source_time=src, target_time=tq, n_steps=n_steps, solver=solver,
                      key_added=key_added, stochastic=stochastic,
                      random_state=int(rng.integers(2**31)) if stochastic else 0)
        res.obs_names = [f"t{tq:g}_{i}" for i in range(res.n_obs)]
        parts.append(res)
    if len(parts) == 1:
        return parts[0]
    return ad.concat(parts, merge="first", uns_merge="first")


def load_model(path, *, device: str = "auto"):
    """Load a model saved with ``model.save(path)`` (plain types only; ``torch.load(weights_only=True)``).

    To keep a model with its data instead, write the AnnData: ``fit_flow`` stores the model in
    ``adata.uns[key_added]`` and :func:`get_model` rebuilds it.

    Parameters
    ----------
    path
        A ``.pt`` file written by :meth:`~sctraj.models.TrajectoryModel.save`.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    The :class:`~sctraj.models.TrajectoryModel`.

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> model = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)
    >>> model.save("model.pt")  # doctest: +SKIP
    >>> model = sctraj.tl.load_model("model.pt")  # doctest: +SKIP
    """
    from ..models import TrajectoryModel

    return TrajectoryModel.load(path, device=device)


__all__ = ["predict", "interpolate", "load_model"]
