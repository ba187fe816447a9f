"""Data-dependent diagonal Riemannian metrics for Metric Flow Matching (Kapusniak et al. 2024, arXiv:2405.14780).

Both metrics have the form ``G(x) = (diag(h(x)) + eps)^-1`` where ``h(x) >= 0`` is large on the data and small away
from it, so that paths minimising the kinetic energy ``xdot^T G(x) xdot`` prefer to travel through populated regions
(Sec. 4 of the paper):

* :class:`LANDMetric` (locally adaptive normal distribution, Arvanitidis et al. 2016): the kernel-weighted local
  variance ``h_a(x) = sum_i exp(-||x - x_i||^2 / (2 gamma^2)) (x_i,a - x_a)^2`` over landmark cells ``x_i``.
  Cost ``O(n_landmarks)`` per point: meant for low dimensions, where a single bandwidth ``gamma`` is meaningful.
* :class:`RBFMetric` (Sec. 4.2 / App. of the paper): ``h(x) = sum_k w_k exp(-lambda_k / 2 ||x - c_k||^2)`` over
  k-means centres ``c_k`` (scikit-learn), with per-centre bandwidths ``lambda_k = 1 / (2 (kappa sigma_k)^2)`` from
  the spread ``sigma_k`` of each cluster and non-negative weights ``w_k`` fitted so that ``h(x_i) ~ 1`` on the data
  (non-negative least squares).
  Cost ``O(K)`` per point whatever the number of cells: meant for higher dimensions. The paper writes per-dimension
  weights ``w_{a,k}``; since every dimension regresses the same target (1) on the same features, the per-dimension
  solutions coincide, and one weight vector shared by all dimensions is used.

Every data-dependent quantity is a registered buffer whose shape is fixed at construction, so metrics are saved and
restored with the state dict of the method that owns them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

METRICS = ("auto", "land", "rbf")


def resolve_metric(metric: str, dim: int, land_max_dims: int) -> str:
    """``"auto"`` picks LAND up to ``land_max_dims`` dimensions and RBF above."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if metric == "auto":
        return "land" if dim <= land_max_dims else "rbf"
    return metric


class LANDMetric(nn.Module):
    """LAND metric over ``n_landmarks`` cells; ``h`` is scaled by ``scale`` (cells represented per landmark).

    Parameters
    ----------
    dim
        Number of dimensions.
    n_landmarks
        Number of landmark cells (fixed at construction; filled by :meth:`fit`).
    gamma
        Kernel bandwidth.
    eps
        ``eps`` of ``G = (diag(h) + eps)^-1`` (the paper's ``rho``); bounds ``G`` by ``1 / eps``.
    """

    kind = "land"

    def __init__(self, dim: int, n_landmarks: int, *, gamma: float = 0.2, eps: float = 1e-3) -> None:
        super().__init__()
        if gamma <= 0 or eps <= 0:
            raise ValueError(f"LAND needs gamma > 0 and eps > 0, got gamma={gamma!r}, eps={eps!r}.")
        self.gamma, self.eps = float(gamma), float(eps)
        self.register_buffer("landmarks", torch.zeros(n_landmarks, dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, X: np.ndarray, rng: np.random.Generator) -> LANDMetric:
        """Take ``n_landmarks`` cells of ``X`` (all of them when they fit) as landmarks."""
        n = self.landmarks.shape[0]
        idx = np.arange(len(X)) if len(X) == n else np.sort(rng.choice(len(X), size=n, replace=False))
        self.landmarks.copy_(torch.as_tensor(X[idx], dtype=self.landmarks.dtype))
        self.scale.fill_(len(X) / n)
        return self

    def h(self, x: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """``h(x)`` of shape ``(n, dim)``; memory ``chunk_size x n_landmarks`` (never ``x n_landmarks x dim``).

        Uses ``sum_i w_i (x_i - x)^2 = sum_i w_i x_i^2 - 2 x sum_i w_i x_i + x^2 sum_i w_i`` per dimension, i.e. three
        matrix products with the kernel matrix, which is much cheaper to differentiate than the direct form.
        """
        L = self.landmarks
        L2 = L * L
        sq = L2.sum(1)
        out = []
        for s in range(0, x.shape[0], chunk_size):
            xc = x[s : s + chunk_size]
            d2 = ((xc * xc).sum(1, keepdim=True) + sq[None] - 2 * xc @ L.T).clamp_min(0.0)
            w = torch.exp(-d2 / (2 * self.gamma**2))  # (b, N)
            hx = w @ L2 - 2 * xc * (w @ L) + xc * xc * w.sum(1, keepdim=True)
            out.append(hx.clamp_min(0.0) * self.scale)
        return torch.cat(out)

    def inverse_h(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``G(x) = (diag(h(x)) + eps)^-1``, shape ``(n, dim)``."""
        return 1.0 / (self.h(x) + self.eps)

    def energy(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v^T G(x) v`` per point."""
        return (v * v * self.inverse_h(x)).sum(-1)


class RBFMetric(nn.Module):
    """RBF metric with ``n_centers`` k-means centres (fixed at construction; filled by :meth:`fit`).

    Parameters
    ----------
    dim
        Number of dimensions.
    n_centers
        Number of k-means centres ``K``.
    kappa
        Bandwidth multiplier: ``lambda_k = 1 / (2 (kappa sigma_k)^2)``.
    eps
        ``eps`` of ``G = (diag(h) + eps)^-1``.
    """

    kind = "rbf"

    def __init__(self, dim: int, n_centers: int, *, kappa: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__()
        if kappa <= 0 or eps <= 0:
            raise ValueError(f"RBF metric needs kappa > 0 and eps > 0, got kappa={kappa!r}, eps={eps!r}.")
        self.kappa, self.eps = float(kappa), float(eps)
        self.register_buffer("centers", torch.zeros(n_centers, dim))
        self.register_buffer("lam", torch.ones(n_centers))
        self.register_buffer("weights", torch.ones(n_centers))

    def fit(
        self, X: np.ndarray, rng: np.random.Generator, *, max_kmeans_cells: int = 50_000, max_fit_cells: int = 20_000
    ) -> RBFMetric:
        """k-means centres, per-centre bandwidths, then non-negative weights minimising ``mean (1 - h(x_i))^2``.

        The paper fits the weights of this RBF network by gradient descent on the same objective with ``w >= 0``;
        it is a non-negative least-squares problem in ``w``, solved here exactly (:func:`scipy.optimize.nnls`) on
        at most ``max_fit_cells`` cells, and weights are floored at ``1e-4``.
        """
        from scipy.optimize import nnls
        from sklearn.cluster import KMeans

        K, dim = self.centers.shape
        X = np.asarray(X, np.float32)
        fit_idx = np.arange(len(X)) if len(X) <= max_kmeans_cells else rng.choice(len(X), max_kmeans_cells, False)
        km = KMeans(n_clusters=K, n_init=1, random_state=int(rng.integers(2**31 - 1)))
        Xf = X[fit_idx]
        labels = km.fit_predict(Xf)
        C = km.cluster_centers_.astype(np.float32)
        sig = np.zeros(K)
        counts = np.bincount(labels, minlength=K)
        for k in range(K):
            if counts[k] > 1:
                # root of the mean (over dimensions) within-cluster variance
                sig[k] = np.sqrt(((Xf[labels == k] - C[k]) ** 2).mean())
        ok = sig > 0
        # singleton / degenerate clusters borrow the smallest positive spread (shapes must not depend on the data)
        sig[~ok] = sig[ok].min() if ok.any() else 1.0
        lam = 1.0 / (2.0 * (self.kappa * sig) ** 2)
        dev = self.centers.device
        with torch.no_grad():
            self.centers.copy_(torch.as_tensor(C, device=dev))
            self.lam.copy_(torch.as_tensor(lam, dtype=torch.float32, device=dev))
            idx = np.arange(len(X)) if len(X) <= max_fit_cells else rng.choice(len(X), max_fit_cells, False)
            d2 = torch.cdist(torch.as_tensor(X[idx], device=dev), self.centers).pow(2)
            Phi = torch.exp(-0.5 * self.lam * d2).double().cpu().numpy()
            w, _ = nnls(Phi, np.ones(len(idx)), maxiter=50 * K)
            self.weights.copy_(torch.as_tensor(np.maximum(w, 1e-4), dtype=torch.float32, device=dev))
        return self

    def _h(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, self.centers).pow(2)
        return torch.exp(-0.5 * self.lam * d2) @ w

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` of shape ``(n, dim)`` (the same value in every dimension)."""
        return self._h(x, self.weights).unsqueeze(-1).expand(-1, x.shape[-1])

    def inverse_h(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``G(x) = (diag(h(x)) + eps)^-1``, shape ``(n, dim)``."""
        return 1.0 / (self.h(x) + self.eps)

    def energy(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v^T G(x) v`` per point."""
        return (v * v).sum(-1) / (self._h(x, self.weights) + self.eps)
