"""Donated memory: a log-probability tensor marked as held by nothing else, which the E-step may
write its posterior into."""
from __future__ import annotations

import torch

_ATTR = "_pyroem_donated"


def donate(log_prob: torch.Tensor) -> torch.Tensor:
    """Mark ``log_prob`` (returned by a distribution's ``log_prob``) as freshly allocated for this
    call and held by nothing else; returns it. The E-step may then write the posterior over
    the enumerated latents into its memory instead of allocating a table of the same size.

    Only for a dense tensor that no parameter, cache or other tensor shares memory with: after
    the E-step its values are gone. Without the mark the E-step never writes into a factor.
    """
    if not isinstance(log_prob, torch.Tensor):
        raise TypeError(f"donate expects a torch.Tensor, got {type(log_prob).__name__}")
    setattr(log_prob, _ATTR, True)
    return log_prob


def is_donated(t: torch.Tensor) -> bool:
    return bool(getattr(t, _ATTR, False))
