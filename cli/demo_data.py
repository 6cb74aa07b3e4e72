"""The data sets of ``pyroem demo`` and ``pyroem compare``, built in code (nothing to download)."""
from __future__ import annotations

from typing import Tuple

import numpy as np

# Peppered moth (Givens & Hoeting, Computational Statistics): phenotype counts.
MOTH_COUNTS = {"carbonaria": 85, "insularia": 196, "typica": 341}

# Four bivariate normal groups of 100 points each.
GMM_MEANS = np.array([[-2.5, -2.0], [-2.0, 2.5], [2.0, 2.0], [2.5, -1.5]])
GMM_COVS = np.array([
    [[1.0, 0.6], [0.6, 1.2]],
    [[1.5, -0.5], [-0.5, 0.8]],
    [[0.7, 0.0], [0.0, 0.7]],
    [[1.8, -0.9], [-0.9, 1.0]],
])
GMM_PER_GROUP = 100

# The occasionally dishonest casino: state 0 a fair die, state 1 a die showing six half the time.
CASINO_STATES = ("fair", "loaded")
CASINO_START = np.array([1.0, 0.0])
CASINO_TRANSMAT = np.array([[0.95, 0.05], [0.10, 0.90]])
CASINO_EMISSION = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])


def four_clusters(seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """400 points ``X`` (400, 2) from four bivariate normals and the group of each point."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.multivariate_normal(m, c, size=GMM_PER_GROUP) for m, c in zip(GMM_MEANS, GMM_COVS)])
    return X, np.repeat(np.arange(len(GMM_MEANS)), GMM_PER_GROUP)


def casino(n_sessions: int = 10, length: int = 150, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Die rolls ``(n, 1)`` (faces 0..5), the session lengths and the die behind every roll."""
    rng = np.random.default_rng(seed)
    states = np.empty((n_sessions, length), dtype=np.int64)
    states[:, 0] = _draw(np.broadcast_to(CASINO_START, (n_sessions, 2)), rng)
    for t in range(1, length):  # the chain is sequential in time, vectorized over sessions
        states[:, t] = _draw(CASINO_TRANSMAT[states[:, t - 1]], rng)
    states = states.reshape(-1)
    rolls = _draw(CASINO_EMISSION[states], rng)
    return rolls[:, None], np.full(n_sessions, length), states


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of ``probs`` (rows sum to 1)."""
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((cdf <= rng.random((probs.shape[0], 1))).sum(axis=1), probs.shape[1] - 1)
