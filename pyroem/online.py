"""Online (stepwise) EM: the statistics of each mini-batch, taken at the current parameters, are
blended into a running estimate ``s ← (1 − γ_t) s + γ_t · scale · S(batch)`` and the parameters
solved from it after every batch (Cappé & Moulines 2009; Liang & Klein 2009), with step sizes
``γ_t = (t + 2)^(−α)``, ``α ∈ (0.5, 1]``: the first batch sets ``s`` outright.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, Optional, Union

import torch

StepSize = Union[float, Callable[[int], float]]


def check_step_size(value: object) -> Callable[[int], float]:
    """``γ_t`` as a function of ``t`` from an exponent ``α ∈ (0.5, 1]`` or a callable."""
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.5 < value <= 1.0:
        raise ValueError(f"step_size must be an exponent α in (0.5, 1] (step sizes (t + 2)^-α) or a callable "
                         f"t -> γ_t, got {value!r}")
    alpha = float(value)
    return lambda t: (t + 2.0) ** -alpha


class StepwiseStatistics:
    """The running estimate of the full data's statistics that online EM solves from.

    ``update(stats)`` blends one batch's statistics, times ``scale`` (which turns them into an
    estimate for all of the data: the number of batches in a pass; 1 keeps per-batch averages),
    and returns the estimate; ``t`` counts the batches seen.
    """

    def __init__(self, step_size: StepSize = 0.6, scale: float = 1.0) -> None:
        self.gamma = check_step_size(step_size)
        self.scale = float(scale)
        self.t = 0
        self.stats: Optional[Dict[str, torch.Tensor]] = None

    def update(self, stats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        scale = self.scale
        stats = {k: v for k, v in stats.items() if k != "log_likelihood"}
        if self.stats is None:
            self.stats = {k: v * scale for k, v in stats.items()}
        else:
            if set(stats) != set(self.stats):
                raise ValueError(f"statistics of a batch name {sorted(stats)}, the running ones {sorted(self.stats)}")
            g = float(self.gamma(self.t))
            if not 0.0 < g <= 1.0 or math.isnan(g):
                raise ValueError(f"step_size gave γ_{self.t} = {g}; step sizes must lie in (0, 1]")
            self.stats = {k: (1.0 - g) * self.stats[k] + (g * scale) * stats[k] for k in stats}
        self.t += 1
        return self.stats
