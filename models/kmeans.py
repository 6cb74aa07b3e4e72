"""k-means++ seeding, Lloyd's k-means and the initial responsibilities of a Gaussian mixture, on
torch tensors batched over a leading dimension of datasets ``(B, N, D)``.

Random draws come from :class:`NumpyDraws` (a numpy ``RandomState``, scikit-learn's convention:
with one dataset, exactly the numbers scikit-learn draws) or :class:`TorchDraws` (a
``torch.Generator`` on the data's device, every dataset at once).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch


class NumpyDraws:
    """Draws from a numpy ``RandomState``, dataset after dataset, as scikit-learn draws them."""

    def __init__(self, rs: np.random.RandomState) -> None:
        self.rs = rs

    def weighted_index(self, w: torch.Tensor) -> torch.Tensor:
        """One row index per dataset, with probability ∝ ``w`` ``(B, N)``."""
        rows = w.detach().cpu().double().numpy()
        return torch.as_tensor([int(self.rs.choice(len(p), p=p / p.sum())) for p in rows], device=w.device)

    def uniform(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.rs.uniform(size=shape), dtype=like.dtype, device=like.device)

    def distinct_indices(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """``k`` distinct row indices per dataset, uniformly (scikit-learn's ``random_from_data``)."""
        b, n = w.shape
        return torch.as_tensor(np.stack([self.rs.choice(n, size=k, replace=False) for _ in range(b)]), device=w.device)


class TorchDraws:
    """Draws from a ``torch.Generator``, every dataset in one call."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen

    def weighted_index(self, w: torch.Tensor) -> torch.Tensor:
        total = w.sum(-1, keepdim=True)
        return torch.multinomial(torch.where(total > 0, w, torch.ones_like(w)), 1, generator=self.gen).squeeze(-1)

    def uniform(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, dtype=like.dtype, device=like.device)

    def distinct_indices(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """``k`` distinct row indices per dataset, with probability ∝ ``w`` (zero-weight padding never)."""
        return torch.multinomial(w, k, replacement=False, generator=self.gen)


def _sq_dist_to(points: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(B, P, N)`` from a few points ``(B, P, D)`` to every row of ``X`` (direct differences)."""
    return (X.unsqueeze(1) - points.unsqueeze(2)).square().sum(-1)


def _sq_dist_all(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(B, N, C)``: ``|x|² - 2 x·c + |c|²`` clamped at 0."""
    d2 = X.square().sum(-1, keepdim=True) - 2.0 * X @ centers.transpose(-1, -2) + centers.square().sum(-1).unsqueeze(-2)
    return d2.clamp_min(0.0)


def _weights(X: torch.Tensor, sample_weight: Optional[torch.Tensor]) -> torch.Tensor:
    return X.new_ones(X.shape[:2]) if sample_weight is None else sample_weight


def kmeans_plusplus(X: torch.Tensor, k: int, draws, sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Seed indices ``(B, k)``: greedy k-means++ (``2 + ⌊log k⌋`` candidates per seed, the one that
    lowers the potential most kept), each candidate drawn with probability ∝ weight × squared
    distance to the nearest seed."""
    b, n, _ = X.shape
    w = _weights(X, sample_weight)
    rows = torch.arange(b, device=X.device)
    trials = 2 + int(math.log(k))
    first = draws.weighted_index(w)
    seeds = [first]
    closest = _sq_dist_to(X[rows, first].unsqueeze(1), X).squeeze(1)       # (B, N)
    pot = (closest * w).sum(-1)
    for _ in range(1, k):
        targets = draws.uniform((b, trials), X) * pot.unsqueeze(-1)
        cand = torch.searchsorted(torch.cumsum(w * closest, -1), targets).clamp_max(n - 1)   # (B, trials)
        dist = torch.minimum(closest.unsqueeze(1), _sq_dist_to(X[rows.unsqueeze(1), cand], X))
        pots = (dist * w.unsqueeze(1)).sum(-1)
        best = pots.argmin(-1)
        pot, closest = pots[rows, best], dist[rows, best]
        seeds.append(cand[rows, best])
    return torch.stack(seeds, 1)


def kmeans(X: torch.Tensor, k: int, draws, sample_weight: Optional[torch.Tensor] = None,
           max_iter: int = 300, tol: float = 1e-4):
    """Lloyd's k-means from k-means++ seeds on every dataset: ``(labels (B, N), centers (B, k, D))``.
    A dataset stops when its labels repeat or its centers move by less than ``tol`` times its mean
    feature variance (squared), each on its own."""
    w = _weights(X, sample_weight)
    rows = torch.arange(X.shape[0], device=X.device).unsqueeze(1)
    centers = X[rows, kmeans_plusplus(X, k, draws, sample_weight)]
    shift_tol = tol * X.var(1, unbiased=False).mean(-1)
    labels = _sq_dist_all(X, centers).argmin(-1)
    done = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype) * w.unsqueeze(-1)
        counts = onehot.sum(1)
        sums = onehot.transpose(1, 2) @ X
        safe = counts.clamp_min(torch.finfo(X.dtype).tiny).unsqueeze(-1)
        new = torch.where(counts.unsqueeze(-1) > 0, sums / safe, centers)
        new = torch.where(done[:, None, None], centers, new)      # a finished dataset stays
        moved = (new - centers).square().sum((1, 2))
        centers = new
        new_labels = _sq_dist_all(X, centers).argmin(-1)
        stop = (new_labels == labels).all(-1) | (moved <= shift_tol)
        labels = torch.where(done.unsqueeze(-1), labels, new_labels)
        done = done | stop
        if bool(done.all()):
            break
    return labels, centers


def initial_resp(X: torch.Tensor, k: int, init_params: str, draws,
                 sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Responsibilities ``(B, N, K)`` that the first M-step turns into initial parameters."""
    b, n, _ = X.shape
    if init_params == "random":
        resp = draws.uniform((b, n, k), X)
        return resp / resp.sum(-1, keepdim=True)
    rows = torch.arange(b, device=X.device).unsqueeze(1)
    cols = torch.arange(k, device=X.device)
    resp = X.new_zeros((b, n, k))
    if init_params == "kmeans":
        resp.scatter_(-1, kmeans(X, k, draws, sample_weight)[0].unsqueeze(-1), 1.0)
    elif init_params == "k-means++":
        resp[rows, kmeans_plusplus(X, k, draws, sample_weight), cols] = 1.0
    elif init_params == "random_from_data":
        resp[rows, draws.distinct_indices(_weights(X, sample_weight), k), cols] = 1.0
    else:
        raise ValueError(f"unknown init_params {init_params!r}")
    return resp
