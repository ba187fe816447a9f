"""The one place where every AnnData key written by sctraj is derived."""

from __future__ import annotations


def rep_name(use_rep: str) -> str:
    """``"X_pca"`` -> ``"pca"``; keys without the ``X_`` prefix are kept as they are."""
    return use_rep[2:] if use_rep.startswith("X_") else use_rep


def velocity_key(key_added: str, use_rep: str) -> str:
    return f"{key_added}_velocity_{rep_name(use_rep)}"


def growth_key(key_added: str) -> str:
    return f"{key_added}_growth_rate"


def trajectory_key(key_added: str) -> str:
    return f"{key_added}_trajectory"
