"""log Z and the posterior of a single-leaf component (a mixture: prior and likelihood in one
table) in one pass over memory: the E-step's logsumexp kernel."""
from __future__ import annotations

import math
from typing import List

import torch

from . import thresholds


_EXP_FLOOR = {torch.float64: -700.0}  # others: -80


def _lse_piece(x: torch.Tensor, addends: List[torch.Tensor], dims: List[int], e: torch.Tensor,
               floor: float) -> tuple:
    """The posterior ``softmax(x + Σ addends)`` over ``dims`` written into ``e`` (exactly 0 where
    the exponent is at or below ``floor`` from the top), and ``(top, Σ exp(x + Σ addends - top))``."""
    if addends:
        torch.add(x, addends[0], out=e)
        for a in addends[1:]:
            e.add_(a)
    elif e.data_ptr() != x.data_ptr():
        e.copy_(x)
    top = e.amax(dims, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)
    # exp(max(e, floor)) - exp(floor): exactly 0 at and below the floor (log 0 included) and
    # off by exp(floor) (below any rounding) elsewhere; no subnormals, which are slow on CPUs
    e.sub_(top).clamp_min_(floor).exp_().sub_(math.exp(floor))
    total = e.sum(dims, keepdim=True)
    e.div_(total)  # the posterior, while the piece is in cache
    return top, total


class LogSumExp(torch.autograd.Function):
    """``log Σ exp (x + Σ addends)`` over ``dims`` for the E-step. The forward runs in pieces
    along the largest kept dim (every pass over a piece stays in cache) and keeps the
    normalized posterior, so the backward is the posterior itself (scaled only when the
    incoming gradient is not all ones). ``addends`` are
    constants broadcasting against ``x``; the gradient is taken with respect to ``x`` only,
    which equals the gradient with respect to the sum. First derivatives only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: List[int], scratch: bool, *addends: torch.Tensor) -> torch.Tensor:
        dims = sorted(d % x.dim() for d in dims)
        floor = _EXP_FLOOR.get(x.dtype, -80.0)
        kept = [d for d in range(x.dim()) if d not in dims]
        # the posterior goes into x's own memory when x is scratch and dense, else into a new
        # tensor with x's memory layout
        e = x.detach() if scratch and x.is_contiguous() else torch.empty_like(x)
        along = max(kept, key=lambda d: x.shape[d]) if kept else None
        step = 0 if along is None else max(1, thresholds.LSE_PIECE * x.shape[along] // max(1, x.numel()))
        if along is None or x.device.type != "cpu" or step >= x.shape[along]:
            top, s = _lse_piece(x, list(addends), dims, e, floor)
        else:
            keep_shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
            top, s = x.new_empty(keep_shape), x.new_empty(keep_shape)
            n = x.shape[along]
            for a in range(0, n, step):
                m = min(step, n - a)
                parts = [t if t.shape[along] == 1 else t.narrow(along, a, m) for t in addends]
                t_, s_ = _lse_piece(x.narrow(along, a, m), parts, dims, e.narrow(along, a, m), floor)
                top.narrow(along, a, m).copy_(t_)
                s.narrow(along, a, m).copy_(s_)
        ctx.save_for_backward(e)
        ctx.dims = dims
        ctx.n_addends = len(addends)
        out = s.log().add_(top)
        for d in reversed(dims):
            out = out.squeeze(d)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (e,) = ctx.saved_tensors
        for d in ctx.dims:
            grad = grad.unsqueeze(d)
        # e is not needed again: the posterior takes its memory. The E-step's gradient is a
        # broadcast 1 (log Z summed); checked on the CPU only, where reading it costs no sync
        ones = (e.device.type == "cpu" and all(st == 0 for st in grad.stride())
                and float(grad.reshape(-1)[0]) == 1.0)
        return (e if ones else e.mul_(grad), None, None) + (None,) * ctx.n_addends
