"""The base class every method derives from, and the data it is fitted on."""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..engine.trainer import LR_SCHEDULES


@dataclass
class FitData:
    """Scaled cells per kept time point, handed to :meth:`BaseMethod.fit`.

    ``X[k]`` are the cells of time ``times[k]`` in the model's internal coordinates (centred, divided by one global
    scale, so Euclidean geometry and OT are unchanged); ``tau[k]`` is that time mapped to [0, 1].
    """

    X: list[np.ndarray]
    tau: np.ndarray
    times: np.ndarray
    weights: list[np.ndarray] | None = None
    labels: list[np.ndarray] | None = None  # population labels per time (Meta FM)
    conditions: list[np.ndarray] | None = None  # condition labels per time (Meta FM)
    mass: np.ndarray | None = None  # relative total mass per kept time (growth methods)

    @property
    def dim(self) -> int:
        return self.X[0].shape[1]


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's config: network and optimiser settings shared by all methods.

    ``lr_schedule`` is ``"constant"`` (the learning rate ``lr`` throughout) or ``"cosine"`` (``lr`` decayed along a
    half cosine to ``lr / 100`` at the last step). The cosine decay ends training with small steps, so the final
    network is not one noisy iterate of a constant-rate run: on the hematopoiesis leave-one-out it cut the
    seed-to-seed spread of ``vgfm``'s W1 tenfold (``benchmarks/results/vgfm.md``). The decay halves the distance the
    optimiser travels, so a run of only a few hundred steps ends less trained than with a constant rate: for quick
    looks with few steps use ``"constant"``.

    Attributes
    ----------
    width
        Hidden units per layer of the velocity network (and of the method's other networks unless they have their
        own setting).
    depth
        Hidden layers of the networks.
    activation
        Activation function of the networks: ``"selu"``, ``"silu"``, ``"relu"``, ``"tanh"``, ``"gelu"`` or ``"elu"``.
    lr
        AdamW learning rate.
    weight_decay
        AdamW weight decay.
    lr_schedule
        ``"constant"`` or ``"cosine"`` (decay from ``lr`` to ``lr / 100`` along a half cosine), see above.
    """

    width: int = 64
    depth: int = 3
    activation: str = "selu"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        from ..engine.nn import _ACT

        self.check_ints(("width", "depth"))  # a zero-width or zero-depth network would be a constant field
        if self.activation not in _ACT:
            raise ValueError(f"activation must be one of {sorted(_ACT)}, got {self.activation!r}.")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v >= 0) or \
                    (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} finite number, "
                                 f"got {v!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_ints(self, names: tuple[str, ...], *, minimum: int = 1, prefix: str = "") -> None:
        """Raise a ``ValueError`` naming the first of ``names`` that is not an integer ``>= minimum`` (1 or 0)."""
        kind = "positive" if minimum == 1 else "non-negative"
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
                raise ValueError(f"{prefix}{name} must be a {kind} integer, got {v!r}.")

    def check_positive(self, names: tuple[str, ...], *, keyword: str | None = None) -> None:
        """Raise a ``ValueError`` naming the first of ``names`` that is not a positive finite number (booleans are
        not numbers here) or, when given, the string ``keyword`` (e.g. ``"auto"``)."""
        for name in names:
            v = getattr(self, name)
            if keyword is not None and isinstance(v, str) and v == keyword:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
                alt = "" if keyword is None else f" or {keyword!r}"
                raise ValueError(f"{name} must be a positive number{alt}, got {v!r}.")

    @classmethod
    def from_saved(cls, params: dict[str, Any]) -> MethodConfig:
        """The config of a saved model (``TrajectoryModel.load``); subclasses fill in settings older files lack."""
        return cls.from_params(params)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MethodConfig:
        """Build the config from user parameters, checked and normalised to plain Python types first."""
        from .._validation import config_params

        return cls(**config_params(cls, params))


class BaseMethod(nn.Module, abc.ABC):
    """A flow-matching method: networks plus how to train them.

    Subclasses set ``Config`` and implement :meth:`fit` and :meth:`velocity`; growth-aware methods also set
    ``has_growth = True`` and implement :meth:`growth`. Everything a model needs to be rebuilt without data must be in
    the constructor arguments (``dim``, ``config``, ``meta``) and the state dict.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    has_growth: ClassVar[bool] = False
    needs_population: ClassVar[bool] = False
    min_cells: ClassVar[int] = 2
    default_n_steps: ClassVar[int] = 2000
    default_batch_size: ClassVar[int] = 256

    def __init__(self, dim: int, config: MethodConfig, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.config = config
        self.meta: dict[str, Any] = dict(meta or {})

    # -- training -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(
        self,
        data: FitData,
        *,
        n_steps: int,
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        progress: bool,
    ) -> dict[str, list[float]]:
        """Train on ``data`` and return the loss history (lists of floats per logged quantity)."""

    # -- hooks around fitting (all optional) ----------------------------------------------------------------------
    @classmethod
    def prepare(cls, adata, tc, data: FitData, params: dict[str, Any], *, population_key: str | None) -> dict[str, Any]:
        """Read method-specific inputs from ``adata`` before fitting.

        May fill ``data`` (weights, labels, mass) and must pop the non-config entries it consumes from ``params``
        (e.g. ``total_mass``). Returns plain-typed metadata stored in ``self.meta`` and saved with the model. Runs
        before anything is written, so it must not modify ``adata``; raise a clear error on bad input.
        """
        return {}

    @classmethod
    def upgrade_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The saved tensors of a file written by an older version, with what that version lacked filled in (a new
        dict; by default the same entries)."""
        return dict(state_dict)

    def report(self, model, data: FitData) -> dict[str, Any]:
        """Extra h5ad-safe results merged into ``adata.uns[key_added]`` after fitting (e.g. mass over time)."""
        return {}

    # -- the learned dynamics (internal coordinates, time tau in [0, 1]) ----------------------------------------
    @abc.abstractmethod
    def velocity(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity ``dx / d tau`` in internal coordinates."""

    def growth(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-cell growth rate ``d log w / d tau``; ``None`` for mass-conserving methods."""
        return None

    def condition(self, x_source: torch.Tensor, condition: int | None = None) -> torch.Tensor | None:
        """Condition vector for one population given its source cells (Meta FM); ``None`` otherwise."""
        return None

    # -- stochastic dynamics (methods that learn a score; SB-CFM) ----------------------------------------------
    @property
    def stochastic(self) -> bool:
        """Whether the method learned the SDE ``dx = [v + g^2/2 grad log p] dt + g dW`` (see :meth:`sde_drift`)."""
        return False

    def sde_drift(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor | None = None,
                  forward: bool = True) -> torch.Tensor:
        """Drift of the learned SDE in internal units per unit of ``tau``: ``v + g^2/2 grad log p`` forward in time,
        ``v - g^2/2 grad log p`` backward (the time-reversed SDE)."""
        raise ValueError(f"method {self.name!r} learns a deterministic flow; it has no SDE.")

    def diffusion(self, tau: float) -> float:
        """Diffusion ``g(tau)`` of the learned SDE in internal units per ``sqrt(tau)``."""
        raise ValueError(f"method {self.name!r} learns a deterministic flow; it has no diffusion.")

    def diffusion_knots(self) -> list[float]:
        """Times ``tau`` where :meth:`diffusion` may jump (the fitted snapshots)."""
        return []
