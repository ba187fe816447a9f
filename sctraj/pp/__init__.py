"""Preprocessing: prepare embeddings (and growth priors) for fitting. Never imports torch."""

from ._growth import score_growth
from ._rep import scale_embedding

__all__ = ["scale_embedding", "score_growth"]
