"""ODE integration with torchdiffeq, optionally augmented with the log-mass of each cell.

With a growth rate ``g(x, t)`` the state is ``(x, log w)`` and ``d log w / dt = g(x, t)``: the mass of a cell grows as
``w(t) = w(0) exp(int g dt)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq import odeint

SOLVERS = ("euler", "midpoint", "rk4", "dopri5")

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
