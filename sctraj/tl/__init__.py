"""Tools: fit flows, push and generate cells, benchmark. torch is imported only when these functions run."""

from ._benchmark import leave_one_out
from ._fates import cell_transition, couplings, fate_probabilities, pull, push
from ._fit import fit_flow
from ._gene_velocity import gene_velocity
from ._metrics import evaluate
from ._paths import metric_paths
from ._predict import interpolate, load_model, predict
from ._store import get_model
from ._velocity_embedding import velocity_embedding
from ._velocity_genes import velocity_genes

__all__ = [
    "fit_flow",
    "get_model",
    "predict",
    "interpolate",
    "load_model",
    "leave_one_out",
    "evaluate",
    "velocity_embedding",
    "metric_paths",
    "fate_probabilities",
    "cell_transition",
    "push",
    "pull",
    "couplings",
    "gene_velocity",
    "velocity_genes",
]
