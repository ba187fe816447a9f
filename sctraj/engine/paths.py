"""Conditional probability paths between coupled pairs (Tong et al. 2023, Table 1).

Each path maps ``(x0, x1, s, noise)`` with local interval time ``s`` in [0, 1] to the point ``x_s`` and its
conditional velocity ``u_s = d x_s / d s`` (noise held fixed).
"""

from __future__ import annotations

import torch


class StraightPath:
    """Straight path with constant Gaussian width: ``x_s = (1-s) x0 + s x1 + sigma * eps``, ``u_s = x1 - x0``.

    ``sigma = 0`` gives the deterministic interpolant of rectified flow / I-CFM with sigma -> 0.
    """

    def __init__(self, sigma: float = 0.0) -> None:
        self.sigma = float(sigma)

    def mean(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return (1 - s) * x0 + s * x1

    def std(self, s: torch.Tensor) -> torch.Tensor:
        return torch.full_like(s, self.sigma)

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if noise is None:
            noise = torch.zeros_like(x0)
        xt = self.mean(x0, x1, s) + self.std(s).reshape(-1, 1) * noise
        return xt, self.velocity(x0, x1, s, xt)

    def velocity(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        return x1 - x0


class BrownianBridgePath(StraightPath):
    """Brownian bridge of diffusion ``sigma`` pinned at ``x0`` and ``x1`` (SB-CFM).

    ``x_s = (1-s) x0 + s x1 + sigma sqrt(s (1-s)) eps`` and
    ``u_s = (1 - 2s) / (2 s (1-s)) (x_s - mu_s) + (x1 - x0)``, the conditional velocity of Tong et al. 2023, Prop. 3.4.
    """

    def std(self, s: torch.Tensor) -> torch.Tensor:
        return self.sigma * torch.sqrt(s * (1 - s))

    def velocity(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        s2 = s.reshape(-1, 1)
        coef = (1 - 2 * s2) / (2 * s2 * (1 - s2)).clamp_min(1e-6)
        return coef * (xt - self.mean(x0, x1, s)) + (x1 - x0)
