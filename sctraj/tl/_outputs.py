"""Size policy of the per-cell outputs of ``fit_flow``: trajectories are opt-in when they would be large."""

from __future__ import annotations

import numpy as np

DEFAULT_N_GRID = 10


def check_trajectory_n_grid(n_grid) -> None:
    if n_grid is None:
        return
    if isinstance(n_grid, bool) or not isinstance(n_grid, int | np.integer) or n_grid < 0 or n_grid == 1:
        raise ValueError(
            f"trajectory_n_grid must be None (automatic), 0 (no trajectories) or an integer >= 2, got {n_grid!r}."
        )


def trajectory_grid(n_grid: int | None, n_obs: int, dim: int, key_added: str, itemsize: int = 4) -> int:
    """Points per cell to write: ``n_grid`` when given; by default 10 unless the array would be too large.

    ``itemsize``: bytes per value (8 when the embedding is float64: trajectories keep its precision)."""
    from .._settings import logger, settings

    if n_grid is not None:
        return int(n_grid)
    mb = n_obs * DEFAULT_N_GRID * dim * itemsize / 2**20
    if mb <= settings.trajectory_max_mb:
        return DEFAULT_N_GRID
    logger.warning(
        f"Not writing obsm[{key_added + '_trajectory'!r}]: {n_obs} cells x {DEFAULT_N_GRID} points x {dim} dims "
        f"would take {mb:.0f} MB (more than sctraj.settings.trajectory_max_mb = {settings.trajectory_max_mb:g}). "
        f"Pass trajectory_n_grid={DEFAULT_N_GRID} to write them anyway, or fit on fewer dims (n_dims=...)."
    )
    return 0
