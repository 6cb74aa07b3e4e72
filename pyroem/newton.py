"""Maximizing a smooth function of a few tensors: Newton's method with an exact Hessian, a
curvature-corrected direction where the Hessian is not negative definite, and a backtracking line
search, so that every accepted step raises the function; L-BFGS for blocks too large for a Hessian.

``f(xs)`` returns the value at ``xs`` with its autograd graph, or None where the point is
infeasible (a distribution rejected it); infeasible or non-finite trial points shorten the step.
``reduce`` sums a value, gradient or Hessian over the ranks of a data-parallel fit (each rank's
``f`` covers its shard of the data), so every rank takes the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import thresholds

Objective = Callable[[List[torch.Tensor]], Optional[torch.Tensor]]
First = Tuple[torch.Tensor, Sequence[Optional[torch.Tensor]]]
Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _total(reduce: Reduce, t: torch.Tensor) -> torch.Tensor:
    return t.detach() if reduce is None else reduce(t.detach())


@dataclass
class Outcome:
    """Where a maximization ended: the point, its value, and whether it reached a stationary point."""

    xs: List[torch.Tensor]
    value: float
    stationary: bool


def _flat(ts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _unflat(v: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    return [c.reshape(x.shape) for c, x in zip(v.split([x.numel() for x in like]), like)]


def _leaves(xs: List[torch.Tensor]) -> List[torch.Tensor]:
    return [x.detach().clone().requires_grad_() for x in xs]


def _gradient(q: torch.Tensor, xs: List[torch.Tensor], create_graph: bool) -> torch.Tensor:
    gs = torch.autograd.grad(q, xs, create_graph=create_graph, allow_unused=True)
    return _flat([torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)])


def _hessian(g: torch.Tensor, xs: List[torch.Tensor]) -> Optional[torch.Tensor]:
    """``∂g/∂x``: rows by separate backward passes for small blocks, else one batched pass (row by
    row again where an op has no batching rule)."""
    n = g.numel()
    if not g.requires_grad:
        return g.new_zeros(n, n)
    if n > thresholds.ROWWISE_HESSIAN_SIZE:
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        try:
            rows = torch.autograd.grad(g, xs, grad_outputs=eye, retain_graph=True, allow_unused=True,
                                       is_grads_batched=True)
            return torch.cat([(torch.zeros(n, x.numel(), dtype=g.dtype, device=g.device) if r is None
                               else r.reshape(n, -1)) for x, r in zip(xs, rows)], dim=1)
        except RuntimeError:
            pass
    out = []
    for i in range(n):
        row = torch.autograd.grad(g[i], xs, retain_graph=True, allow_unused=True)
        out.append(_flat([torch.zeros_like(x) if r is None else r for x, r in zip(xs, row)]))
    return torch.stack(out)


def _direction(g: torch.Tensor, h: Optional[torch.Tensor]) -> torch.Tensor:
    """The Newton direction ``(-H)⁻¹ g`` with the eigenvalues of ``-H`` replaced by their absolute
    values (bounded away from 0), so it always ascends; flat directions are left alone. Falls
    back to the gradient where the Hessian is unusable."""
    if h is None or not bool(torch.isfinite(h).all()):
        return g
    neg = -0.5 * (h + h.T)
    try:
        evals, evecs = torch.linalg.eigh(neg)
    except RuntimeError:  # torch.linalg.LinAlgError: ill-conditioned or NaN entries
        return g
    top = float(evals.abs().max()) if evals.numel() else 0.0
    if top == 0.0 or not torch.isfinite(evals).all():
        return g
    mag = evals.abs()
    keep = mag > 1e-10 * top
    coef = (evecs.T @ g)[keep] / mag[keep].clamp_min(1e-6 * top)
    return evecs[:, keep] @ coef


def _totals(q: Optional[torch.Tensor], g: Optional[torch.Tensor], xs: List[torch.Tensor], reduce: Reduce):
    """``(value, gradient)`` summed over the ranks, or None where either is not finite on some rank."""
    if reduce is None:
        if q is None or not bool(torch.isfinite(q.detach())) or not bool(torch.isfinite(g.detach()).all()):
            return None
        return q.detach(), g.detach()
    dtype = xs[0].dtype
    value = torch.tensor(float("nan"), dtype=dtype, device=xs[0].device) if q is None else q.detach()
    grad = torch.zeros(sum(x.numel() for x in xs), dtype=dtype, device=xs[0].device) if g is None else g.detach()
    total = reduce(torch.cat([value.reshape(1), grad]))
    if not bool(torch.isfinite(total).all()):
        return None
    return total[0], total[1:]


def _evaluate(f: Objective, xs: List[torch.Tensor], reduce: Reduce = None):
    """``(value, gradient, total value, total gradient)`` at ``xs``, the local ones with the
    gradient's graph kept, or None where ``f`` rejects the point or either is not finite (a
    parameter driven onto its support's boundary)."""
    with torch.enable_grad():
        q = f(xs)
        g = None
        if q is not None and bool(torch.isfinite(q.detach())):
            g = _gradient(q, xs, create_graph=True)
        else:
            q = None
    totals = _totals(q, g, xs, reduce)
    return None if totals is None else (q, g) + totals


def _start(f: Objective, xs: List[torch.Tensor], first: Optional[First], reduce: Reduce = None):
    """``(xs, value, gradient, total value, total gradient)`` at the start: ``first`` where the
    caller has them (``xs`` are then the leaves of their graph), else one evaluation of ``f``."""
    if first is None:
        xs = _leaves(xs)
        out = _evaluate(f, xs, reduce)
        return None if out is None else (xs,) + out
    q, grads = first
    g = _flat([torch.zeros_like(x) if gi is None else gi for x, gi in zip(xs, grads)])
    totals = _totals(q, g, list(xs), reduce)
    return None if totals is None else (list(xs), q, g) + totals


def newton_maximize(f: Objective, xs: List[torch.Tensor], max_iter: int = 50,
                    max_evals: int = 200, first: Optional[First] = None, reduce: Reduce = None) -> Optional[Outcome]:
    """Maximize ``f`` from ``xs``; None when ``f`` or its gradient cannot be evaluated at ``xs``.
    ``first``: the value and gradient (with its graph) at ``xs``, where already computed."""
    start = _start(f, xs, first, reduce)
    if start is None:
        return None
    xs, q, g, q_total, g_total = start
    eps = torch.finfo(q_total.dtype).eps
    stationary, evals = False, 1
    for _ in range(max_iter):
        with torch.enable_grad():
            h = _hessian(g, xs)
        if reduce is not None:
            h = reduce(h)
        g = g_total
        d = _direction(g, h)
        decrement = float(g @ d)
        value = float(q_total)
        rounding = 1e3 * eps * max(1.0, abs(value))
        if not decrement > 0:  # a zero gradient
            stationary = decrement == 0
            break
        x0 = _flat([x.detach() for x in xs])
        if decrement <= rounding:
            # within rounding of the maximum: the last full Newton step changes f by about
            # decrement / 2, below what evaluating f again could resolve, so it is taken unseen
            xs = _unflat(x0 + d, xs)
            stationary = True
            break
        t, accepted = 1.0, None
        for _ in range(40):
            if evals >= max_evals:
                break
            trial = _leaves(_unflat(x0 + t * d, xs))
            out = _evaluate(f, trial, reduce)
            evals += 1
            if out is not None and float(out[2]) >= value + 1e-4 * t * decrement:
                accepted = (trial,) + out
                break
            t *= 0.5
        if accepted is None:
            break
        xs, q, g, q_total, g_total = accepted
    return Outcome([x.detach() for x in xs], float(q_total), stationary)


def summed_value(q: Optional[torch.Tensor], reduce: Reduce,
                 device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """A value ``q`` (None: infeasible) summed over the ranks, in float64; None where it is
    infeasible or not finite on some rank. ``q`` itself in one process."""
    if reduce is None:
        return q
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=device)
    total = reduce(nan if q is None else q.detach().double())
    return total if bool(torch.isfinite(total)) else None


def _value(f: Objective, xs: List[torch.Tensor], reduce: Reduce) -> Optional[torch.Tensor]:
    """``f`` at ``xs`` without a graph, summed over the ranks; None where infeasible on some rank."""
    with torch.no_grad():
        q = f(xs)
    return summed_value(q, reduce, xs[0].device)


def lbfgs_maximize(f: Objective, xs: List[torch.Tensor], max_iter: int = 200, reduce: Reduce = None
                   ) -> Optional[Outcome]:
    """Maximize ``f`` by L-BFGS (strong Wolfe line search) from ``xs``; infeasible trial points
    count as -inf, so the line search backs off from them."""
    xs = _leaves(xs)
    q0 = _value(f, xs, reduce)
    if q0 is None:
        return None
    start = float(q0)
    norm = max(1.0, abs(start))
    tight = q0.dtype == torch.float64
    opt = torch.optim.LBFGS(xs, lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.5),
                            tolerance_grad=1e-12 if tight else 1e-6,
                            tolerance_change=1e-14 if tight else 1e-7,
                            history_size=20, line_search_fn="strong_wolfe")
    bad = torch.tensor(float("inf"), dtype=q0.dtype, device=q0.device)

    def closure():
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            q = f(xs)
            if q is not None:
                loss = -q / norm
                loss.backward()
        for x in xs:
            if x.grad is None:
                x.grad = torch.zeros_like(x)
        if reduce is None:
            if q is None or not all(bool(torch.isfinite(x.grad).all()) for x in xs):
                return bad
            return -(q.detach() - start) / norm
        nan = torch.tensor(float("nan"), dtype=q0.dtype, device=q0.device)
        total = _total(reduce, torch.cat([(nan if q is None else q.detach()).reshape(1)]
                                         + [x.grad.reshape(-1) for x in xs]))
        if not bool(torch.isfinite(total).all()):
            return bad
        for x, g in zip(xs, _unflat(total[1:], xs)):  # the gradients of -q / norm, summed
            x.grad.copy_(g)
        return -(total[0] - start) / norm

    opt.step(closure)
    out = [x.detach().clone() for x in xs]
    q1 = _value(f, out, reduce)
    if q1 is None or float(q1) < start:
        return None
    state = opt.state[opt._params[0]]
    stationary = state.get("n_iter", 0) < max_iter
    return Outcome(out, float(q1), stationary)


def maximize(f: Objective, xs: List[torch.Tensor], first: Optional[First] = None,
             reduce: Reduce = None) -> Optional[Outcome]:
    """Newton for small blocks, L-BFGS for large ones (which start afresh from ``xs``)."""
    if sum(x.numel() for x in xs) <= thresholds.NEWTON_MAX_SIZE:
        return newton_maximize(f, xs, first=first, reduce=reduce)
    return lbfgs_maximize(f, [x.detach() for x in xs], reduce=reduce)
