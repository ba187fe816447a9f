"""The user-facing fitted model: real time and real coordinates in, NumPy out; save / load with plain types."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.solvers import check_solver, integrate, integrate_sde
from ._base import BaseMethod
from ._registry import get_method

FORMAT = "sctraj-model"
FORMAT_VERSION = 1


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without it is an error.

    Examples
    --------
    >>> from sctraj.models import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine. Use device='auto' or 'cpu'.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None


class TrajectoryModel:
    """A fitted flow: the method's networks plus the coordinates and times it was fitted in.

    Internally cells are centred and divided by one global scale and time is mapped to [0, 1] over the fitted time
    points; every public method takes and returns real coordinates (the first ``n_dims`` dims of ``use_rep``) and real
    time (the units of ``time_key``).

    Examples
    --------
    >>> import sctraj
    >>> adata = sctraj.datasets.simulate(n_cells=60, n_dims=2)
    >>> model = sctraj.tl.fit_flow(adata, "time", use_rep="X_sim", n_steps=50, progress=False)
    >>> X = adata.obsm["X_sim"][:5]
    >>> model.velocity(X, 0.0).shape  # dx/dt at time 0
    (5, 2)
    >>> X1, log_w = model.push(X, 0.0, 1.0)  # cells moved from time 0 to time 1, and their log mass change
    >>> model.growth_rate(X, 0.0).tolist()  # 0 for mass-conserving methods
    [0.0, 0.0, 0.0, 0.0, 0.0]
    >>> sctraj.tl.get_model(adata).times.tolist() == model.times.tolist()  # the same model, stored in adata
    True
    """

    def __init__(self, method: BaseMethod, setup: dict[str, Any], history: dict[str, list[float]] | None = None):
        self.method = method
        self.setup = setup
        self.history = history or {}
        self._mean = np.asarray(setup["mean"], np.float64)
        self._scale = float(setup["scale"])
        self._t0 = float(setup["times"][0])
        self._T = float(setup["times"][-1] - setup["times"][0])

    # -- descriptors ------------------------------------------------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def times(self) -> np.ndarray:
        return np.asarray(self.setup["times"], float)

    @property
    def dim(self) -> int:
        return int(self.method.dim)

    @property
    def use_rep(self) -> str:
        return self.setup["use_rep"]

    @property
    def time_key(self) -> str:
        return self.setup["time_key"]

    @property
    def has_growth(self) -> bool:
        return bool(self.method.has_growth)

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    def __repr__(self) -> str:
        t = ", ".join(f"{x:g}" for x in self.times)
        return (f"TrajectoryModel(method={self.method_name!r}, use_rep={self.use_rep!r}, dim={self.dim}, "
                f"times=[{t}], growth={self.has_growth})")

    def to(self, device: str | torch.device) -> TrajectoryModel:
        self.method.to(resolve_device(device))
        return self

    # -- coordinate changes -----------------------------------------------------------------------------------
    def _check_X(self, X) -> np.ndarray:
        """Cells as an array of the model's dims: float64 inputs stay float64 (precision of large values), others
        become float32."""
        from .._validation import _rep_dtype

        X = np.asarray(X)
        if X.dtype.kind not in "iuf":
            raise ValueError(f"Cells must be real numbers, got dtype {X.dtype}.")
        X = X.astype(_rep_dtype(X.dtype), copy=False)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(
                f"Expected cells with {self.dim} dims (the model was fitted on {self.dim} dims of {self.use_rep!r}), "
                f"got shape {X.shape}."
            )
        if not np.isfinite(X).all():
            raise ValueError("The cells contain NaN or infinite values.")
        return X

    @property
    def time_tolerance(self) -> float:
        """Times closer than this to a fitted time point are that time point (see ``sctraj._validation``)."""
        from .._validation import time_tolerance

        return time_tolerance(self.times)

    def check_time(self, t, what: str = "time") -> float:
        from .._validation import _as_time

        t = _as_time(t, what)
        lo, hi = self.times[0], self.times[-1]
        tol = self.time_tolerance
        if not (lo - tol <= t <= hi + tol):
            raise ValueError(
                f"{what}={t:g} is outside the fitted time range [{lo:g}, {hi:g}]; the model cannot extrapolate. "
                "Refit with cells at that time, or ask for a time inside the range."
            )
        return t

    def tau(self, t) -> float:
        return (float(t) - self._t0) / self._T

    def to_internal(self, X: np.ndarray) -> torch.Tensor:
        """Centre and scale in float64 (exact for large offsets), then float32 on the model's device."""
        Z = (np.asarray(X, np.float64) - self._mean) / self._scale
        return torch.as_tensor(Z.astype(np.float32), device=self.device)

    def from_internal(self, Z: torch.Tensor) -> np.ndarray:
        """Back to real coordinates, in float64."""
        return Z.detach().cpu().numpy().astype(np.float64) * self._scale + self._mean

    @torch.no_grad()
    def population_condition(self, X_source, condition: str | None = None) -> torch.Tensor | None:
        """Condition vector of one population from its source cells (Meta FM); ``None`` for other methods."""
        self.method.eval()
        return self.method.condition(self.to_internal(self._check_X(X_source)), condition)

    # -- dynamics in real units -------------------------------------------------------------------------------
    @torch.no_grad()
    def velocity(self, X, t, *, cond: torch.Tensor | None = None, chunk_size: int = 65536) -> np.ndarray:
        """Velocity ``dx/dt`` (embedding units per unit of time) of cells ``X`` at time ``t`` (scalar or per cell)."""
        X = self._check_X(X)
        tt = np.broadcast_to(np.asarray(t, np.float64), (len(X),))
        for v in np.unique(tt):
            self.check_time(v)
        out = np.empty_like(X)
        self.method.eval()
        for s in range(0, len(X), chunk_size):
            z = self.to_internal(X[s : s + chunk_size])
            tau = torch.as_tensor((tt[s : s + chunk_size] - self._t0) / self._T, dtype=z.dtype, device=z.device)
            v = self.method.velocity(z, tau, cond)
            out[s : s + chunk_size] = v.cpu().numpy().astype(np.float64) * (self._scale / self._T)
        return out

    @torch.no_grad()
    def growth_rate(self, X, t, *, cond: torch.Tensor | None = None, chunk_size: int = 65536) -> np.ndarray:
        """Growth rate ``d log(mass) / dt`` (per unit of time) of cells ``X`` at time ``t``; zeros without growth."""
        X = self._check_X(X)
        if not self.has_growth:
            return np.zeros(len(X), np.float32)
        tt = np.broadcast_to(np.asarray(t, np.float64), (len(X),))
        out = np.empty(len(X), np.float32)
        self.method.eval()
        for s in range(0, len(X), chunk_size):
            z = self.to_internal(X[s : s + chunk_size])
            tau = torch.as_tensor((tt[s : s + chunk_size] - self._t0) / self._T, dtype=z.dtype, device=z.device)
            g = self.method.growth(z, tau, cond)
            out[s : s + chunk_size] = (g / self._T).cpu().numpy()
        return out

    @torch.no_grad()
    def push(
        self,
        X,
        t_from: float,
        t_to: float | np.ndarray,
        *,
        n_steps: int = 100,
        solver: str = "euler",
        cond: torch.Tensor | None = None,
        chunk_size: int = 65536,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integrate cells ``X`` from ``t_from`` to ``t_to`` (a time or an increasing/decreasing grid of times).

        Returns ``(X_t, log_w)``: positions of shape ``(len(grid), n, d)`` (or ``(n, d)`` for a scalar ``t_to``) and
        the log of each cell's mass relative to its mass at ``t_from`` (zeros for mass-conserving methods).
        ``n_steps`` fixed steps are taken over the whole span. ``stochastic=True`` samples the learned SDE by
        Euler-Maruyama instead of the ODE (methods that learned a score, ``sbcfm``); its noise is drawn from
        ``generator`` (a seeded :class:`torch.Generator` on the model's device; a fresh unseeded one if ``None``).
        """
        X = self._check_X(X)
        check_solver(solver)
        if not isinstance(stochastic, bool | np.bool_):
            raise TypeError(f"stochastic must be True or False, got {stochastic!r}.")
        if stochastic:
            self.check_stochastic(solver)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}.")
        t_from = self.check_time(t_from, "source time")
        scalar = np.ndim(t_to) == 0
        grid = np.atleast_1d(np.asarray(t_to, np.float64))
        for v in grid:
            self.check_time(v, "target time")
        taus = np.concatenate([[self.tau(t_from)], [self.tau(v) for v in grid]])
        self.method.eval()
        dev = self.device
        t_eval = torch.as_tensor(taus, dtype=torch.float32, device=dev)
        xs_out = np.empty((len(grid), len(X), self.dim), X.dtype)
        lw_out = np.zeros((len(grid), len(X)), np.float32)
        if np.allclose(taus, taus[0]):
            xs_out[:] = X
            return (xs_out[0], lw_out[0]) if scalar else (xs_out, lw_out)

        def vel(x, t):
            return self.method.velocity(x, t.reshape(1).expand(x.shape[0]), cond)

        def gro(x, t):
            return self.method.growth(x, t.reshape(1).expand(x.shape[0]), cond)

        forward = bool(taus[-1] >= taus[0])

        def drift(x, t):
            return self.method.sde_drift(x, t.reshape(1).expand(x.shape[0]), cond, forward=forward)

        if stochastic and generator is None:
            generator = torch.Generator(device=dev)
            generator.seed()
        for s in range(0, len(X), chunk_size):
            z = self.to_internal(X[s : s + chunk_size])
            if stochastic:
                zs = integrate_sde(drift, self.method.diffusion, z, t_eval, n_steps=n_steps, generator=generator,
                                   knots=self.method.diffusion_knots())
                xs_out[:, s : s + chunk_size] = self.from_internal(zs[1:])
                continue
            zs, lws = integrate(vel, z, t_eval, n_steps=n_steps, solver=solver,
                                growth=gro if self.has_growth else None)
            xs_out[:, s : s + chunk_size] = self.from_internal(zs[1:])
            if lws is not None:
                lw_out[:, s : s + chunk_size] = lws[1:].cpu().numpy()
        return (xs_out[0], lw_out[0]) if scalar else (xs_out, lw_out)

    def check_stochastic(self, solver: str = "euler") -> None:
        """Raise a clear error unless this model can sample stochastic trajectories (an SDE)."""
        if not self.method.stochastic:
            why = ("it was fitted with score=False" if self.method_name == "sbcfm"
                   else f"method {self.method_name!r} learns a deterministic flow (an ODE), not an SDE")
            raise ValueError(
                f"stochastic=True needs a model that learned the score of a Schrodinger bridge, but {why}. Use "
                "stochastic=False, or fit with method='sbcfm' for stochastic trajectories."
            )
        if solver != "euler":
            raise ValueError(f"stochastic=True integrates the SDE by Euler-Maruyama; pass solver='euler', got "
                             f"{solver!r}.")

    # -- persistence ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as plain Python / tensor types."""
        from .. import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sctraj_version": __version__,
            "method": self.method_name,
            "dim": self.dim,
            "config": plain(self.method.config.to_dict()),
            "meta": plain(self.method.meta),
            "setup": plain(self.setup),
            "history": plain(self.history),
            "state_dict": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Save to ``path`` (a ``.pt`` file readable with ``torch.load(weights_only=True)``).

        The file is written atomically: to a temporary file in the same folder, flushed to disk, then renamed over
        ``path``. An interrupted save (full disk, crash) leaves the previous file at ``path`` intact.
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a file path such as 'model.pt', got {type(path).__name__}.")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"{str(path)!r} is a directory; pass a file path inside it, e.g. {str(path / 'model.pt')!r}."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(self.state(), f))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> TrajectoryModel:
        """Load a model written by :meth:`save`; refuses pickled code (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No model file at {str(path)!r}. Save one with model.save(path) first.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds of errors
            raise ValueError(
                f"{str(path)!r} is not a readable sctraj model ({type(e).__name__}: {e}). "
                "It may be corrupt, truncated, or contain pickled code, which sctraj refuses to load."
            ) from None
        return cls.from_state(state, where=repr(str(path)), device=device)

    @classmethod
    def from_state(cls, state: dict[str, Any], *, where: str, device: str = "auto") -> TrajectoryModel:
        """Rebuild a model from :meth:`state` (a saved file or ``adata.uns``), checking the format header first.

        ``where`` names the source in error messages (a file path, or ``adata.uns['sctraj']['model']``).
        """
        Method, config, sd = check_state(state, where)
        method = Method(int(state["dim"]), config, state.get("meta", {}))
        try:
            method.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"{where} does not match the {state['method']!r} network layout: {e}") from None
        method.to(resolve_device(device))
        return cls(method, state["setup"], state.get("history", {}))


def plain(obj: Any) -> Any:
    """NumPy scalars and arrays -> Python numbers and lists (what ``torch.load(weights_only=True)`` accepts)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return obj


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it and rename it over ``path``."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_SETUP_KEYS = {"time_key": str, "use_rep": str, "times": list, "mean": list, "scale": float | int}


def check_state(state, where: str):
    """Check the header of a saved model before anything is allocated; returns ``(Method, config, state_dict)``
    with the state dict upgraded to the current layout (:meth:`BaseMethod.upgrade_state_dict`).

    Checks the format marker and version, the method name, the dimension, the config, the coordinate setup and that
    every tensor of the state dict has exactly the shape the network would have (computed on torch's ``meta``
    device, which allocates nothing). A crafted file declaring ``dim=10**9`` is refused here, not by running out of
    memory.
    """
    def bad(what: str):
        return ValueError(f"{where} is not a valid sctraj model file or record: {what}. Re-save it with "
                          "model.save(path) or refit.")

    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{where} is not an sctraj model file or record (it was not written by model.save or fit_flow)."
        )
    version = state.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise ValueError(
            f"{where} uses model format version {version!r}, this sctraj reads version {FORMAT_VERSION}. Refit the "
            f"model or load it with sctraj {state.get('sctraj_version')}."
        )
    for key, kind in (("method", str), ("dim", int), ("config", dict), ("setup", dict), ("state_dict", dict)):
        if key not in state:
            raise bad(f"the {key!r} entry is missing")
        if isinstance(state[key], bool) or not isinstance(state[key], kind):
            raise bad(f"{key!r} is a {type(state[key]).__name__}, not a {kind.__name__}")
    try:
        Method = get_method(state["method"])
        config = Method.Config.from_saved(state["config"])
    except (TypeError, ValueError) as e:
        raise bad(f"its method or config is not valid ({e})") from None
    dim = state["dim"]
    setup = state["setup"]
    for key, kind in _SETUP_KEYS.items():
        if not isinstance(setup.get(key), kind):
            raise bad(f"setup[{key!r}] is missing or not a {getattr(kind, '__name__', 'number')}")
    if not isinstance(state.get("meta", {}), dict):
        raise bad("'meta' is not a dict")
    if not 1 <= dim <= 1_000_000 or len(setup["mean"]) != dim:
        raise bad(f"dim={dim} does not match the {len(setup['mean'])} coordinates of setup['mean']")
    try:
        times = np.asarray(setup["times"], np.float64)
    except (TypeError, ValueError):
        raise bad("setup['times'] is not a list of numbers") from None
    if times.ndim != 1 or len(times) < 2 or not np.isfinite(times).all() or (np.diff(times) <= 0).any():
        raise bad("setup['times'] must be at least two increasing finite times")
    if not (np.isfinite(setup["scale"]) and setup["scale"] > 0):
        raise bad("setup['scale'] must be a positive number")
    sd = state["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise bad("state_dict must map names to tensors")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in Method(dim, config, state.get("meta", {})).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - any failure to build the network means the header is inconsistent
        raise bad(f"its {state['method']!r} network cannot be built ({type(e).__name__}: {e})") from None
    sd = Method.upgrade_state_dict(sd)
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if got != expected:
        diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))[:3]
        raise bad(
            f"its tensors do not match a {state['method']!r} network of dim={dim} "
            f"(e.g. {[(k, got.get(k), expected.get(k)) for k in diff]} as (name, in file, expected))"
        )
    return Method, config, sd
