"""``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩``: the E-step's weights paired with log-factors re-evaluated at θ."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from pyro.poutine.trace_struct import Trace

from .expectations import Expectations
from .handlers import is_enumerated_site, is_unscored
from .model_trace import ModelTracer


def site_weight(site: dict, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``W`` with ``Σ W · unscaled log f`` = the site's term of Q: the posterior weight (scale
    included) of a factor touching latents, else the site's own scale and mask."""
    w = weights.get(site["name"])
    mask = site["mask"]
    if w is None:
        lp = site["unscaled_log_prob"]
        w = torch.ones((), dtype=lp.dtype, device=lp.device)
        scale = site["scale"]
        if isinstance(scale, torch.Tensor) or scale != 1.0:
            w = w * scale
    elif is_enumerated_site(site):
        return w
    if mask is not None:
        w = w * mask
    return w


def expected_log_joint(trace: Trace, expect: Expectations) -> torch.Tensor:
    """``Q(θ|θₙ)`` on a trace taken at θ with the same enumeration as the E-step's. Entries of
    zero weight are dropped, so a factor that is -inf where the posterior has no mass adds 0."""
    weights = expect.site_weights()
    q = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_unscored(site):
            continue
        w = weights.get(name)
        if w is None:
            term = site["log_prob"].sum()
        else:
            lp = site["unscaled_log_prob"]
            if not is_enumerated_site(site) and site["mask"] is not None:
                lp = torch.where(site["mask"], lp, lp.new_zeros(()))
            term = torch.where(w > 0, w * lp, lp.new_zeros(())).sum()
        q = term if q is None else q + term
    return q


class QFunction:
    """``Q(·|θₙ)`` as a function of constrained parameter values (missing names keep the param
    store's value), evaluated on a fresh enumerated trace with the E-step's minibatch indices."""

    def __init__(self, tracer: ModelTracer, expect: Expectations, args: tuple, kwargs: dict) -> None:
        self.tracer = tracer
        self.expect = expect
        self.args = args
        self.kwargs = kwargs
        self.subsample = tracer.subsample_indices(expect.trace)

    def trace(self, values: Optional[Dict[str, torch.Tensor]] = None) -> Trace:
        return self.tracer.trace(self.args, self.kwargs, self.subsample, values)

    def value(self, trace: Trace) -> torch.Tensor:
        return expected_log_joint(trace, self.expect)

    def __call__(self, values: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        return self.value(self.trace(values))

    def try_value(self, values: Optional[Dict[str, torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Q at ``values``, or None where the model rejects them (a distribution's argument check,
        e.g. a positive scale that underflowed to 0 at a line-search trial point)."""
        try:
            q = self(values)
        except ValueError:
            return None
        return q if bool(torch.isfinite(q.detach())) else None
