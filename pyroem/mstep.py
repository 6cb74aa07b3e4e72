"""M-steps: closed-form updates written into the param store, and the autograd M-step on Q.

``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩``: the E-step's weights held fixed, the log-factors re-evaluated
at θ. The autograd M-step maximizes it: parameters that are probabilities of discrete sites get
their exact maximizer from the expected counts (:mod:`pyroem.probability_updates`), the others
Newton's method on their unconstrained values (:mod:`pyroem.newton`), one model trace per Newton
iteration. A step that would lower Q is undone, so every step is a (generalized) EM step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import pyro
import torch
from pyro.poutine.trace_struct import Trace
from torch.distributions import constraints, transform_to

from .diagnostics import rounding_slack
from .handlers import param_constraint, unconstrained
from .newton import maximize, summed_value
from .probability_updates import probability_updates
from .qfunction import QFunction


def write_params(new: Mapping[str, object], fitted: Iterable[str]) -> None:
    """Write closed-form values in place, so optimizers holding the tensors keep seeing them."""
    store = pyro.get_param_store()
    fitted = set(fitted)
    for name, value in new.items():
        if name not in fitted:
            known = ", ".join(sorted(fitted))
            raise ValueError(f"updates returned '{name}', which is not a parameter of the model (parameters: {known})")
        current = store.get_param(name)
        value = torch.as_tensor(value, dtype=current.dtype, device=current.device).detach()
        if value.shape != current.shape:
            if value.numel() == current.numel() and value.dim() <= current.dim():
                value = value.reshape(current.shape)
            else:
                raise ValueError(
                    f"updates returned shape {tuple(value.shape)} for '{name}', whose shape is {tuple(current.shape)}"
                )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"updates returned non-finite values for '{name}'")
        constraint = param_constraint(name, store)
        if not bool(constraint.check(value).all()):
            raise ValueError(f"updates returned a value for '{name}' outside its constraint {constraint}")
        with torch.no_grad():
            u = transform_to(constraint).inv(value)
            if not bool(torch.isfinite(u).all()):
                raise ValueError(
                    f"updates returned a value for '{name}' on the boundary of its constraint "
                    f"{constraint}; it has no finite unconstrained representation"
                )
            unconstrained(name).copy_(u)


def _finite_unconstrained(value: torch.Tensor, constraint) -> torch.Tensor:
    """The unconstrained value of ``value``, nudged off the constraint's boundary (a probability of
    exactly 0 or 1, as counts give for a category never seen) so that it stays finite."""
    t = transform_to(constraint)
    u = t.inv(value)
    if bool(torch.isfinite(u).all()):
        return u
    finfo = torch.finfo(value.dtype)
    if constraint is constraints.simplex:
        value = value.clamp_min(finfo.tiny)
        value = value / value.sum(-1, keepdim=True)
    elif constraint is constraints.unit_interval:
        value = value.clamp(finfo.tiny, 1 - finfo.eps / 2)
    return t.inv(value)


@dataclass
class StartPoint:
    """A trace at θₙ whose fitted parameters are functions of autograd leaves: ``leaves`` are the
    unconstrained values, ``values`` the constrained ones substituted into the model."""

    trace: Trace
    leaves: Dict[str, torch.Tensor]
    values: Dict[str, torch.Tensor]

    @staticmethod
    def take(names: Iterable[str], trace_fn) -> "StartPoint":
        """Trace with ``names`` substituted by ``transform(leaf)``; ``trace_fn(values)`` traces."""
        store = pyro.get_param_store()
        leaves = {n: unconstrained(n).detach().clone().requires_grad_() for n in names}
        with torch.enable_grad():
            values = {n: transform_to(param_constraint(n, store))(u) for n, u in leaves.items()}
            trace = trace_fn(values)
        return StartPoint(trace, leaves, values)


class AutogradMStep:
    """Maximize Q over the params that closed-form updates left out.

    Parameters that qualify for an exact count update (see :mod:`pyroem.probability_updates`)
    enter Q through their own sites only, so Q separates into their part and the rest's: the
    counts maximize the first, Newton the second, both from the trace at θₙ.

    ``stationary`` tells whether the last call reached a maximum of Q (an exact update, or an
    inner solver that converged); a fit is only called converged after such a step. With
    ``verify`` off, a step made of exact updates alone is not checked by evaluating Q again;
    ``unverified`` is then set, and the caller checks log p(y|θ) at the next E-step.
    """

    def __init__(self) -> None:
        self.stationary = True
        self.verify = True
        self.unverified = False
        #: sums over the ranks of a data-parallel fit (None: one process)
        self.reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __call__(self, names: List[str], qf: QFunction, start: Optional[StartPoint] = None) -> None:
        store = pyro.get_param_store()
        kinds = {n: param_constraint(n, store) for n in names}
        if start is None or set(start.leaves) != set(names):
            start = StartPoint.take(names, qf.trace)
        exact = probability_updates(start.trace, qf.expect.site_weights(), start.values, kinds, self.reduce)
        new_u = {n: _finite_unconstrained(v, kinds[n]) for n, v in exact.items()}
        rest = [n for n in names if n not in exact]
        stationary = True
        if rest:
            with torch.enable_grad():
                q0 = qf.value(start.trace)
                xs = [start.leaves[n] for n in rest]
                g0 = torch.autograd.grad(q0, xs, create_graph=True, allow_unused=True)
            finite = [g is None or bool(torch.isfinite(g).all()) for g in g0]
            if self.reduce is not None:  # every rank learns where a gradient is not finite
                finite = (self.reduce(torch.tensor([0.0 if f else 1.0 for f in finite], dtype=torch.float64,
                                                   device=q0.device)) == 0).tolist()
            bad = [n for n, ok in zip(rest, finite) if not ok]
            if bad:
                raise ValueError(
                    f"the gradient of Q with respect to {', '.join(repr(n) for n in bad)} is not "
                    "finite at the current parameters, so the autograd M-step cannot move them. "
                    "A log-factor's derivative is undefined somewhere (e.g. a Poisson rate of "
                    "exactly 0 gives 0·∞): write such branches with torch.where or "
                    "dist.MaskedMixture so the unused branch gets no gradient"
                )
            # Q separates, so the rest is maximized with the exact ones still at θₙ
            current = {n: store.get_param(n).detach() for n in qf.tracer.names()}
            transforms = [transform_to(kinds[n]) for n in rest]

            def f(us):
                values = dict(current)
                values.update({n: t(u) for n, t, u in zip(rest, transforms, us)})
                return qf.try_value(values)

            out = maximize(f, xs, first=(q0, g0), reduce=self.reduce)
            start_value = float(q0.detach()) if self.reduce is None else float(self.reduce(q0.detach()))
            if out is None or out.value < start_value - rounding_slack(start_value, q0.dtype):
                stationary = False
            else:
                new_u.update(zip(rest, out.xs))
                stationary = out.stationary
        elif self.verify and new_u:
            with torch.no_grad():
                q0 = summed_value(qf.value(start.trace), self.reduce)
                values = {n: transform_to(kinds[n])(u) for n, u in new_u.items()}
                q1 = summed_value(qf.try_value(values), self.reduce)
            if q0 is None or q1 is None or float(q1) < float(q0) - rounding_slack(float(q0), q0.dtype):
                new_u, stationary = {}, False
        with torch.no_grad():
            for n, u in new_u.items():
                unconstrained(n).copy_(u)
        self.stationary = stationary
        self.unverified = self.unverified or (bool(exact) and not self.verify)
