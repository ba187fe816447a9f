"""Networks: a time-conditioned MLP vector field and a growth head."""

from __future__ import annotations

import torch
from torch import nn

_ACT = {"selu": nn.SELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def activation(name: str) -> type[nn.Module]:
    if name not in _ACT:
        raise ValueError(f"activation must be one of {sorted(_ACT)}, got {name!r}.")
    return _ACT[name]


def mlp(d_in: int, d_out: int, width: int, depth: int, act: str) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units."""
    A = activation(act)
    layers: list[nn.Module] = [nn.Linear(d_in, width), A()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), A()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class VectorField(nn.Module):
    """``v(x, t[, c])``: an MLP on the concatenation of the state, the time and an optional condition vector.

    ``n_out`` outputs (``dim`` by default); SB-CFM uses ``2 * dim``: the drift and the score from one trunk.
    """

    def __init__(self, dim: int, *, width: int = 64, depth: int = 3, act: str = "selu", cond_dim: int = 0,
                 n_out: int | None = None) -> None:
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        self.net = mlp(dim + 1 + cond_dim, dim if n_out is None else n_out, width, depth, act)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        parts = [x, t]
        if self.cond_dim:
            if cond is None:
                raise ValueError("this vector field needs a condition vector")
            parts.append(cond.expand(x.shape[0], -1) if cond.dim() == 1 or cond.shape[0] == 1 else cond)
        return self.net(torch.cat(parts, dim=1))


class GrowthHead(nn.Module):
    """``g(x, t)``: a scalar growth rate per cell (an MLP like :class:`VectorField`, one output)."""

    def __init__(self, dim: int, *, width: int = 64, depth: int = 3, act: str = "selu", cond_dim: int = 0) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.net = mlp(dim + 1 + cond_dim, 1, width, depth, act)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        parts = [x, t] + ([cond.expand(x.shape[0], -1)] if self.cond_dim and cond is not None else [])
        return self.net(torch.cat(parts, dim=1)).squeeze(-1)
