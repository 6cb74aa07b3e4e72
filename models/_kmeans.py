"""A small k-means (k-means++ seeding, Lloyd iterations) for initial HMM means."""
from __future__ import annotations

import numpy as np


def _sq_dist(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1)


def _seed(X: np.ndarray, k: int, rs: np.random.RandomState) -> np.ndarray:
    """k-means++: each next center drawn with probability ∝ squared distance to the nearest one."""
    centers = [X[rs.randint(len(X))]]
    closest = _sq_dist(X, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        idx = rs.randint(len(X)) if total <= 0 else int(rs.choice(len(X), p=closest / total))
        centers.append(X[idx])
        closest = np.minimum(closest, _sq_dist(X, X[idx:idx + 1])[:, 0])
    return np.asarray(centers)


def kmeans(X: np.ndarray, k: int, rs: np.random.RandomState, n_init: int = 4, max_iter: int = 100) -> np.ndarray:
    """Centers ``(k, D)`` of the best (lowest inertia) of ``n_init`` k-means runs."""
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centers = _seed(X, k, rs)
        for _ in range(max_iter):
            labels = _sq_dist(X, centers).argmin(1)
            counts = np.bincount(labels, minlength=k)
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, X)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
            if np.allclose(new, centers):
                centers = new
                break
            centers = new
        inertia = _sq_dist(X, centers).min(1).sum()
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    return best
