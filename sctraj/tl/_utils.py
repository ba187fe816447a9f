"""Helpers shared by the ``tl`` functions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd


def h5ad_safe(obj: Any) -> Any:
    """Convert to types that ``write_h5ad`` stores: dicts of str keys, arrays, scalars, strings (``None`` dropped)."""
    if isinstance(obj, dict):
        return {str(k): h5ad_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        if all(isinstance(v, str) for v in obj):
            return np.asarray(obj, dtype=object) if obj else np.zeros(0)
        if all(isinstance(v, bool | int | float | np.number) for v in obj):
            return np.asarray(obj)
        return {str(i): h5ad_safe(v) for i, v in enumerate(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def population_groups(adata, model, mask: np.ndarray, cache: dict | None = None) -> Iterator[tuple[np.ndarray, Any]]:
    """Yield ``(positions, cond)`` over the cells selected by ``mask``.

    ``cache`` (a dict kept by the caller across calls) stores each population's condition vector, so that a
    population is embedded once however many time points are visited.

    Without a population model, one group with ``cond=None``. With one (Meta FM), one group per population: its
    condition vector is computed by the method from the population's cells at the earliest *fitted* time point
    (``model.times``, i.e. never an excluded time) at which ``adata`` has cells of that population - the cells it was
    embedded from in training when ``adata`` is the fitting data. A population with no cells at any fitted time is
    embedded from its earliest cells inside the fitted time range. Selected cells without a population label are an
    error, never a population of their own.
    """
    pos = np.flatnonzero(mask)
    pop_key = model.setup.get("population_key")
    if not pop_key:
        yield pos, None
        return
    if pop_key not in adata.obs:
        raise KeyError(
            f"The model conditions on populations in adata.obs[{pop_key!r}], which this AnnData lacks. "
            f"Add that column (one label per population; unseen labels are fine)."
        )
    from .._validation import model_rep, time_values

    col = adata.obs[pop_key]
    missing = col.isna().to_numpy()
    if missing[pos].any():
        raise ValueError(
            f"{int(missing[pos].sum())} of the selected cells have no population label in adata.obs[{pop_key!r}]; the "
            "model's dynamics depend on the population, so every cell needs one. Label them or drop them, e.g. "
            f"adata = adata[adata.obs[{pop_key!r}].notna()].copy()."
        )
    labels = col.astype(str).to_numpy()
    t = time_values(adata, model.time_key)
    X = model_rep(adata, model)
    fitted = np.asarray(model.times, float)
    tol = model.time_tolerance
    at_fitted = np.isclose(t[:, None], fitted[None], rtol=0, atol=tol).any(1)
    in_range = (t >= fitted[0] - tol) & (t <= fitted[-1] + tol)
    cond_key = model.setup.get("condition_key")
    for lab in pd.unique(labels[pos]):
        in_pop = (labels == lab) & ~missing
        if cache is not None and lab in cache:
            cond = cache[lab]
        else:
            cand = in_pop & at_fitted
            if not cand.any():
                cand = in_pop & in_range
            if not cand.any():
                raise ValueError(
                    f"Population {lab!r} of adata.obs[{pop_key!r}] has no cells inside the fitted time range "
                    f"[{fitted[0]:g}, {fitted[-1]:g}], so it cannot be embedded. Add its cells at a fitted time."
                )
            src = cand & np.isclose(t, t[cand].min(), rtol=0, atol=tol)
            cond_label = None
            if cond_key:
                if cond_key not in adata.obs:
                    raise KeyError(f"The model needs the condition column adata.obs[{cond_key!r}], which is missing.")
                cond_label = str(adata.obs[cond_key].to_numpy()[np.flatnonzero(src)[0]])
            cond = model.population_condition(X[src], cond_label)
            if cache is not None:
                cache[lab] = cond
        yield pos[in_pop[pos]], cond
