"""The autograd M-step on data in pieces: ``Q(θ|θₙ) = Σ_p Q_p(θ|θₙ)`` maximized by L-BFGS over the
unconstrained values of every fitted parameter, each evaluation running piece by piece — the
piece's E-step at θₙ (the param store), ``Q_p`` at θ, its gradient accumulated, its graph freed —
so memory stays that of one piece. Each evaluation costs two traces of every piece: closed-form
``statistics``/``solve`` are much faster where they exist.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import pyro
import torch
from torch.distributions import transform_to

from .estep import contract_trace
from .expectations import Expectations
from .handlers import param_constraint, unconstrained
from .model_trace import ModelTracer
from .qfunction import QFunction

Pieces = Iterable[Tuple[tuple, dict]]


def _piece_q(tracer: ModelTracer, args: tuple, kwargs: dict, values) -> Optional[torch.Tensor]:
    """``Q_p(θ|θₙ)`` of one piece: its E-step at the store's θₙ, then Q at ``values``; None where
    the model rejects ``values``."""
    with torch.no_grad():
        expect = Expectations(contract_trace(tracer.trace(args, kwargs)))
    return QFunction(tracer, expect, args, kwargs).try_value(values)


def maximize_over_pieces(tracer: ModelTracer, pieces: Pieces, names: List[str], max_iter: int = 100) -> bool:
    """Raise ``Σ_p Q_p`` over the params ``names`` from θₙ and write the maximizer to the param
    store (θₙ stays where no point improves on it); returns whether L-BFGS stopped at a
    stationary point."""
    store = pyro.get_param_store()
    transforms = [transform_to(param_constraint(n, store)) for n in names]
    xs = [unconstrained(n).detach().clone().requires_grad_() for n in names]

    def values():
        return {n: t(x) for n, t, x in zip(names, transforms, xs)}

    def total_value() -> Optional[float]:
        total = 0.0
        for args, kwargs in pieces:
            with torch.no_grad():
                q = _piece_q(tracer, args, kwargs, values())
            if q is None:
                return None
            total += float(q)
        return total

    start = total_value()
    if start is None:
        return False
    norm = max(1.0, abs(start))
    tight = xs[0].dtype == torch.float64
    opt = torch.optim.LBFGS(xs, lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.5),
                            tolerance_grad=1e-12 if tight else 1e-6, tolerance_change=1e-14 if tight else 1e-7,
                            history_size=20, line_search_fn="strong_wolfe")
    bad = torch.tensor(float("inf"), dtype=xs[0].dtype, device=xs[0].device)

    def closure():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for args, kwargs in pieces:  # one piece's graph at a time
            with torch.enable_grad():
                q = _piece_q(tracer, args, kwargs, values())
                if q is None:
                    return bad
                (-q / norm).backward()
            total += float(q.detach())
        for x in xs:
            if x.grad is None:
                x.grad = torch.zeros_like(x)
            elif not bool(torch.isfinite(x.grad).all()):
                return bad
        return torch.tensor(-(total - start) / norm, dtype=xs[0].dtype, device=xs[0].device)

    opt.step(closure)
    end = total_value()
    if end is None or end < start:
        return False
    with torch.no_grad():
        for name, x in zip(names, xs):
            unconstrained(name).copy_(x.detach())
    return opt.state[opt._params[0]].get("n_iter", 0) < max_iter
