"""M-steps: closed-form updates written into the param store, and the autograd M-step on Q.

``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩``: the E-step's weights held fixed, the log-factors re-evaluated
at θ. The autograd M-step maximizes it: parameters that are probabilities of discrete sites get
their exact maximizer from the expected counts (:mod:`pyroem.probability_updates`), the others
Newton's method on their unconstrained values (:mod:`pyroem.newton`), one model trace per Newton
iteration. A step that would lower Q is undone, so every step is a (generalized) EM step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

import pyro
import torch
from pyro.poutine.trace_struct import Trace
from torch.distributions import constraints, transform_to

from .diagnostics import rounding_slack
from .handlers import param_constraint, unconstrained
from .newton import maximize
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
    """The E-step's trace, taken with the autograd-fitted params as leaves (constrained values)."""

    trace: Trace
    leaves: Dict[str, torch.Tensor]


class AutogradMStep:
    """Maximize Q over the params that closed-form updates left out.

    ``stationary`` tells whether the last call reached a maximum of Q (an exact update, or an
    inner solver that converged); a fit is only called converged after such a step. With
    ``verify`` off, a step made of exact probability updates alone is not checked by evaluating
    Q again; ``unverified`` is then set, and the caller checks log p(y|θ) at the next E-step.
    """

    def __init__(self) -> None:
        self.stationary = True
        self.verify = True
        self.unverified = False

    def __call__(self, names: List[str], qf: QFunction, start: Optional[StartPoint] = None) -> None:
        store = pyro.get_param_store()
        current = {n: store.get_param(n).detach() for n in qf.tracer.names()}
        kinds = {n: param_constraint(n, store) for n in names}
        if start is not None and set(start.leaves) == set(names):
            trace, leaves = start.trace, {n: start.leaves[n] for n in names}
        else:
            leaves = {n: current[n].clone().requires_grad_() for n in names}
            with torch.enable_grad():
                trace = qf.trace({**current, **leaves})
        with torch.enable_grad():
            q0 = qf.value(trace)
            grads = torch.autograd.grad(q0, list(leaves.values()), retain_graph=True, allow_unused=True)
        grads = {n: torch.zeros_like(x) if g is None else g for (n, x), g in zip(leaves.items(), grads)}
        bad = [n for n, g in grads.items() if not bool(torch.isfinite(g).all())]
        if bad:
            raise ValueError(
                f"the gradient of Q with respect to {', '.join(repr(n) for n in bad)} is not "
                "finite at the current parameters, so the autograd M-step cannot move them. "
                "A log-factor's derivative is undefined somewhere (e.g. a Poisson rate of "
                "exactly 0 gives 0·∞): write such branches with torch.where or "
                "dist.MaskedMixture so the unused branch gets no gradient"
            )
        q0 = float(q0.detach())
        exact = probability_updates(trace, qf.expect.site_weights(), leaves, grads, kinds)
        del trace, leaves
        new_u = {n: _finite_unconstrained(v, kinds[n]) for n, v in exact.items()}
        rest = [n for n in names if n not in exact]
        if not rest and not self.verify:
            with torch.no_grad():
                for n, u in new_u.items():
                    unconstrained(n).copy_(u)
            self.stationary, self.unverified = True, True
            return
        q1, stationary = self._maximize(rest, qf, current, kinds, new_u)
        if q1 is None or q1 < q0 - rounding_slack(q0, current[names[0]].dtype):
            # the exact updates did not raise Q (a parameter also used in a way the count form
            # missed): optimize every parameter numerically from θₙ instead
            new_u = {}
            q1, stationary = self._maximize(names, qf, current, kinds, new_u)
            if q1 is None or q1 < q0:
                new_u, stationary = {}, False
        with torch.no_grad():
            for n, u in new_u.items():
                unconstrained(n).copy_(u)
        self.stationary = stationary

    @staticmethod
    def _maximize(rest: List[str], qf: QFunction, current: Dict[str, torch.Tensor],
                  kinds: Mapping[str, object], new_u: Dict[str, torch.Tensor]):
        """Newton (or L-BFGS) over ``rest`` with the values in ``new_u`` fixed; adds the optimum
        to ``new_u`` and returns (Q there, whether it is stationary)."""
        fixed = dict(current)
        fixed.update({n: transform_to(kinds[n])(u) for n, u in new_u.items()})
        if not rest:
            with torch.no_grad():
                q = qf.try_value(fixed)
            return (None if q is None else float(q)), True
        transforms = [transform_to(kinds[n]) for n in rest]

        def f(xs):
            values = dict(fixed)
            values.update({n: t(x) for n, t, x in zip(rest, transforms, xs)})
            return qf.try_value(values)

        out = maximize(f, [unconstrained(n).detach() for n in rest])
        if out is None:
            return None, False
        new_u.update(zip(rest, out.xs))
        return out.value, out.stationary
