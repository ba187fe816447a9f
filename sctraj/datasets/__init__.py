"""Bundled real time courses (no downloads) and simulators with known ground truth."""

from ._loaders import eb, hematopoiesis, ipsc, klein_mesc, larry, reprogramming
from ._simulate import simulate
from ._simulate_populations import simulate_populations, true_flow

__all__ = ["hematopoiesis", "eb", "ipsc", "klein_mesc", "reprogramming", "larry", "simulate", "simulate_populations", "true_flow"]
