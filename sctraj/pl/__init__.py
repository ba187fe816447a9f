"""Plotting (matplotlib / scanpy only; never imports torch).

Every function follows scanpy's contract: ``ax`` to draw into, ``show``, ``save`` (a file path) and ``return_fig``;
they only read what :mod:`sctraj.tl` wrote and say which ``tl`` call to run when something is missing.
"""

from ._fates import cell_transition, fate_probabilities
from ._genes import gene_trends
from ._growth import growth, mass
from ._training import benchmark, training
from ._trajectories import marginals, trajectories
from ._velocity import velocity_stream

__all__ = ["trajectories", "velocity_stream", "mass", "growth", "marginals", "training", "benchmark",
           "fate_probabilities", "cell_transition", "gene_trends"]
