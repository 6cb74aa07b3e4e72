"""Exact HMM inference for a batch of padded sequences: ``log p(y)`` by the forward algorithm,
posteriors as its gradients.

The chain has log factors ``log π`` (K,), ``log A`` (K, K) (rows = previous state) and per-step
emission log-likelihoods ``log b`` (B, T, K). ``log Z_n = log p(y_n)`` is computed either by the
forward recursion (a loop over time, vectorized over sequences and states: O(T K²) work in T
sequential steps) or, with ``method="scan"``, as the product of the per-step K×K matrices
``A diag(b_t)``: products over short chunks (all chunks at once), then a log-depth pairwise
reduction of the chunk products (O(T K³) work in at most 32 + log₂ T sequential steps).
Both work in scaled probability space where that is exact and fall back to log space where a
scale underflows. Expectations are gradients of the log-partition function:
``∂ Σ log Z / ∂ log b_{n,t,k} = p(x_{n,t} = k | y_n)`` and
``∂ Σ log Z / ∂ log A_ij = Σ_{n,t} p(x_{n,t-1} = i, x_{n,t} = j | y_n)``, so one backward pass
replaces the backward recursion.
"""
from __future__ import annotations

from typing import Tuple

import torch

METHODS = ("forward", "scan")


class _SafeLog(torch.autograd.Function):
    """``log x`` whose gradient is 0 (not ``0 · ∞ = NaN``) where ``x == 0``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.log()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # where x == 0 the output is -inf and every later use multiplies it by exp(-inf) = 0, so
        # the incoming gradient is 0 there: dividing by the smallest normal number keeps it 0.
        (x,) = ctx.saved_tensors
        return grad / x.clamp(min=torch.finfo(x.dtype).tiny)


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return _SafeLog.apply(x)


def _shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Maximum along ``dim`` (kept), without gradient; ``-inf`` rows give the dtype's lowest finite value."""
    return x.detach().amax(dim, keepdim=True).clamp(min=torch.finfo(x.dtype).min)


def log_matmul_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) @ exp(b))`` for batches of log-space matrices, shifted so nothing overflows."""
    sa, sb = _shift(a, -1), _shift(b, -2)
    return _safe_log(torch.matmul((a - sa).exp(), (b - sb).exp())) + sa + sb


class _PairProducts(torch.autograd.Function):
    """One level of the reduction: ``(M_0 M_1, M_2 M_3, …)`` in log space, plus the unpaired last
    matrix when the count is odd. Written as one autograd node so that its backward pass fills a
    single gradient tensor instead of splitting, stacking and concatenating per level."""

    @staticmethod
    def forward(ctx, mats: torch.Tensor):
        n, steps, k, _ = mats.shape
        even = steps - steps % 2
        pairs = mats[:, :even].reshape(n, even // 2, 2, k, k)
        left, right = pairs[:, :, 0], pairs[:, :, 1]
        sl, sr = _shift(left, -1), _shift(right, -2)
        el, er = (left - sl).exp(), (right - sr).exp()
        prod = torch.matmul(el, er)
        out = prod.log() + sl + sr
        ctx.save_for_backward(el, er, prod)
        ctx.steps = steps
        return out, mats[:, even:].clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_tail: torch.Tensor):
        el, er, prod = ctx.saved_tensors
        n, half, k, _ = el.shape
        # log P: dP = g / P (P == 0 gives -inf, whose incoming gradient is 0; see _SafeLog)
        g = grad_out / prod.clamp(min=torch.finfo(prod.dtype).tiny)
        grad = el.new_empty((n, ctx.steps, k, k))
        pairs = grad[:, :2 * half].view(n, half, 2, k, k)
        torch.mul(torch.matmul(g, er.transpose(-1, -2)), el, out=pairs[:, :, 0])
        torch.mul(torch.matmul(el.transpose(-1, -2), g), er, out=pairs[:, :, 1])
        if ctx.steps > 2 * half:
            grad[:, 2 * half:] = grad_tail
        return grad


def _check(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
           mask: torch.Tensor, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if log_emit.dim() != 3:
        raise ValueError(f"log_emit must have shape (B, T, K), got {tuple(log_emit.shape)}")
    k = log_emit.shape[-1]
    if log_start.shape != (k,) or log_trans.shape != (k, k):
        raise ValueError(f"log_start must have shape ({k},) and log_trans ({k}, {k}), got "
                         f"{tuple(log_start.shape)} and {tuple(log_trans.shape)}")
    if mask.shape != log_emit.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(log_emit.shape[:2])}")


def _forward_scaled(log_start, log_trans, log_emit, mask) -> torch.Tensor:
    """Rabiner's scaled recursion ``α̂_t = (α̂_{t-1} A) ∘ b̂_t / c_t`` with ``b̂_t = exp(log b_t - m_t)``,
    ``log Z = log Σ_k α̂_T + Σ_t (log c_t + m_t)``: three tensor operations per step, no logarithm
    inside the loop. The scales ``c_t`` and shifts ``m_t`` are constants to autograd: ``log Z``
    does not depend on them, so the gradient is exact. A ``c_t`` that underflows to 0 gives NaN
    (the caller then uses ``_forward_log``)."""
    shift = _shift(log_emit, -1)
    emits = (log_emit - shift).exp().unbind(1)
    trans = log_trans.exp()
    full = mask.all(0).tolist()
    alpha = log_start.exp() * emits[0]
    scales = [alpha.detach().sum(-1, keepdim=True)]
    alpha = alpha / scales[0]
    for t in range(1, len(emits)):
        nxt = torch.matmul(alpha, trans) * emits[t]
        if not full[t]:
            nxt = torch.where(mask[:, t, None], nxt, alpha)
        scale = nxt.detach().sum(-1, keepdim=True)
        alpha = nxt / scale
        scales.append(scale)
    log_const = torch.cat(scales, -1).log().sum(-1) + (shift.squeeze(-1) * mask).sum(-1)
    return alpha.sum(-1).log() + log_const


def _forward_log(log_start, log_trans, log_emit, mask) -> torch.Tensor:
    """``α_t = log((exp(α_{t-1} - m) @ A)) + m + log b_t``; padded steps keep ``α``. Never
    underflows, at about twice the cost per step of ``_forward_scaled``."""
    trans = log_trans.exp()
    full = mask.all(0).tolist()
    emits = log_emit.unbind(1)          # one stack in the backward pass, not a copy per step
    alpha = log_start + emits[0]
    for t in range(1, len(emits)):
        m = _shift(alpha, -1)
        nxt = _safe_log(torch.matmul((alpha - m).exp(), trans)) + m + emits[t]
        alpha = nxt if full[t] else torch.where(mask[:, t, None], nxt, alpha)
    return torch.logsumexp(alpha, -1)


def _forward(log_start, log_trans, log_emit, mask) -> torch.Tensor:
    """The scaled recursion; the log-space one for the whole batch if a scale underflowed."""
    log_z = _forward_scaled(log_start, log_trans, log_emit, mask)
    if not bool((log_z > float("-inf")).all()):            # a scale of 0: -inf, or 0/0 = NaN after it
        return _forward_log(log_start, log_trans, log_emit, mask)
    return log_z


def _chunk_products_scaled(log_trans: torch.Tensor, log_emit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``_chunk_products`` by the scaled recursion (each row divided by its sum at every step, the
    log sums added back at the end): a matrix product, a product and a division per step. A row
    whose sum underflows to 0 turns into NaN (the caller then uses ``_chunk_products``)."""
    k = log_emit.shape[-1]
    shift = _shift(log_emit, -1)
    emits = (log_emit - shift).exp().unbind(2)
    trans = log_trans.exp()
    full = mask.flatten(0, 1).all(0).tolist()
    rows, scales = None, []
    for step, emit in enumerate(emits):
        nxt = (trans if rows is None else torch.matmul(rows, trans)) * emit.unsqueeze(-2)
        if not full[step]:
            before = torch.eye(k, dtype=nxt.dtype, device=nxt.device) if rows is None else rows
            nxt = torch.where(mask[:, :, step, None, None], nxt, before)
        scale = nxt.detach().sum(-1, keepdim=True)
        rows = nxt / scale
        scales.append(scale)
    log_scale = torch.cat(scales, -1).log().sum(-1, keepdim=True)
    return _safe_log(rows) + log_scale + (shift.squeeze(-1) * mask).sum(-1)[..., None, None]


def _chunk_products(log_trans: torch.Tensor, log_emit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Products of the step matrices ``M_t = log A + log b_t`` over chunks, computed row by row:
    each row is the log-space forward recursion started from one state. ``log_emit`` is
    ``(B, C, L, K)``, ``mask`` ``(B, C, L)``; returns ``(B, C, K, K)`` (rows: state before the
    chunk, columns: state at its last step)."""
    k = log_emit.shape[-1]
    trans = log_trans.exp()
    log_eye = torch.full((k, k), float("-inf"), dtype=log_emit.dtype, device=log_emit.device)
    log_eye.fill_diagonal_(0.0)
    full = mask.flatten(0, 1).all(0).tolist()
    emits = log_emit.unbind(2)
    rows = None
    for step, emit in enumerate(emits):
        if rows is None:
            nxt = log_trans + emit.unsqueeze(-2)
            rows = nxt if full[step] else torch.where(mask[:, :, step, None, None], nxt, log_eye)
            continue
        m = _shift(rows, -1)
        nxt = _safe_log(torch.matmul((rows - m).exp(), trans)) + m + emit.unsqueeze(-2)
        rows = nxt if full[step] else torch.where(mask[:, :, step, None, None], nxt, rows)
    return rows


def _scan(log_start, log_trans, log_emit, mask, chunk: int = 0) -> torch.Tensor:
    """``log Z = logsumexp_ij(α_0[i] + (M_1 ⋯ M_{T-1})[i, j])`` with ``M_t[i, j] = log A_ij + log b_t(j)``
    (identity on padded steps): the steps are cut into chunks of ``chunk`` (default ``≈ √T``,
    at most 32), each chunk's product is formed by a short recursion run on all chunks at once,
    and the chunk products are reduced pairwise in ``log2`` of their number of levels."""
    n, t_max, k = log_emit.shape
    first, rest = log_emit.split([1, t_max - 1], dim=1)
    alpha0 = log_start + first[:, 0]
    if t_max == 1:
        return torch.logsumexp(alpha0, -1)
    steps = t_max - 1
    chunk = chunk or max(1, min(32, int(round(steps ** 0.5))))
    n_chunks = -(-steps // chunk)
    pad = n_chunks * chunk - steps
    step_mask = mask[:, 1:]
    if pad:
        rest = torch.cat((rest, rest.new_zeros((n, pad, k))), dim=1)
        step_mask = torch.cat((step_mask, step_mask.new_zeros((n, pad))), dim=1)
    rest, step_mask = rest.reshape(n, n_chunks, chunk, k), step_mask.reshape(n, n_chunks, chunk)
    mats = _chunk_products_scaled(log_trans, rest, step_mask)
    if bool(mats.isnan().any()):
        mats = _chunk_products(log_trans, rest, step_mask)
    tails = []                      # unpaired last matrices, latest in time first
    while mats.shape[1] > 1:
        mats, tail = _PairProducts.apply(mats)
        if tail.shape[1]:
            tails.append(tail[:, 0])
    total = mats[:, 0]
    for tail in reversed(tails):
        total = log_matmul_exp(total, tail)
    return torch.logsumexp(alpha0.unsqueeze(-1) + total, dim=(-2, -1))


def log_partition(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                  mask: torch.Tensor, method: str = "forward") -> torch.Tensor:
    """``log p(y_n)`` of every sequence, shape ``(B,)``; differentiable in all three factors.

    :param log_start: ``(K,)`` log initial probabilities.
    :param log_trans: ``(K, K)`` log transition matrix, rows = previous state.
    :param log_emit: ``(B, T, K)`` emission log-likelihoods ``log p(y_{n,t} | x_{n,t} = k)``.
    :param mask: ``(B, T)`` bool, True on real steps; every sequence starts at step 0 and its
        padding follows its last real step.
    :param method: ``"forward"`` (sequential in time) or ``"scan"`` (parallel in time).
    """
    _check(log_start, log_trans, log_emit, mask, method)
    return (_forward if method == "forward" else _scan)(log_start, log_trans, log_emit, mask)


def expectations(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                 mask: torch.Tensor, method: str = "forward"
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log Z (B,), γ (B, T, K), ξ (K, K))`` from one backward pass of ``Σ_n log Z_n``.

    ``γ[n, t, k] = p(x_{n,t} = k | y_n)`` (0 on padded steps) and
    ``ξ[i, j] = Σ_{n,t} p(x_{n,t-1} = i, x_{n,t} = j | y_n)``, the expected transition counts.
    Inputs are detached; the result carries no graph.
    """
    _check(log_start, log_trans, log_emit, mask, method)
    with torch.enable_grad():
        trans = log_trans.detach().requires_grad_()
        emit = log_emit.detach().requires_grad_()
        log_z = (_forward if method == "forward" else _scan)(log_start.detach(), trans, emit, mask)
        gamma, xi = torch.autograd.grad(log_z.sum(), (emit, trans))
    return log_z.detach(), gamma * mask.unsqueeze(-1).to(gamma.dtype), xi
