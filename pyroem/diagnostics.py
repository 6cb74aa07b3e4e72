"""Checks that run alongside the EM iterations."""
from __future__ import annotations

import warnings

import torch


class MonotonicityWarning(UserWarning):
    """log p(y|θ) went down between two EM steps by more than rounding."""


def rounding_slack(value: float, dtype: torch.dtype) -> float:
    """How much a log-likelihood of this size may move by rounding alone."""
    eps = torch.finfo(dtype).eps
    return 1e3 * eps * max(1.0, abs(value))


def check_monotone(previous: float, current: float, step: int, dtype: torch.dtype) -> bool:
    """Warn (naming the step) when ``current < previous`` beyond rounding; True when monotone."""
    drop = previous - current
    if drop > rounding_slack(previous, dtype):
        warnings.warn(
            f"log-likelihood decreased at step {step}: {previous:.10g} -> {current:.10g} "
            f"(by {drop:.3g}); EM steps never lower it, so an update is not a maximizer of Q",
            MonotonicityWarning,
            stacklevel=3,
        )
        return False
    return True
