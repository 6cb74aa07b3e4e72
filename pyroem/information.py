"""Standard errors from the observed information: ``I(θ) = −∇² log p(y|θ)``, exact because the
E-step's ``log p(y|θ)`` is exact and differentiable. The Hessian is taken in unconstrained
bijective coordinates ``u`` (``biject_to`` of each constraint) and carried to the constrained parameters by the delta method,
``Cov(θ) = J I_u⁻¹ Jᵀ`` with ``J = ∂θ/∂u``; a simplex's covariance is then singular along
``Σ θ = 1`` (its rows sum to 0), as it must be.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import pyro
import torch
from torch.distributions import biject_to, constraints

from .estep import contract_trace
from .handlers import param_constraint
from .model_trace import ModelTracer


@dataclass
class Information:
    """The observed information at the fitted params and what follows from it."""

    names: List[str]
    values: Dict[str, torch.Tensor]          # constrained, as fitted
    covariance_matrix: torch.Tensor           # of the flattened constrained values, in ``names`` order
    kinds: Dict[str, constraints.Constraint]

    def _slices(self) -> Dict[str, slice]:
        out, at = {}, 0
        for n in self.names:
            k = self.values[n].numel()
            out[n] = slice(at, at + k)
            at += k
        return out

    def covariance(self) -> Dict[str, torch.Tensor]:
        """Each param's covariance block ``(numel, numel)``."""
        return {n: self.covariance_matrix[s, s] for n, s in self._slices().items()}

    def standard_errors(self) -> Dict[str, torch.Tensor]:
        """Each param's standard errors, shaped like the param."""
        diag = self.covariance_matrix.diagonal().clamp_min(0).sqrt()
        return {n: diag[s].reshape(self.values[n].shape) for n, s in self._slices().items()}

    def conf_int(self, alpha: float = 0.05) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Wald intervals of level ``1 − alpha``, built on a scale that keeps them inside the
        constraint: logit for probabilities (simplex entries, unit interval), log for positive
        params, the params themselves otherwise."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - alpha / 2, dtype=torch.float64)))
        out = {}
        for n, se in self.standard_errors().items():
            v = self.values[n].double()
            se = se.double()
            kind = self.kinds[n]
            if kind is constraints.simplex or kind is constraints.unit_interval:
                centre, width = torch.logit(v), se / (v * (1 - v))
                low, high = torch.sigmoid(centre - z * width), torch.sigmoid(centre + z * width)
            elif isinstance(kind, constraints.greater_than) and float(kind.lower_bound) == 0.0:
                centre, width = v.log(), se / v
                low, high = (centre - z * width).exp(), (centre + z * width).exp()
            else:
                low, high = v - z * se, v + z * se
            out[n] = (low, high)
        return out


def observed_information(tracer: ModelTracer, names: List[str], args: tuple, kwargs: dict,
                         kinds: Optional[Dict[str, constraints.Constraint]] = None) -> Information:
    """The observed information of ``log p(y|θ)`` (MAP sites: of the log posterior) at the param
    store's values of ``names``; raises ``ValueError`` where it is not positive definite (not a
    maximum, or a parameter on the boundary of its constraint). ``kinds`` overrides a param's
    constraint (a frequency vector kept as a plain tensor is a point of the simplex)."""
    store = pyro.get_param_store()
    kinds = {n: (kinds or {}).get(n, param_constraint(n, store)) for n in names}
    # bijective coordinates (a simplex of K by stick-breaking in K − 1), whatever the store keeps
    transforms = [biject_to(kinds[n]) for n in names]
    us = [t.inv(store.get_param(n).detach().double()) for n, t in zip(names, transforms)]
    sizes = [u.numel() for u in us]
    flat = torch.cat([u.reshape(-1) for u in us])
    dtype = store.get_param(names[0]).dtype

    def unflatten(v: torch.Tensor) -> List[torch.Tensor]:
        return [c.reshape(u.shape) for c, u in zip(v.split(sizes), us)]

    def constrained(v: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {n: t(u).to(dtype) for n, t, u in zip(names, transforms, unflatten(v))}

    def log_lik(v: torch.Tensor) -> torch.Tensor:
        trace = tracer.trace(args, kwargs, values=constrained(v))
        return contract_trace(trace, differentiable=True).log_likelihood.double()

    hessian = torch.autograd.functional.hessian(log_lik, flat)
    info_u = -0.5 * (hessian + hessian.T)
    evals = torch.linalg.eigvalsh(info_u)
    top = float(evals.abs().max()) if evals.numel() else 0.0
    if not bool(torch.isfinite(info_u).all()):
        raise ValueError("the observed information is not finite at these params")
    if float(evals.min()) <= 1e-10 * max(top, 1.0):
        what = ("a parameter sits on the boundary of its constraint or is not identified (a flat direction)"
                if float(evals.min()) > -1e-8 * max(top, 1.0) else
                "these params are not a maximum of the likelihood (the Hessian is indefinite)")
        raise ValueError(f"the observed information is not positive definite (smallest eigenvalue "
                         f"{float(evals.min()):.3g}): {what}; standard errors are undefined here")
    jac = torch.autograd.functional.jacobian(
        lambda v: torch.cat([t.reshape(-1).double() for t in constrained(v).values()]), flat)
    cov = jac @ torch.linalg.solve(info_u, jac.T)
    values = {n: store.get_param(n).detach() for n in names}
    return Information(list(names), values, 0.5 * (cov + cov.T), kinds)


def information_of(em, args: tuple, kwargs: dict) -> Callable[[], Information]:
    """What ``EMResult.information()`` calls: the observed information of ``em``'s fitted params."""
    names = em._fitted_names()
    return lambda: observed_information(em.tracer, names, args, kwargs)
