"""Data-dependent diagonal Riemannian metrics for Metric Flow Matching (Kapusniak et al. 2024, arXiv:2405.14780).

Both metrics have the form ``G(x) = (diag(h(x)) + eps)^-alpha`` (``alpha = 1`` in the paper's Eq. 9; the reference
code's ``alpha_metric``) where ``h(x) >= 0`` is large on the data and small away
from it, so that paths minimising the kinetic energy ``xdot^T G(x) xdot`` prefer to travel through populated regions
(Sec. 4 of the paper):

* :class:`LANDMetric` (locally adaptive normal distribution, Arvanitidis et al. 2016): the kernel-weighted local
  variance ``h_a(x) = sum_i exp(-||x - x_i||^2 / (2 gamma^2)) (x_i,a - x_a)^2`` over the cells ``x_i``, summed over
  landmarks: the cells themselves, or anchors that each pool the cells nearest to them (as a Gaussian with their
  count, centroid and variance, summed in closed form). Cost ``O(n_landmarks)`` per point: meant for low dimensions,
  where a single bandwidth ``gamma`` is meaningful.
* :class:`RBFMetric` (Sec. 4.2 / App. of the paper): ``h(x) = sum_k w_k exp(-lambda_k / 2 ||x - c_k||^2)`` over
  k-means centres ``c_k`` (scikit-learn), with per-centre bandwidths ``lambda_k = 1 / (2 (kappa sigma_k)^2)`` from
  the spread ``sigma_k`` of each cluster and non-negative weights ``w_k`` fitted so that ``h(x_i) ~ 1`` on the data
  (non-negative least squares), and the reference code's adaptive ``eps`` from the fit's loss on held-out cells.
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

#: Kernel log-weights are floored here before ``exp``. Far landmarks have log-weights of -100 to -1000; float32 ``exp``
#: of an argument below about -87 underflows to a denormal or zero by a slow path (9 ns per element against 0.6 on
#: AVX-512), and the denormal results slow every later product with them (2-4x). ``exp(-80) = 1.8e-35``: flooring
#: changes ``h`` by less than ``1e-31`` per landmark and the gradient by as little, and made the whole stage-1 kernel
#: several times faster (``benchmarks/results/speed_metricfm.md``).
LOG_FLOOR = -80.0


def resolve_metric(metric: str, dim: int, land_max_dims: int) -> str:
    """``"auto"`` picks LAND up to ``land_max_dims`` dimensions and RBF above."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if metric == "auto":
        return "land" if dim <= land_max_dims else "rbf"
    return metric


class LANDMetric(nn.Module):
    """LAND metric over ``n_landmarks`` landmarks (cells, or anchors that pool cells); see :meth:`h`.

    With at most ``n_landmarks`` cells every cell is a landmark. With more, ``n_landmarks`` cells are drawn uniformly
    and either (``pool=True``) every cell is pooled into the drawn cell nearest to it, the landmark becoming an
    *anchor* at its pool's centroid that carries the pool's cell count and per-dimension variance, or
    (``pool=False``) the drawn cells stand alone and ``h`` is rescaled by ``n / n_landmarks``. Pooling keeps the total
    kernel mass and the local variance term exact, since ``sum_{i in pool} (x_ia - x_a)^2 = n_j ((m_ja - x_a)^2 +
    var_ja)`` for the pool's centroid ``m_j``; the only approximation is that the pool's cells share the kernel weight
    of their centroid, and the closed form of :meth:`h` for a Gaussian pool corrects most of that. A uniform subsample
    instead estimates the sum from fewer cells (more variance, the same cost). Measured against the sum over all
    cells of an interval (median error of ``log G`` at points between random cells): 512 anchors 0.004-0.005 on
    hematopoiesis (2-d, 5,200-9,600 cells) where a subsample of 1,024 cells is off by 0.075-0.094; on EB 5-d (1,100
    cells) 512 anchors 0.067, a subsample of 1,024 cells 0.048.

    Parameters
    ----------
    dim
        Number of dimensions.
    n_landmarks
        Number of landmarks (fixed at construction; filled by :meth:`fit`).
    gamma
        Kernel bandwidth.
    eps
        ``eps`` of ``G = (diag(h) + eps)^-alpha`` (the paper's ``rho``); bounds ``G`` by ``eps^-alpha``.
    alpha
        Exponent of the metric, ``G = (diag(h) + eps)^-alpha`` (the reference code's ``alpha_metric``; 1 is the
        paper's Eq. 9, the reference's single-cell LAND configurations use 2).
    pool
        Pool all cells into the landmarks (anchors) rather than rescale a subsample, when there are more cells than
        landmarks.
    """

    kind = "land"

    def __init__(self, dim: int, n_landmarks: int, *, gamma: float = 0.2, eps: float = 1e-3, alpha: float = 1.0,
                 pool: bool = False) -> None:
        super().__init__()
        if gamma <= 0 or eps <= 0 or alpha <= 0:
            raise ValueError(f"LAND needs gamma > 0, eps > 0 and alpha > 0, got gamma={gamma!r}, eps={eps!r}, "
                             f"alpha={alpha!r}.")
        self.gamma, self.eps, self.alpha, self.pool = float(gamma), float(eps), float(alpha), bool(pool)
        self.register_buffer("landmarks", torch.zeros(n_landmarks, dim))
        self.register_buffer("scale", torch.ones(()))
        # cells each landmark stands for and their per-dimension variance about it (1 and 0 for a plain cell)
        self.register_buffer("counts", torch.ones(n_landmarks))
        self.register_buffer("spread", torch.zeros(n_landmarks, dim))

    @staticmethod
    def upgrade_state_dict(state_dict: dict, prefix: str = "") -> None:
        """Give a LAND metric saved before anchors existed (``prefix + "landmarks"`` without ``counts`` / ``spread``)
        the buffers of plain landmarks, count 1 and no spread, in place: it then computes exactly what it did."""
        L = state_dict.get(prefix + "landmarks")
        if L is not None and prefix + "counts" not in state_dict:
            state_dict[prefix + "counts"] = L.new_ones(L.shape[0])
            state_dict[prefix + "spread"] = L.new_zeros(L.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, X: np.ndarray, rng: np.random.Generator) -> LANDMetric:
        """Landmarks from the cells ``X``: all of them when they fit, else a uniform draw (pooled or rescaled)."""
        n = self.landmarks.shape[0]
        dev, dt = self.landmarks.device, self.landmarks.dtype
        idx = np.arange(len(X)) if len(X) == n else np.sort(rng.choice(len(X), size=n, replace=False))
        L = torch.as_tensor(np.asarray(X)[idx], dtype=dt, device=dev)
        self.counts.fill_(1.0)
        self.spread.zero_()
        self.scale.fill_(len(X) / n)
        if self.pool and len(X) > n:
            Xt = torch.as_tensor(np.asarray(X), dtype=dt, device=dev)
            near = torch.cat([torch.cdist(Xt[s : s + 4096], L).argmin(1) for s in range(0, len(Xt), 4096)])
            cnt = torch.bincount(near, minlength=n).to(dt)
            mean = torch.zeros_like(L).index_add_(0, near, Xt) / cnt.clamp_min(1)[:, None]
            sq = torch.zeros_like(L).index_add_(0, near, Xt * Xt) / cnt.clamp_min(1)[:, None]
            L = torch.where(cnt[:, None] > 0, mean, L)
            self.spread.copy_((sq - mean * mean).clamp_min(0.0) * (cnt[:, None] > 0))
            self.counts.copy_(cnt)
            self.scale.fill_(1.0)
        self.landmarks.copy_(L)
        return self

    def h(self, x: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """``h(x)`` of shape ``(n, dim)``; memory ``chunk_size x n_landmarks`` (never ``x n_landmarks x dim``).

        Each landmark ``j`` stands for ``n_j`` cells spread as ``N(m_j, diag(v_j))`` (a plain cell: ``n_j = 1``,
        ``v_j = 0``).
        The expected kernel and local variance of such a pool have closed forms: with ``r_ja = gamma^2 / (gamma^2 +
        v_ja)``, ``E[w] = prod_a sqrt(r_ja) exp(-(x_a - m_ja)^2 / (2 (gamma^2 + v_ja)))`` and
        ``E[w (x_ia - x_a)^2] = E[w] (r_ja^2 (m_ja - x_a)^2 + r_ja v_ja)``, so ``h_a(x) = sum_j n_j E[w_j] (...)``.
        With ``v = 0`` this is the plain sum over cells. The log weights are one product of ``[x^2, x]`` with a
        ``(2 d, n_anchors)`` matrix, and ``h`` one product with ``(n_anchors, 3 d)`` moments, as for plain landmarks.
        """
        ops = self._operands()
        return torch.cat([_LANDKernel.apply(x[s : s + chunk_size], *ops) for s in range(0, x.shape[0], chunk_size)])

    @torch.no_grad()
    def _operands(self) -> tuple:
        """The kernel's landmark matrices, rebuilt only when a buffer has changed (fit, load, a move to another device):
        rebuilding them on every call was a fifth of the LAND cost of a stage-1 step (512 anchors, 256 points)."""
        bufs = (self.landmarks, self.spread, self.counts, self.scale)
        key = tuple((b.data_ptr(), b._version) for b in bufs) + (self.gamma,)
        if getattr(self, "_cache", (None,))[0] != key:
            m, v, n = self.landmarks, self.spread, self.counts[:, None]
            g2 = self.gamma**2
            A = 0.5 / (g2 + v)  # (L, d)
            r = g2 / (g2 + v)
            bias = (0.5 * torch.log(r) - m * m * A).sum(1)[None] + torch.log(n.clamp_min(1e-30)).T
            PT = torch.cat([-A, 2 * m * A], 1).T.contiguous()  # logw = [x^2, x] @ PT + bias
            r2 = r * r
            momT = torch.cat([r2 * m * m + r * v, r2 * m, r2], 1).T.contiguous()  # (3 d, L)
            QT = torch.cat([2 * m * A, A], 1).T.contiguous()  # dlogw/dx_a = (2 m A)_ja - 2 x_a A_ja
            self._cache = (key, (PT, momT, QT, bias, float(self.scale)))
        return self._cache[1]

    def inverse_h(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``G(x) = (diag(h(x)) + eps)^-alpha``, shape ``(n, dim)``."""
        g = 1.0 / (self.h(x) + self.eps)
        return g if self.alpha == 1 else g**self.alpha

    def energy(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v^T G(x) v`` per point."""
        return (v * v * self.inverse_h(x)).sum(-1)


class _LANDKernel(torch.autograd.Function):
    """LAND's ``h(x)`` for a block of points (:meth:`LANDMetric.h`), with a hand-written backward in ``x`` only.

    Forward: the log weights ``log n_j E[w_j](x)`` as one ``addmm`` of ``[x^2, x]`` with ``PT`` (the landmark terms
    in ``bias``), floored at :data:`LOG_FLOOR` and exponentiated in place, then one product with the moments gives
    ``h_a = M1_a - 2 x_a M2_a + x_a^2 M3_a``. Backward, with ``G = dL/dh`` (zero where ``h`` was clamped at 0):
    ``dL/dlogw = (dL/dwm @ moments) * w`` (one product) and ``dlogw_j / dx_a = 2 m_ja A_ja - 2 x_a A_ja`` (one
    product with ``QT``), plus the direct term of ``x`` in ``h``. Autograd's own graph of the plain-cell forward kept
    four more ``(b, n_landmarks)`` temporaries and the clamp's masks and took about twice as long (2.5 ms for 256
    points x 1,024 landmarks in 5-d, forward and backward, against 1.3 ms); gradients are checked against autograd
    and by ``gradcheck`` in the tests. The landmark matrices are passed transposed and contiguous: the narrow
    products were 2-3x faster in that layout on CPU. Floored entries get the gradient ``w`` itself (below 1e-34)
    instead of 0: the derivative of the unfloored kernel, to that precision.
    """

    @staticmethod
    def forward(ctx, x, PT, momT, QT, bias, scale):
        d = x.shape[1]
        w = torch.addmm(bias, torch.cat([x * x, x], 1), PT).clamp_(LOG_FLOOR, None).exp_()
        wm = (momT @ w.T).T  # (b, 3 d)
        hx = wm[:, :d] - 2 * x * wm[:, d : 2 * d] + x * x * wm[:, 2 * d :]
        pos = hx > 0
        ctx.save_for_backward(x, momT, QT, w, wm, pos)
        ctx.scale = scale
        return hx.clamp_min_(0.0).mul_(scale)

    @staticmethod
    def backward(ctx, g):
        x, momT, QT, w, wm, pos = ctx.saved_tensors
        d = x.shape[1]
        G = g * pos * ctx.scale
        dwm = torch.cat([G, -2 * x * G, G * x * x], 1)
        dx = G * (2 * x * wm[:, 2 * d :] - 2 * wm[:, d : 2 * d])
        q = torch.mm((dwm @ momT).mul_(w), QT.T)
        dx += q[:, :d] - 2 * x * q[:, d:]
        return dx, None, None, None, None, None


class RBFMetric(nn.Module):
    """RBF metric with ``n_centers`` k-means centres (fixed at construction; filled by :meth:`fit`).

    ``h(x) = sum_k w_k exp(-lambda_k / 2 ||x - c_k||^2)`` and ``G(x) = (h(x) + eps)^-alpha`` in every dimension, as in
    the paper (Sec. 4.2) and its reference code (``mfm/geo_metrics/rbf.py``): k-means centres ``c_k``, bandwidths
    ``lambda_k = 1 / (2 (kappa sigma_k)^2)`` from the spread ``sigma_k`` of each cluster, non-negative weights ``w_k``
    minimising ``mean (1 - h(x_i))^2`` (see :meth:`fit`), and the adaptive
    ``eps = (1 - L_val) / eps_divisor`` from the final held-out loss ``L_val`` (the reference's negative ``rho``:
    ``rho = -2.75`` in its 50/100-d configurations, which gives ``eps`` of about 0.3 when the fit is good).

    Parameters
    ----------
    dim
        Number of dimensions.
    n_centers
        Number of k-means centres ``K``.
    kappa
        Bandwidth multiplier: ``lambda_k = 1 / (2 (kappa sigma_k)^2)``.
    eps
        ``eps`` of ``G = (h + eps)^-alpha``, or ``None`` for the adaptive value set by :meth:`fit`.
    alpha
        Exponent of the metric (the reference's ``alpha_metric``; 1 in its RBF configurations).
    eps_divisor
        Divisor of the adaptive ``eps``.
    """

    kind = "rbf"

    def __init__(
        self, dim: int, n_centers: int, *, kappa: float = 1.0, eps: float | None = 1e-3, alpha: float = 1.0,
        eps_divisor: float = 2.75,
    ) -> None:
        super().__init__()
        if kappa <= 0 or (eps is not None and eps <= 0) or alpha <= 0 or eps_divisor <= 0:
            raise ValueError(f"RBF metric needs kappa > 0, eps > 0 (or None), alpha > 0 and eps_divisor > 0, got "
                             f"kappa={kappa!r}, eps={eps!r}, alpha={alpha!r}, eps_divisor={eps_divisor!r}.")
        self.kappa, self.alpha, self.eps_divisor = float(kappa), float(alpha), float(eps_divisor)
        self.adaptive_eps = eps is None
        self.register_buffer("centers", torch.zeros(n_centers, dim))
        self.register_buffer("lam", torch.ones(n_centers))
        self.register_buffer("weights", torch.ones(n_centers))
        self.register_buffer("eps_value", torch.tensor(1e-3 if eps is None else float(eps)))

    @property
    def eps(self) -> float:
        return float(self.eps_value)

    def fit(
        self, X: np.ndarray, rng: np.random.Generator, *, max_kmeans_cells: int = 20_000, max_fit_cells: int = 20_000,
        val_fraction: float = 0.1,
    ) -> RBFMetric:
        """k-means centres and bandwidths, then the weights, then the adaptive ``eps`` from held-out cells.

        A fraction ``val_fraction`` of the cells (at most 2,000) is held out. The weights minimise
        ``mean (1 - h(x_i))^2`` over the other cells subject to ``w >= 0``: the reference code learns them with Adam
        (initialised uniformly in [0, 1], clamped at ``1e-4``, early-stopped on held-out cells); the problem is a
        non-negative least-squares problem in ``w``, solved here exactly (:func:`scipy.optimize.nnls`, on at most
        ``max_fit_cells`` cells; weights floored at ``1e-4`` as in the reference), which costs one solve instead of
        thousands of steps and reaches the minimum Adam approaches. The held-out loss ``L_val`` of those weights gives
        the adaptive ``eps``. k-means runs on at most ``max_kmeans_cells`` cells.
        """
        from scipy.optimize import nnls
        from sklearn.cluster import KMeans

        K, dim = self.centers.shape
        X = np.asarray(X, np.float32)
        n = len(X)
        perm = rng.permutation(n)
        n_val = min(max(int(round(val_fraction * n)), 1), 2000) if n > 1 else 0
        val, tr = perm[:n_val], perm[n_val:] if n - n_val > 0 else perm
        fit_idx = tr if len(tr) <= max_kmeans_cells else rng.choice(tr, max_kmeans_cells, False)
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
        with torch.no_grad():
            fit_rows = tr if len(tr) <= max_fit_cells else rng.choice(tr, max_fit_cells, False)
            Phi = self._phi(torch.as_tensor(X[fit_rows], device=dev)).double().cpu().numpy()
            w, _ = nnls(Phi, np.ones(len(fit_rows)), maxiter=50 * K)
            best_w = torch.as_tensor(np.maximum(w, 1e-4), dtype=torch.float32, device=dev)
            Xv = torch.as_tensor(X[val] if n_val else X[fit_rows], device=dev)
            best = float(((1.0 - self._phi(Xv) @ best_w) ** 2).mean())
        with torch.no_grad():
            self.weights.copy_(best_w)
            if self.adaptive_eps:
                # the reference's rule; a failed fit (held-out loss >= 1) falls back to a small positive eps
                self.eps_value.fill_(max((1.0 - best) / self.eps_divisor, 1e-3))
        self.val_loss = best
        return self

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, self.centers).pow(2)
        return torch.exp((-0.5 * self.lam * d2).clamp_min(LOG_FLOOR))

    def _h(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._phi(x) @ w

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` of shape ``(n, dim)`` (the same value in every dimension)."""
        return self._h(x, self.weights).unsqueeze(-1).expand(-1, x.shape[-1])

    def _g(self, x: torch.Tensor) -> torch.Tensor:
        g = 1.0 / (self._h(x, self.weights) + self.eps_value)
        return g if self.alpha == 1 else g**self.alpha

    def inverse_h(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``G(x) = (diag(h(x)) + eps)^-alpha``, shape ``(n, dim)``."""
        return self._g(x).unsqueeze(-1).expand(-1, x.shape[-1])

    def energy(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v^T G(x) v`` per point."""
        return (v * v).sum(-1) * self._g(x)
