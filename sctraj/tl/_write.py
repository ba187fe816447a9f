"""The one place where ``fit_flow`` writes into an AnnData: which keys it owns, stale keys, all-or-nothing.

A fit record ``adata.uns[key_added]`` carries a marker, ``params["written_by"] == "sctraj"``, and the list of keys
the fit wrote (``params["written_keys"]``). Only keys listed there (plus the projections that
:func:`~sctraj.tl.velocity_embedding` recorded for that fit) are sctraj's: a refit under the same ``key_added``
removes them before writing its own, so no array of an earlier fit is left under a new record; any other existing
key that a fit would write is the user's, and the fit refuses before training, naming a free ``key_added``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _keys

MARKER = "sctraj"
_LEGACY_PARAMS = ("method", "time_key", "use_rep", "version")  # records written before the marker existed
DERIVED = ("fate_probabilities", "gene_velocity")  # entries other sctraj functions add to a fit record


def planned_keys(key_added: str, use_rep: str, trajectory: bool) -> dict[str, list[str]]:
    """The ``obsm`` / ``obs`` keys one fit writes (``uns[key_added]`` aside)."""
    obsm = [_keys.velocity_key(key_added, use_rep)] + ([_keys.trajectory_key(key_added)] if trajectory else [])
    return {"obsm": obsm, "obs": [_keys.growth_key(key_added)]}


def _as_list(v) -> list[str]:
    return [str(x) for x in np.atleast_1d(np.asarray(v, dtype=object))] if v is not None else []


def is_fit_record(rec) -> bool:
    """Whether ``rec`` is a record written by ``fit_flow`` (with the marker, or an older sctraj record)."""
    if isinstance(rec, Mapping) and rec and all(k in DERIVED for k in rec):
        return True  # only what sctraj's derived functions wrote (e.g. fate probabilities of a model passed in)
    if not isinstance(rec, Mapping) or not isinstance(rec.get("params"), Mapping):
        return False
    p = rec["params"]
    return str(p.get("written_by", "")) == MARKER or all(k in p for k in _LEGACY_PARAMS)


def owned_keys(adata, key_added: str) -> dict[str, list[str]] | None:
    """Keys of ``adata`` written by the fit stored under ``key_added``; ``None`` when ``uns[key_added]`` is free.

    Raises when ``uns[key_added]`` holds something sctraj did not write.
    """
    if key_added not in adata.uns:
        return None
    rec = adata.uns[key_added]
    if not is_fit_record(rec):
        raise ValueError(
            f"adata.uns[{key_added!r}] already exists and was not written by sctraj.tl.fit_flow "
            f"({type(rec).__name__}); fitting would replace it. Pass another key_added, e.g. "
            f"key_added={free_key(adata, 'sctraj')!r}."
        )
    p = rec.get("params", {})
    wk = p.get("written_keys")
    if isinstance(wk, Mapping):
        owned = {"obsm": _as_list(wk.get("obsm")), "obs": _as_list(wk.get("obs"))}
    elif "use_rep" in p:  # an older record: the keys that fit_flow derived from its key_added and use_rep
        owned = planned_keys(key_added, str(p.get("use_rep", "")), True)
    else:
        owned = {"obsm": [], "obs": []}
    # fate probabilities of this fit written by tl.fate_probabilities (its settings live in the fit record)
    if "fate_probabilities" in rec:
        owned["obsm"].append(f"{key_added}_fate_probabilities")
    # projections of this fit's velocities written by tl.velocity_embedding (scVelo layout)
    vparams = adata.uns.get(f"{key_added}_velocity_params")
    if isinstance(vparams, Mapping) and str(vparams.get("model_key", "")) == key_added:
        owned["obsm"] += [f"{key_added}_velocity_{e}" for e in _as_list(vparams.get("embeddings"))]
        owned["uns"] = [f"{key_added}_velocity_params"]
    return owned


def free_key(adata, base: str) -> str:
    """``base`` or ``base_2``, ``base_3``, ... : a key_added none of whose keys exists in ``adata``."""
    for i in range(1, 10_000):
        cand = base if i == 1 else f"{base}_{i}"
        if cand in adata.uns or _keys.growth_key(cand) in adata.obs or \
                any(k.startswith(f"{cand}_") for k in adata.obsm):
            continue
        return cand
    return f"{base}_new"


def check_writable(adata, key_added: str, use_rep: str, trajectory: bool) -> dict[str, list[str]]:
    """Refuse (before any training) a ``key_added`` whose keys would overwrite data sctraj did not write.

    Returns the keys owned by an earlier fit under the same ``key_added`` (empty when there is none).
    """
    owned = owned_keys(adata, key_added) or {"obsm": [], "obs": []}
    plan = planned_keys(key_added, use_rep, trajectory)
    clash = [f"obsm[{k!r}]" for k in plan["obsm"] if k in adata.obsm and k not in owned["obsm"]]
    clash += [f"obs[{k!r}]" for k in plan["obs"] if k in adata.obs.columns and k not in owned["obs"]]
    if clash:
        raise ValueError(
            f"key_added={key_added!r} would overwrite {', '.join(clash)}, which sctraj did not write. Pass another "
            f"key_added, e.g. key_added={free_key(adata, key_added)!r}."
        )
    return owned


def write_fit(adata, key_added: str, *, obsm: dict[str, np.ndarray], obs: dict[str, np.ndarray], record: dict) -> None:
    """Write one fit's outputs: check ownership again, drop this key's stale keys, then assign everything.

    Nothing is assigned before every check has passed; the record gets the marker and the list of written keys.
    """
    owned = owned_keys(adata, key_added) or {"obsm": [], "obs": []}
    clash = [k for k in obsm if k in adata.obsm and k not in owned["obsm"]]
    clash += [k for k in obs if k in adata.obs.columns and k not in owned["obs"]]
    if clash:
        raise ValueError(f"key_added={key_added!r} would overwrite {clash}, which sctraj did not write.")
    for k, v in (obsm | obs).items():
        if len(v) != adata.n_obs:
            raise ValueError(f"internal error: {k!r} has {len(v)} rows for {adata.n_obs} cells")
    params = dict(record["params"])
    params["written_by"] = MARKER
    params["written_keys"] = {"obsm": np.asarray(list(obsm), dtype=object),
                              "obs": np.asarray(list(obs), dtype=object)}
    record = {**record, "params": params}
    # stale keys of the previous fit under this key_added (another method, use_rep or no trajectories)
    for k in owned["obsm"]:
        if k not in obsm and k in adata.obsm:
            del adata.obsm[k]
    for k in owned["obs"]:
        if k not in obs and k in adata.obs.columns:
            del adata.obs[k]
    for k in owned.get("uns", []):
        adata.uns.pop(k, None)
    for k, v in obsm.items():
        adata.obsm[k] = v
    for k, v in obs.items():
        adata.obs[k] = v
    adata.uns[key_added] = record


def check_derived(adata, key_added: str, obsm_key: str, entry: str) -> None:
    """Before a derived result (e.g. fate probabilities) is written into ``uns[key_added][entry]`` and
    ``obsm[obsm_key]``: refuse when ``uns[key_added]`` or ``obsm[obsm_key]`` holds data sctraj did not write."""
    owned = owned_keys(adata, key_added) or {"obsm": [], "obs": []}  # raises for a foreign uns[key_added]
    rec = adata.uns.get(key_added)
    mine = owned["obsm"] + ([obsm_key] if isinstance(rec, Mapping) and entry in rec else [])
    if obsm_key in adata.obsm and obsm_key not in mine:
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] already exists and was not written by sctraj; writing {entry} would replace "
            f"it. Pass another key_added, e.g. key_added={free_key(adata, key_added)!r}."
        )
