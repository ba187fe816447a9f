"""Population encoder: a graph convolutional network over a kNN graph of cells, mean-pooled to one vector.

Plain torch (no torch-geometric). A population of ``n`` cells becomes a kNN graph (each cell linked to its ``k``
nearest neighbours, symmetrised, with self-loops); each GCN layer (Kipf & Welling 2017) computes
``H' = D^{-1/2} (A + I) D^{-1/2} H W + b`` with a sparse matrix product over the at most ``n (2k + 1)`` edges, so a
layer costs ``O(n k width)`` time and memory. Several populations are encoded in one pass as one block-diagonal graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nn import activation


@dataclass
class Graph:
    """Normalised adjacency ``D^{-1/2} (A + I) D^{-1/2}`` as a coalesced sparse COO tensor ``(n, n)``."""

    adj: torch.Tensor

    @property
    def n_nodes(self) -> int:
        return int(self.adj.shape[0])

    def to(self, device) -> Graph:
        return Graph(self.adj.to(device))


def knn_indices(x: torch.Tensor, k: int, *, chunk_size: int = 2048) -> torch.Tensor:
    """Indices ``(n, k')`` of each row's ``k' = min(k, n - 1)`` nearest other rows (Euclidean).

    Exact brute force in chunks of ``chunk_size`` rows (memory ``chunk_size x n``), done once per population.
    """
    n = x.shape[0]
    kk = min(int(k), n - 1)
    if kk <= 0:
        return torch.zeros((n, 0), dtype=torch.long, device=x.device)
    x = x.detach()
    out = []
    for s in range(0, n, chunk_size):
        d = torch.cdist(x[s : s + chunk_size], x)
        rows = torch.arange(s, min(s + chunk_size, n), device=x.device)
        d[rows - s, rows] = float("inf")
        out.append(torch.topk(d, kk, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out)


def knn_graph(x: torch.Tensor, k: int) -> Graph:
    """Symmetrised kNN graph with self-loops and GCN normalisation ``D^{-1/2} (A + I) D^{-1/2}``.

    ``k = 0`` gives self-loops only: the encoder then sees each cell alone (a DeepSets encoder). At most
    ``n (2k + 1)`` edges.
    """
    n = x.shape[0]
    dev = x.device
    nbr = knn_indices(x, k)
    rows = torch.arange(n, device=dev).repeat_interleave(nbr.shape[1])
    cols = nbr.reshape(-1)
    loops = torch.arange(n, device=dev)
    # A = A_knn OR A_knn^T (duplicates removed), plus self-loops
    key = torch.unique(torch.cat([rows * n + cols, cols * n + rows, loops * n + loops]))
    dst, src = key // n, key % n
    deg = torch.bincount(dst, minlength=n).to(x.dtype)
    dinv = deg.rsqrt()
    adj = torch.sparse_coo_tensor(torch.stack([dst, src]), dinv[dst] * dinv[src], (n, n), dtype=x.dtype,
                                  check_invariants=False)
    return Graph(adj.coalesce())


def batch_graphs(graphs: list[Graph]) -> tuple[Graph, torch.Tensor]:
    """One block-diagonal graph from several, and the mean-pooling matrix ``(n_graphs, n_nodes)`` (sparse)."""
    offs, idx, vals, prow, pcol, pval = 0, [], [], [], [], []
    for i, g in enumerate(graphs):
        idx.append(g.adj.indices() + offs)
        vals.append(g.adj.values())
        n = g.n_nodes
        nodes = torch.arange(offs, offs + n, device=g.adj.device)
        prow.append(torch.full((n,), i, dtype=torch.long, device=g.adj.device))
        pcol.append(nodes)
        pval.append(torch.full((n,), 1.0 / n, dtype=g.adj.dtype, device=g.adj.device))
        offs += n
    adj = torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(vals), (offs, offs), check_invariants=False).coalesce()
    pool = torch.sparse_coo_tensor(torch.stack([torch.cat(prow), torch.cat(pcol)]), torch.cat(pval),
                                   (len(graphs), offs), check_invariants=False).coalesce()
    return Graph(adj), pool


class GCNLayer(nn.Module):
    """One graph convolution ``H' = Â H W + b`` with ``Â`` the normalised adjacency of :func:`knn_graph`."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h: torch.Tensor, g: Graph) -> torch.Tensor:
        return torch.sparse.mm(g.adj, self.lin(h)) + self.bias


class PopulationEncoder(nn.Module):
    """``phi({x_j})``: ``depth`` GCN layers over the population's kNN graph, then the mean over its cells.

    Hidden layers use ``act``; the last layer is linear, as in Meta Flow Matching (Atanackovic et al. 2025,
    arXiv:2408.14608), so the embedding is the mean of the last layer's node features (dimension ``width``).
    """

    def __init__(self, dim: int, *, width: int = 64, depth: int = 3, k: int = 10, act: str = "relu") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"the population encoder needs at least one GCN layer, got depth={depth}.")
        self.k = int(k)
        self.out_dim = int(width)
        dims = [dim] + [width] * depth
        self.layers = nn.ModuleList(GCNLayer(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = activation(act)()

    def graph(self, x: torch.Tensor) -> Graph:
        return knn_graph(x, self.k)

    def encode(self, x: torch.Tensor, g: Graph, pool: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of the nodes ``x`` of graph ``g``: ``(1, width)``, or ``(n_graphs, width)`` with the pooling
        matrix of :func:`batch_graphs`."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, g)
            if i < len(self.layers) - 1:
                h = self.act(h)
        if pool is None:
            return h.mean(0, keepdim=True)
        return torch.sparse.mm(pool, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``(1, width)`` of one population's cells ``x`` (graph built on the fly)."""
        return self.encode(x, self.graph(x))
