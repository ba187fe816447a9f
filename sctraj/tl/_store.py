"""The fitted model kept inside the AnnData: ``adata.uns[key_added]["model"]`` and :func:`get_model`.

The record holds only types that ``write_h5ad`` stores: the network weights as NumPy arrays, and the method's
config, metadata and coordinate setup (centre, scale, fitted times) as JSON strings, so that a model read back from
an ``.h5ad`` file is rebuilt exactly (same float32 weights, same settings; ``None`` and empty lists survive, which
plain h5ad dicts would drop). It is the same state as :meth:`TrajectoryModel.save` writes, checked by the same
format header (:meth:`TrajectoryModel.from_state`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

RECORD = "model"  # adata.uns[key_added][RECORD]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def model_record(model) -> dict[str, Any]:
    """The h5ad-safe record of ``model`` stored in ``adata.uns[key_added]["model"]``."""
    state = model.state()
    return {
        "format": state["format"],
        "format_version": int(state["format_version"]),
        "sctraj_version": str(state["sctraj_version"]),
        "method": state["method"],
        "dim": int(state["dim"]),
        "config": json.dumps(_jsonable(state["config"])),
        "meta": json.dumps(_jsonable(state["meta"])),
        "setup": json.dumps(_jsonable(state["setup"])),
        # one array per network tensor; state-dict names use dots only, which h5py group names accept
        "weights": {k: v.numpy() for k, v in state["state_dict"].items()},
    }


def get_model(adata, key_added: str = "sctraj", *, device: str = "auto"):
    """The model fitted by :func:`~sctraj.tl.fit_flow`, rebuilt from ``adata.uns[key_added]``.

    ``fit_flow`` stores the fitted networks with the data, so a model survives ``write_h5ad`` / ``read_h5ad``
    without a separate file (use :meth:`~sctraj.models.TrajectoryModel.save` and :func:`~sctraj.tl.load_model`
    to share a model without its data).

    Parameters
    ----------
    adata
        AnnData on which :func:`~sctraj.tl.fit_flow` was run (or one read back from its ``.h5ad`` file).
    key_added
        The ``key_added`` of that ``fit_flow`` call.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    The fitted :class:`~sctraj.models.TrajectoryModel` (a new object on each call; predictions are identical to the
    in-memory model returned by ``fit_flow``).

    Examples
    --------
    >>> import anndata as ad
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)  # doctest: +SKIP
    >>> adata.write_h5ad("fitted.h5ad")  # doctest: +SKIP
    >>> model = sctraj.tl.get_model(ad.read_h5ad("fitted.h5ad"))  # doctest: +SKIP
    """
    from .._validation import check_adata
    from ..models import TrajectoryModel

    check_adata(adata)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    where = f"adata.uns[{key_added!r}][{RECORD!r}]"
    rec = adata.uns.get(key_added)
    if not isinstance(rec, Mapping) or RECORD not in rec:
        found = [k for k, v in adata.uns.items() if isinstance(v, Mapping) and RECORD in v]
        hint = f" Fitted models in this AnnData: {found} (pass key_added=...)." if found else (
            " Run sctraj.tl.fit_flow(adata, time_key) first, or pass a model loaded with sctraj.tl.load_model(path)."
        )
        raise KeyError(f"No fitted sctraj model in {where}.{hint}")
    r = rec[RECORD]
    try:
        import torch

        state = {
            "format": str(r["format"]),
            "format_version": int(r["format_version"]),
            "sctraj_version": str(r.get("sctraj_version", "?")),
            "method": str(r["method"]),
            "dim": int(r["dim"]),
            "config": json.loads(str(r["config"])),
            "meta": json.loads(str(r["meta"])),
            "setup": json.loads(str(r["setup"])),
            "state_dict": {str(k): torch.as_tensor(np.asarray(v)) for k, v in r["weights"].items()},
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where} is not a complete sctraj model record ({type(e).__name__}: {e}). Refit with sctraj.tl.fit_flow."
        ) from None
    hist = rec.get("history", {})
    state["history"] = {str(k): np.asarray(v).tolist() for k, v in hist.items()} if isinstance(hist, Mapping) else {}
    return TrajectoryModel.from_state(state, where=where, device=device)


def resolve_model(adata, model, key_added: str = "sctraj"):
    """``model`` itself when given (checked), else the one stored in ``adata.uns[key_added]``."""
    from ..models import TrajectoryModel

    if model is None:
        return get_model(adata, key_added)
    if not isinstance(model, TrajectoryModel):
        raise TypeError(
            f"model must be the TrajectoryModel returned by sctraj.tl.fit_flow / get_model / load_model (or None to "
            f"use the one stored in adata.uns[{key_added!r}]), got {type(model).__name__}."
        )
    return model
