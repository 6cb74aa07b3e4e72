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
from .expectations import Expectations
from .handlers import is_unscored
from .model_trace import ModelTracer
from .qfunction import expected_log_joint


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


class _Coordinates:
    """The fitted params as one flat vector ``u`` of bijective unconstrained coordinates (a simplex
    of K by stick-breaking in K − 1), whatever the param store keeps."""

    def __init__(self, names: List[str], kinds: Optional[Dict[str, constraints.Constraint]]) -> None:
        store = pyro.get_param_store()
        self.names = list(names)
        self.kinds = {n: (kinds or {}).get(n, param_constraint(n, store)) for n in names}
        self.transforms = [biject_to(self.kinds[n]) for n in names]
        self.us = [t.inv(store.get_param(n).detach().double()) for n, t in zip(names, self.transforms)]
        self.flat = torch.cat([u.reshape(-1) for u in self.us])
        self.dtype = store.get_param(names[0]).dtype
        self.values = {n: store.get_param(n).detach() for n in names}

    def constrained(self, v: torch.Tensor) -> Dict[str, torch.Tensor]:
        parts = [c.reshape(u.shape) for c, u in zip(v.split([u.numel() for u in self.us]), self.us)]
        return {n: t(u).to(self.dtype) for n, t, u in zip(self.names, self.transforms, parts)}

    def information(self, info_u: torch.Tensor) -> Information:
        """Check ``info_u`` (in ``u``) and carry its inverse to the params by the delta method."""
        info_u = 0.5 * (info_u + info_u.T)
        if not bool(torch.isfinite(info_u).all()):
            raise ValueError("the observed information is not finite at these params")
        evals = torch.linalg.eigvalsh(info_u)
        top = float(evals.abs().max()) if evals.numel() else 0.0
        if float(evals.min()) <= 1e-10 * max(top, 1.0):
            what = ("a parameter sits on the boundary of its constraint or is not identified (a flat direction)"
                    if float(evals.min()) > -1e-8 * max(top, 1.0) else
                    "these params are not a maximum of the likelihood (the Hessian is indefinite)")
            raise ValueError(f"the observed information is not positive definite (smallest eigenvalue "
                             f"{float(evals.min()):.3g}): {what}; standard errors are undefined here")
        jac = torch.autograd.functional.jacobian(
            lambda v: torch.cat([t.reshape(-1).double() for t in self.constrained(v).values()]), self.flat)
        cov = jac @ torch.linalg.solve(info_u, jac.T)
        return Information(self.names, self.values, 0.5 * (cov + cov.T), self.kinds)


def observed_information(tracer: ModelTracer, names: List[str], args: tuple, kwargs: dict,
                         kinds: Optional[Dict[str, constraints.Constraint]] = None) -> Information:
    """The observed information of ``log p(y|θ)`` (MAP sites: of the log posterior) at the param
    store's values of ``names``; raises ``ValueError`` where it is not positive definite (not a
    maximum, or a parameter on the boundary of its constraint). ``kinds`` overrides a param's
    constraint (a frequency vector kept as a plain tensor is a point of the simplex)."""
    at = _Coordinates(names, kinds)

    def log_lik(v: torch.Tensor) -> torch.Tensor:
        trace = tracer.trace(args, kwargs, values=at.constrained(v))
        return contract_trace(trace, differentiable=True).log_likelihood.double()

    return at.information(-torch.autograd.functional.hessian(log_lik, at.flat))


def louis_information(tracer: ModelTracer, names: List[str], args: tuple, kwargs: dict,
                      kinds: Optional[Dict[str, constraints.Constraint]] = None) -> Information:
    """The observed information by Louis' identity (1982): the complete-data information minus the
    information the latents carry, ``I = E[−∇² log p(y,z|θ)] − Cov[∇ log p(y,z|θ)]`` under
    ``p(z|y,θ)`` at the fitted θ. The first term is the Hessian of Q; the second is summed over the
    plate elements of the one enumerated latent, whose values are independent given ``y`` (a
    mixture); other models raise ``ValueError`` (use :func:`observed_information`)."""
    at = _Coordinates(names, kinds)
    with torch.no_grad():
        expect = Expectations(contract_trace(tracer.trace(args, kwargs)))
    latents = expect.latent_sites
    if len(latents) != 1:
        raise ValueError(f"Louis' identity is implemented for one enumerated latent per data point (a mixture); "
                         f"this model has {len(latents)} ({', '.join(latents)}): use observed_information")
    (z,) = latents
    weights = expect.site_weights()
    r = weights[z].double()                                     # posterior of z in its log_prob layout

    def traced(v):
        return tracer.trace(args, kwargs, values=at.constrained(v))

    complete = -torch.autograd.functional.hessian(lambda v: expected_log_joint(traced(v), expect).double(), at.flat)

    def joint_table(v: torch.Tensor) -> torch.Tensor:
        """``log p(y_n, z_n = k | θ)`` summed over the sites that depend on ``z``, in z's layout."""
        trace = traced(v)
        total = torch.zeros(r.shape, dtype=torch.float64)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name not in weights or is_unscored(site):
                continue
            lp = site["unscaled_log_prob"].double()
            if isinstance(site["scale"], torch.Tensor) or site["scale"] != 1.0:
                raise ValueError(f"site '{name}' is scaled: Louis' identity here takes unit-weight data")
            if lp.dim() > r.dim() or any(a != b and b != 1 and a != 1 for a, b in zip(lp.shape[-r.dim():], r.shape)):
                raise ValueError(f"site '{name}' does not share the plates of '{z}': use observed_information")
            extra = [d for d in range(-1, -lp.dim() - 1, -1) if lp.shape[d] > 1 and r.shape[d] == 1]
            if extra:   # plates z is broadcast along: one datum's terms summed
                lp = lp.sum(extra, keepdim=True)
            total = total + lp
        return total

    jac = torch.autograd.functional.jacobian(lambda v: joint_table(v).reshape(-1), at.flat)   # (cells, P)
    jac = jac.reshape(r.shape + (-1,))
    k_dim = next(d for d in range(r.dim()) if r.shape[d] > 1 and d < r.dim() - 1) if r.dim() > 1 else 0
    rk = r.movedim(k_dim, 0).reshape(r.shape[k_dim], -1)              # (K, data)
    jk = jac.movedim(k_dim, 0).reshape(r.shape[k_dim], rk.shape[1], -1)   # (K, data, P)
    mean = torch.einsum("kn,knp->np", rk, jk)
    second = torch.einsum("kn,knp,knq->pq", rk, jk, jk)
    missing = second - mean.T @ mean
    return at.information(complete - missing)


METHODS = {"hessian": observed_information, "louis": louis_information}


def information_of(em, args: tuple, kwargs: dict) -> Callable[[str], Information]:
    """What ``EMResult.information(method)`` calls: the observed information of ``em``'s fitted
    params, by the Hessian of log p(y|θ) or by Louis' identity."""
    names = em._fitted_names()

    def information(method: str = "hessian") -> Information:
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        return METHODS[method](em.tracer, names, args, kwargs)
    return information
