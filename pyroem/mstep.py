"""M-steps: closed-form updates written into the param store, and an autograd M-step on Q.

``Q(θ|θₙ) = Σ_f ⟨w_f, log f(θ)⟩``: the E-step's weights held fixed, the log-factors re-evaluated
at θ. The autograd M-step maximizes it over the unconstrained parameters with L-BFGS until Q
stops improving; a step that would lower Q is undone, so every step is a (generalized) EM step.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional

import pyro
import torch
from torch.distributions import transform_to

from .expectations import Expectations
from .handlers import is_enumerated_site, is_subsample_site, param_constraint, unconstrained


def _q_or_none(q_fn: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """Q at the current params, or None where the model rejects them (a distribution's argument
    check, e.g. a positive scale that underflowed to 0 at a line-search trial point)."""
    try:
        return q_fn()
    except ValueError:
        return None


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


def expected_log_joint(trace, expect: Expectations) -> torch.Tensor:
    """``Q(θ|θₙ)`` on a trace taken at θ with the same enumeration as the E-step's."""
    weights = expect.site_weights()
    q = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_subsample_site(site):
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


class AutogradMStep:
    """Maximize Q over the given params with L-BFGS (strong Wolfe line search) to convergence."""

    def __init__(self, max_iter: int = 500, history_size: int = 50, newton_max_params: int = 64) -> None:
        self.max_iter = max_iter
        self.history_size = history_size
        self.newton_max_params = newton_max_params

    @staticmethod
    def _newton_polish(leaves, q_fn, max_steps: int = 6) -> None:
        """A few Newton steps from the L-BFGS answer: L-BFGS stalls once Q's changes drop below
        rounding, Newton steers by the gradient, which stays accurate there."""
        sizes = [x.numel() for x in leaves]
        best = None
        for _ in range(max_steps):
            with torch.enable_grad():
                q = _q_or_none(q_fn)
                if q is None or not bool(torch.isfinite(q)):
                    if best is not None:
                        with torch.no_grad():
                            for x, x0 in zip(leaves, best[0]):
                                x.copy_(x0)
                    return
                grads = torch.autograd.grad(q, leaves, create_graph=True, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
                g = torch.cat([gi.reshape(-1) for gi in grads])
                gnorm = float(g.detach().abs().max())
                if best is not None and not gnorm < best[1]:
                    with torch.no_grad():
                        for x, x0 in zip(leaves, best[0]):
                            x.copy_(x0)
                    return
                best = ([x.detach().clone() for x in leaves], gnorm, float(q.detach()))
                if gnorm == 0.0 or not g.requires_grad:
                    return
                rows = []
                for i in range(g.numel()):
                    row = torch.autograd.grad(g[i], leaves, retain_graph=True, allow_unused=True)
                    rows.append(torch.cat([(torch.zeros_like(x) if r is None else r).reshape(-1)
                                           for x, r in zip(leaves, row)]))
            neg_h = -torch.stack(rows).detach()
            evals, evecs = torch.linalg.eigh(0.5 * (neg_h + neg_h.T))
            top = float(evals.abs().max())
            if top == 0.0 or float(evals.min()) < -1e-8 * top:
                return  # Q not concave here: leave the L-BFGS answer
            keep = evals > 1e-10 * top  # flat directions (redundant coordinates) are left alone
            coef = (evecs.T @ g.detach())[keep] / evals[keep]
            step = evecs[:, keep] @ coef
            with torch.no_grad():
                for x, d in zip(leaves, step.split(sizes)):
                    x.add_(d.reshape(x.shape))

    def __call__(self, names: Iterable[str], q_fn: Callable[[], torch.Tensor], all_names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return
        leaves = [unconstrained(n) for n in names]
        frozen = [unconstrained(n) for n in all_names if n not in names]
        start = [x.detach().clone() for x in leaves]
        dtype = leaves[0].dtype
        tight = dtype == torch.float64
        for x in frozen:
            x.requires_grad_(False)
        try:
            with torch.no_grad():
                q0 = q_fn()
            if not bool(torch.isfinite(q0)):
                return
            q0 = float(q0.detach())
            norm = max(1.0, abs(q0))
            opt = torch.optim.LBFGS(
                leaves,
                lr=1.0,
                max_iter=self.max_iter,
                max_eval=int(self.max_iter * 1.5),
                tolerance_grad=1e-14 if tight else 1e-7,
                tolerance_change=1e-13 if tight else 1e-8,
                history_size=self.history_size,
                line_search_fn="strong_wolfe",
            )

            first = [True]

            def closure():
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    q = _q_or_none(q_fn)
                    if q is None:
                        return leaves[0].new_tensor(float("inf"))
                    loss = -(q - q0) / norm
                    if not bool(torch.isfinite(loss)):
                        return loss.detach().new_tensor(float("inf"))
                    loss.backward()
                for x in leaves:
                    if x.grad is None:
                        x.grad = torch.zeros_like(x)
                bad = [n for n, x in zip(names, leaves) if not bool(torch.isfinite(x.grad).all())]
                if bad and first[0]:
                    raise ValueError(
                        f"the gradient of Q with respect to {', '.join(repr(n) for n in bad)} is not "
                        "finite at the current parameters, so the autograd M-step cannot move them. "
                        "A log-factor's derivative is undefined somewhere (e.g. a Poisson rate of "
                        "exactly 0 gives 0·∞): write such branches with torch.where or "
                        "dist.MaskedMixture so the unused branch gets no gradient"
                    )
                first[0] = False
                if bad:
                    return loss.detach().new_tensor(float("inf"))
                return loss.detach()

            opt.step(closure)
            if sum(x.numel() for x in leaves) <= self.newton_max_params:
                self._newton_polish(leaves, q_fn)
            with torch.no_grad():
                q1 = _q_or_none(q_fn)
            q1 = None if q1 is None else q1.detach()
            if q1 is None or not bool(torch.isfinite(q1)) or float(q1) < q0:
                with torch.no_grad():
                    for x, x0 in zip(leaves, start):
                        x.copy_(x0)
        finally:
            for x in frozen:
                x.requires_grad_(True)
            for x in leaves:
                x.grad = None
