"""Standard errors from the observed information: ``I(θ) = −∇² log p(y|θ)``, exact because the
E-step's ``log p(y|θ)`` is exact and differentiable. The Hessian is taken in unconstrained
bijective coordinates ``u`` (``biject_to`` of each constraint) and carried to the constrained parameters by the delta method,
``Cov(θ) = J I_u⁻¹ Jᵀ`` with ``J = ∂θ/∂u``; a simplex's covariance is then singular along
``Σ θ = 1`` (its rows sum to 0), as it must be.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import biject_to, constraints

from .estep import contract_trace
from .handlers import param_constraint
from .expectations import Expectations
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


class _TriangularCoordinates:
    """A bijection from the lower-triangular entries ``(..., D(D+1)/2)`` to lower Cholesky factors
    (log diagonal, as Pyro's ``transform_to(lower_cholesky)``), or to positive definite matrices
    ``L Lᵀ``: torch registers no ``biject_to`` for these, whose ``transform_to`` works on the
    whole ``D x D`` matrix and ignores its upper triangle."""

    def __init__(self, positive_definite: bool) -> None:
        self.positive_definite = positive_definite

    @staticmethod
    def _size(m: int) -> int:
        return int((math.isqrt(8 * m + 1) - 1) // 2)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        d = self._size(u.shape[-1])
        i, j = torch.tril_indices(d, d, device=u.device)
        raw = u.new_zeros(u.shape[:-1] + (d, d))
        raw[..., i, j] = u
        chol = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return chol @ chol.transpose(-1, -2) if self.positive_definite else chol

    def inv(self, value: torch.Tensor) -> torch.Tensor:
        chol = torch.linalg.cholesky(value) if self.positive_definite else value
        d = chol.shape[-1]
        raw = chol.tril(-1) + torch.diag_embed(chol.diagonal(dim1=-2, dim2=-1).log())
        i, j = torch.tril_indices(d, d, device=value.device)
        return raw[..., i, j]


def _bijection(kind: constraints.Constraint, name: str):
    """``biject_to(kind)``, or :class:`_TriangularCoordinates` for Cholesky factors and positive
    definite matrices."""
    if isinstance(kind, type(constraints.lower_cholesky)):
        return _TriangularCoordinates(positive_definite=False)
    if isinstance(kind, type(constraints.positive_definite)):
        return _TriangularCoordinates(positive_definite=True)
    try:
        return biject_to(kind)
    except NotImplementedError:
        raise ValueError(f"param '{name}': its constraint {kind} has no bijective unconstrained coordinates, "
                         "so the observed information cannot be taken in them") from None


class _Coordinates:
    """The fitted params as one flat vector ``u`` of bijective unconstrained coordinates (a simplex
    of K by stick-breaking in K − 1), whatever the param store keeps."""

    def __init__(self, names: List[str], kinds: Optional[Dict[str, constraints.Constraint]]) -> None:
        store = pyro.get_param_store()
        self.names = list(names)
        self.kinds = {n: (kinds or {}).get(n, param_constraint(n, store)) for n in names}
        self.transforms = [_bijection(self.kinds[n], n) for n in names]
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
    ``p(z|y,θ)``, for any model the E-step contracts (mixtures, several latents per datum, chains).

    The first term is the Hessian of Q. The second needs no pairwise posteriors: the complete-data
    score is a sum over the factors, ``S = Σ_f s_f(z_f)`` with ``s_f = ∇ log f``, so its cumulant
    generating function ``K(η) = log E[exp(ηᵀS)] + log p(y|θ)`` is the E-step's own contraction of
    the tilted factors ``log f + ηᵀ s_f``, and ``Cov[S] = ∇²K(0)``. Only first derivatives of
    the factors enter it (their Jacobians, one forward pass per parameter coordinate)."""
    at = _Coordinates(names, kinds)
    with torch.no_grad():
        expect = Expectations(contract_trace(tracer.trace(args, kwargs)))

    def traced(v):
        return tracer.trace(args, kwargs, values=at.constrained(v))

    complete = -torch.autograd.functional.hessian(lambda v: expected_log_joint(traced(v), expect).double(), at.flat)
    trace, scores = _factor_scores(traced, at.flat)
    sites = {name: trace.nodes[name] for name in scores}
    bases = {name: site["unscaled_log_prob"].detach() for name, site in sites.items()}

    def tilted_log_z(eta: torch.Tensor) -> torch.Tensor:
        for name, site in sites.items():
            lp = bases[name] + (scores[name] @ eta.to(scores[name].dtype)).reshape(bases[name].shape)
            site["unscaled_log_prob"] = lp
            site["log_prob"] = scale_and_mask(lp, site["scale"], site["mask"])
            site.pop("packed", None)
        return contract_trace(trace, differentiable=True).log_likelihood.double()

    carried = torch.autograd.functional.hessian(tilted_log_z, torch.zeros_like(at.flat))
    return at.information(complete - carried)


def _factor_scores(traced: Callable, flat: torch.Tensor) -> Tuple[object, Dict[str, torch.Tensor]]:
    """The trace at ``flat`` and ``∂ log f / ∂u`` of every factor table in it that depends on the
    coordinates ``u``, by site: ``(cells, P)``, the unscaled table's cells flattened. Column ``i``
    by a forward-mode product ``J e_i`` (the double-backward trick: ``J e = ∂(Jᵀw)/∂w · e``)."""
    u = flat.detach().clone().requires_grad_()
    trace = traced(u)
    tables = {name: site["unscaled_log_prob"] for name, site in trace.nodes.items()
              if site["type"] == "sample" and "unscaled_log_prob" in site
              and isinstance(site["unscaled_log_prob"], torch.Tensor) and site["unscaled_log_prob"].requires_grad}
    if not tables:
        return trace, {}
    names = list(tables)
    dummies = [torch.zeros_like(tables[n], requires_grad=True) for n in names]
    (pull,) = torch.autograd.grad([tables[n] for n in names], [u], grad_outputs=dummies, create_graph=True)
    columns: List[List[torch.Tensor]] = [[] for _ in names]
    eye = torch.eye(u.numel(), dtype=pull.dtype, device=pull.device)
    for i in range(u.numel()):
        parts = torch.autograd.grad(pull, dummies, grad_outputs=eye[i], retain_graph=True, allow_unused=True)
        for col, part, dummy in zip(columns, parts, dummies):
            col.append(torch.zeros_like(dummy).reshape(-1) if part is None else part.detach().reshape(-1))
    out = {}
    for name, col in zip(names, columns):
        jac = torch.stack(col, -1)
        if bool(jac.ne(0).any()):
            out[name] = jac
    return trace, out


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
