"""ODE integration with torchdiffeq, optionally augmented with the log-mass of each cell, and SDE integration.

With a growth rate ``g(x, t)`` the state is ``(x, log w)`` and ``d log w / dt = g(x, t)``: the mass of a cell grows as
``w(t) = w(0) exp(int g dt)``.

:func:`integrate_sde` integrates ``dx = f(x, t) dt + g(t) dW`` by Euler-Maruyama (fixed steps, a seeded
``torch.Generator``; no global random state is used). A dedicated SDE package (``torchsde``) would add adaptive and
higher-order schemes, which sampling a learned drift with a few hundred fixed steps does not need.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq import odeint

SOLVERS = ("euler", "midpoint", "rk4", "dopri5")
FIXED_SCHEMES = ("euler", "heun")

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")


def integrate(
    velocity: Field,
    x0: torch.Tensor,
    t_eval: torch.Tensor,
    *,
    n_steps: int = 100,
    solver: str = "euler",
    growth: Field | None = None,
    logw0: torch.Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Integrate ``dx/dt = velocity(x, t)`` from ``t_eval[0]`` through ``t_eval`` (increasing or decreasing).

    Fixed-step solvers take ``n_steps`` steps over ``[t_eval[0], t_eval[-1]]``. Returns ``(xs, logws)`` of shapes
    ``(len(t_eval), n, d)`` and ``(len(t_eval), n)`` (``None`` without ``growth``).
    """
    check_solver(solver)
    t_eval = t_eval.to(x0.device, x0.dtype)
    span = float((t_eval[-1] - t_eval[0]).abs())
    options = {"step_size": span / n_steps} if solver != "dopri5" and span > 0 else None
    kw = {"rtol": rtol, "atol": atol} if solver == "dopri5" else {}
    if growth is None:

        def f(t, x):
            return velocity(x, t)

        xs = odeint(f, x0, t_eval, method=solver, options=options, **kw)
        return xs, None

    lw0 = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype) if logw0 is None else logw0

    def fg(t, state):
        x, _ = state
        return velocity(x, t), growth(x, t)

    xs, lws = odeint(fg, (x0, lw0), t_eval, method=solver, options=options, **kw)
    return xs, lws


def fixed_step_mass(
    field: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x0: torch.Tensor,
    t0: torch.Tensor,
    h: torch.Tensor,
    n_steps: int,
    *,
    scheme: str = "heun",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable fixed-step integration of ``dx/dt = v(x, t)``, ``d log w / dt = g(x, t)`` from ``log w = 0``.

    For training losses that backpropagate through a few steps of the dynamics. ``field(x, t)`` returns
    ``(v, g)`` (shapes ``(n, d)`` and ``(n,)``); ``t0`` and ``h`` hold each row's start time and step size (shape
    ``(n,)``), so rows on different intervals integrate in one batch, one field evaluation per stage for all.
    ``scheme="euler"``: ``x += h v(x, t)``, one evaluation per step, first order (the log-mass integral is a left
    Riemann sum). ``scheme="heun"``: the explicit trapezoid rule, ``x' = x + h (k1 + k2) / 2`` with ``k1`` at ``(x, t)``
    and ``k2`` at the Euler predictor ``(x + h k1, t + h)``, the same for ``log w``; two evaluations per step, second
    order, so a few steps integrate the growth without the first-order bias of coarse Euler steps.
    Returns ``(x, log w)`` at ``t0 + n_steps h``.
    """
    if scheme not in FIXED_SCHEMES:
        raise ValueError(f"scheme must be one of {FIXED_SCHEMES}, got {scheme!r}.")
    x, lw = x0, torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
    hx = h[:, None]
    for i in range(int(n_steps)):
        t = t0 + i * h
        v1, g1 = field(x, t)
        if scheme == "euler":
            x, lw = x + hx * v1, lw + h * g1
            continue
        v2, g2 = field(x + hx * v1, t + h)
        x, lw = x + 0.5 * hx * (v1 + v2), lw + 0.5 * h * (g1 + g2)
    return x, lw


def sde_grid(t_start: float, t_end: float, n_steps: int, extra=()) -> list[float]:
    """``n_steps`` equal steps from ``t_start`` to ``t_end`` plus the points ``extra`` that lie between them."""
    import numpy as np

    grid = np.linspace(t_start, t_end, n_steps + 1)
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    pts = [float(v) for v in extra if lo < v < hi]
    allp = np.unique(np.concatenate([grid, pts])) if pts else np.unique(grid)
    tol = 1e-9 * max(1.0, hi - lo)
    keep = [allp[0]]
    for v in allp[1:]:
        if v - keep[-1] > tol:
            keep.append(v)
    keep = np.asarray(keep)
    return (keep if t_end >= t_start else keep[::-1]).tolist()


def integrate_sde(
    drift: Field,
    diffusion: Callable[[float], float],
    x0: torch.Tensor,
    t_eval: torch.Tensor,
    *,
    n_steps: int = 100,
    generator: torch.Generator | None = None,
    knots=(),
) -> torch.Tensor:
    """Euler-Maruyama for ``dx = drift(x, t) dt + diffusion(t) dW`` from ``t_eval[0]`` through ``t_eval``.

    ``t_eval`` is monotone (increasing, or decreasing for a backward SDE, whose ``drift`` the caller gives for the
    direction of travel). ``n_steps`` equal steps span ``[t_eval[0], t_eval[-1]]``; the points of ``t_eval`` and
    ``knots`` (times where ``diffusion`` changes) are added to the grid, so no step straddles them. A step from ``a``
    to ``b`` uses ``drift(x, a)`` and ``diffusion`` at its midpoint. Returns ``(len(t_eval), n, d)``.
    """
    te = [float(v) for v in t_eval.detach().cpu().tolist()]
    out = torch.empty((len(te), *x0.shape), dtype=x0.dtype, device=x0.device)
    out[0] = x0
    if len(te) == 1 or abs(te[-1] - te[0]) == 0:
        out[:] = x0
        return out
    grid = sde_grid(te[0], te[-1], n_steps, [*te[1:-1], *knots])
    tol = 1e-9 * max(1.0, abs(te[-1] - te[0]))
    x = x0
    k = 1
    while k < len(te) and abs(te[k] - te[0]) <= tol:
        out[k] = x
        k += 1
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        h = b - a
        ta = torch.tensor(a, dtype=x0.dtype, device=x0.device)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + drift(x, ta) * h + diffusion(0.5 * (a + b)) * abs(h) ** 0.5 * noise
        while k < len(te) and abs(te[k] - b) <= tol:
            out[k] = x
            k += 1
    while k < len(te):  # points equal to the last grid point within rounding
        out[k] = x
        k += 1
    return out
