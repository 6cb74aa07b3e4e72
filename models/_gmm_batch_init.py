"""Initial responsibilities for a batch of Gaussian mixtures, drawn for every dataset at once.

The same four schemes as the single fit (``kmeans``, ``k-means++``, ``random``,
``random_from_data``), vectorized over the batch: k-means++ seeds one centre per round for all
datasets together, and Lloyd's iterations update every dataset in the same tensor operations.
Random draws come from a ``torch.Generator`` seeded from the estimator's ``random_state``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def _sq_dist(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(B, N, C)`` between rows of ``X`` (B, N, D) and ``centers`` (B, C, D)."""
    d2 = X.square().sum(-1, keepdim=True) - 2.0 * X @ centers.transpose(1, 2) + centers.square().sum(-1).unsqueeze(1)
    return d2.clamp_min(0.0)


def _draw(weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One index per row of ``weights`` (B, N), with probability proportional to the weights."""
    total = weights.sum(-1, keepdim=True)
    flat = torch.where(total > 0, weights, torch.ones_like(weights))
    return torch.multinomial(flat, 1, generator=gen).squeeze(-1)


def kmeans_plusplus_batch(X: torch.Tensor, k: int, gen: torch.Generator,
                          sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Seed indices ``(B, k)``: greedy k-means++ (``2 + ⌊log k⌋`` candidates per seed) per dataset."""
    b, n, _ = X.shape
    w = X.new_ones(b, n) if sample_weight is None else sample_weight
    rows = torch.arange(b, device=X.device)
    trials = 2 + int(math.log(k))
    first = _draw(w, gen)
    seeds = [first]
    closest = _sq_dist(X, X[rows, first].unsqueeze(1)).squeeze(-1)  # (B, N)
    for _ in range(1, k):
        prob = w * closest
        cand = torch.stack([_draw(prob, gen) for _ in range(trials)], 1)  # (B, trials)
        dist = torch.minimum(closest.unsqueeze(1), _sq_dist(X, X[rows.unsqueeze(1), cand]).transpose(1, 2))
        pots = (dist * w.unsqueeze(1)).sum(-1)
        best = pots.argmin(-1)
        closest = dist[rows, best]
        seeds.append(cand[rows, best])
    return torch.stack(seeds, 1)


def kmeans_labels_batch(X: torch.Tensor, k: int, gen: torch.Generator,
                        sample_weight: Optional[torch.Tensor] = None, max_iter: int = 300,
                        tol: float = 1e-4) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds for every dataset; labels ``(B, N)``."""
    b, n, _ = X.shape
    w = X.new_ones(b, n) if sample_weight is None else sample_weight
    rows = torch.arange(b, device=X.device).unsqueeze(1)
    centers = X[rows, kmeans_plusplus_batch(X, k, gen, sample_weight)]
    shift_tol = tol * X.var(1, unbiased=False).mean(-1)
    labels = _sq_dist(X, centers).argmin(-1)
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype) * w.unsqueeze(-1)
        counts = onehot.sum(1)
        sums = onehot.transpose(1, 2) @ X
        safe = counts.clamp_min(torch.finfo(X.dtype).tiny).unsqueeze(-1)
        new = torch.where(counts.unsqueeze(-1) > 0, sums / safe, centers)
        moved = (new - centers).square().sum((1, 2))
        centers = new
        new_labels = _sq_dist(X, centers).argmin(-1)
        done = bool(((new_labels == labels).all(-1) | (moved <= shift_tol)).all())
        labels = new_labels
        if done:
            break
    return labels


def initial_resp_batch(X: torch.Tensor, k: int, init_params: str, gen: torch.Generator,
                       sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Responsibilities ``(B, N, K)`` that the first M-step turns into initial parameters."""
    b, n, _ = X.shape
    if init_params == "random":
        resp = torch.rand((b, n, k), generator=gen, dtype=X.dtype, device=X.device)
        return resp / resp.sum(-1, keepdim=True)
    rows = torch.arange(b, device=X.device).unsqueeze(1)
    cols = torch.arange(k, device=X.device)
    resp = X.new_zeros((b, n, k))
    if init_params == "kmeans":
        labels = kmeans_labels_batch(X, k, gen, sample_weight)
        resp.scatter_(-1, labels.unsqueeze(-1), 1.0)
    elif init_params == "k-means++":
        resp[rows, kmeans_plusplus_batch(X, k, gen, sample_weight), cols] = 1.0
    elif init_params == "random_from_data":
        w = X.new_ones(b, n) if sample_weight is None else sample_weight
        resp[rows, torch.multinomial(w, k, replacement=False, generator=gen), cols] = 1.0
    else:
        raise ValueError(f"unknown init_params {init_params!r}")
    return resp
