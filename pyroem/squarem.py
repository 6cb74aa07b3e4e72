"""SQUAREM (Varadhan & Roland 2008): EM accelerated by squared extrapolation, kept monotone.

From θ₀, two EM steps give θ₁ = F(θ₀) and θ₂ = F(θ₁) (on the unconstrained parameter values);
with r = θ₁ - θ₀ and v = θ₂ - 2θ₁ + θ₀ the extrapolated point is θ' = θ₀ - 2αr + α²v, step length
α = -‖r‖/‖v‖ (their scheme S3), and one more EM step from θ' stabilizes it. Where that point lowers
log p(y|θ) below its value at θ₀ (or cannot be evaluated), α is halved towards -1, at which θ'
is θ₂ itself, an ordinary EM iterate; so log p(y|θ) never decreases.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple, TypeVar

import torch

from .diagnostics import rounding_slack

Snapshot = Dict[str, torch.Tensor]
#: an E-step's outcome: ``Expectations``, or the statistics of one pass over data in pieces
Evaluation = TypeVar("Evaluation")


def _norm(d: Snapshot) -> float:
    return float(sum(float((v.double() ** 2).sum()) for v in d.values())) ** 0.5


def squarem_step(expect0: Evaluation, em_map: Callable[[Evaluation], None],
                 e_step: Callable[[], Evaluation], snapshot: Callable[[], Snapshot],
                 restore: Callable[[Snapshot], None]) -> Tuple[Evaluation, int]:
    """One SQUAREM iteration from the parameters ``expect0`` was computed at. ``em_map`` runs an
    M-step from given expectations, ``e_step`` the E-step at the current parameters (raising
    ``ValueError`` where log p(y|θ) is not finite). Leaves the accepted parameters in the param
    store and returns their expectations and the number of EM steps taken."""
    ll0 = expect0.log_likelihood_value()
    slack = rounding_slack(ll0, expect0.log_likelihood.dtype)
    u0 = snapshot()
    em_map(expect0)
    u1 = snapshot()
    em_map(e_step())
    u2 = snapshot()
    r = {n: u1[n] - u0[n] for n in u0}
    v = {n: u2[n] - 2 * u1[n] + u0[n] for n in u0}
    nr, nv = _norm(r), _norm(v)
    steps = 2
    if nv == 0.0 or nr == 0.0:
        return e_step(), steps
    alpha = min(-nr / nv, -1.0)
    while alpha < -1.0:
        restore({n: u0[n] - 2 * alpha * r[n] + alpha ** 2 * v[n] for n in u0})
        try:
            em_map(e_step())
            steps += 1
            expect = e_step()
            ll = expect.log_likelihood_value()
            if ll >= ll0 - slack:
                return expect, steps
        except ValueError:  # the extrapolated point is outside what the model accepts
            pass
        alpha = (alpha - 1.0) / 2.0
        if alpha > -1.01:
            break
    restore(u2)
    return e_step(), steps
