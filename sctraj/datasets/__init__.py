"""Bundled real time courses (no downloads) and simulators with known ground truth."""

from ._loaders import eb, hematopoiesis, ipsc
from ._simulate import simulate

__all__ = ["hematopoiesis", "eb", "ipsc", "simulate"]
