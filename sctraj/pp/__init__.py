"""Preprocessing: prepare embeddings (and growth priors) for fitting. Never imports torch."""

from ._rep import scale_embedding

__all__ = ["scale_embedding"]
