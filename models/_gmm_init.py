"""Initial responsibilities for a Gaussian mixture: k-means, k-means++, random, random_from_data.

Random draws come from a numpy ``RandomState`` (scikit-learn's convention); the arithmetic runs
in torch on the data's device. ``random`` and ``random_from_data`` draw exactly what
scikit-learn draws from the same ``RandomState``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch


def _sq_dist_to(points: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(P, N)`` from a few points to every row of ``X`` (direct differences)."""
    return (X.unsqueeze(0) - points.unsqueeze(1)).square().sum(-1)


def _sq_dist_all(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(N, K)``: ``|x|² - 2 x·c + |c|²`` clamped at 0."""
    d2 = X.square().sum(1, keepdim=True) - 2.0 * (X @ centers.T) + centers.square().sum(1)
    return d2.clamp_min(0.0)


def kmeans_plusplus(X: torch.Tensor, k: int, rs: np.random.RandomState,
                    sample_weight: Optional[torch.Tensor] = None) -> np.ndarray:
    """Indices of ``k`` seeds: greedy k-means++ with ``2 + ⌊log k⌋`` candidates per seed."""
    n = X.shape[0]
    w = X.new_ones(n) if sample_weight is None else sample_weight
    p = w.detach().cpu().double().numpy()
    trials = 2 + int(math.log(k))
    first = int(rs.choice(n, p=p / p.sum()))
    indices = [first]
    closest = _sq_dist_to(X[first:first + 1], X)[0]
    pot = float(closest @ w)
    for _ in range(1, k):
        targets = torch.as_tensor(rs.uniform(size=trials) * pot, dtype=X.dtype, device=X.device)
        cand = torch.searchsorted(torch.cumsum(w * closest, 0), targets).clamp_max(n - 1)
        dist = torch.minimum(closest.unsqueeze(0), _sq_dist_to(X[cand], X))
        pots = dist @ w
        best = int(pots.argmin())
        pot, closest = float(pots[best]), dist[best]
        indices.append(int(cand[best]))
    return np.asarray(indices, dtype=np.int64)


def kmeans_labels(X: torch.Tensor, k: int, rs: np.random.RandomState,
                  sample_weight: Optional[torch.Tensor] = None, max_iter: int = 300,
                  tol: float = 1e-4) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds; stops when labels repeat or centers move less than
    ``tol`` times the mean feature variance (squared). Returns labels ``(N,)``."""
    w = X.new_ones(X.shape[0]) if sample_weight is None else sample_weight
    centers = X[torch.as_tensor(kmeans_plusplus(X, k, rs, sample_weight), device=X.device)].clone()
    shift_tol = tol * float(X.var(0, unbiased=False).mean())
    labels = _sq_dist_all(X, centers).argmin(1)
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype) * w.unsqueeze(1)
        counts = onehot.sum(0)
        sums = onehot.T @ X
        safe = counts.clamp_min(torch.finfo(X.dtype).tiny).unsqueeze(1)
        new = torch.where(counts.unsqueeze(1) > 0, sums / safe, centers)
        shift = float((new - centers).square().sum())
        centers = new
        new_labels = _sq_dist_all(X, centers).argmin(1)
        if torch.equal(new_labels, labels) or shift <= shift_tol:
            labels = new_labels
            break
        labels = new_labels
    return labels


def initial_resp(X: torch.Tensor, k: int, init_params: str, rs: np.random.RandomState,
                 sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Responsibilities ``(N, K)`` that the first M-step turns into initial parameters."""
    n = X.shape[0]
    if init_params == "random":
        resp = torch.as_tensor(rs.uniform(size=(n, k)), dtype=X.dtype, device=X.device)
        return resp / resp.sum(1, keepdim=True)
    resp = X.new_zeros((n, k))
    cols = torch.arange(k, device=X.device)
    if init_params == "kmeans":
        resp[torch.arange(n, device=X.device), kmeans_labels(X, k, rs, sample_weight)] = 1.0
    elif init_params == "k-means++":
        resp[torch.as_tensor(kmeans_plusplus(X, k, rs, sample_weight), device=X.device), cols] = 1.0
    elif init_params == "random_from_data":
        resp[torch.as_tensor(rs.choice(n, size=k, replace=False), device=X.device), cols] = 1.0
    else:
        raise ValueError(f"unknown init_params {init_params!r}")
    return resp
