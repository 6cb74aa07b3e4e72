"""Sum-product along a Markov chain: ``log Z`` of a chain of log-factor matrices, by the forward
recursion or by a parallel (associative) scan, differentiable so that one backward pass gives
every posterior marginal and pairwise joint (gradient of a log-partition).

A chain has an initial log-vector ``init`` ``(B, K)`` and per-step log-matrices
``M_t = trans_t + emit_t`` (rows: state before the step, columns: state after it) with
``trans`` ``(1 | B, 1 | T, K, K)`` and ``emit`` ``(B, T, K)`` added along the columns:
``log Z_b = log Σ_ij exp(init_b)_i (exp M_1 ⋯ exp M_T)_ij``. Keeping the two apart lets a
transition shared by every step and sequence stay one ``K × K`` matrix.

- ``"forward"``: Rabiner's scaled recursion, three tensor operations per step, O(T K²) work in
  ``T`` sequential steps (the log-space recursion where a scale underflows).
- ``"scan"``: the steps cut into chunks of about √T, every chunk's product formed by a short
  recursion run on all chunks at once, the chunk products then multiplied pairwise in
  ``log₂`` levels: O(T K³) work in about 2√T + log₂ T sequential steps.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import thresholds

METHODS = ("forward", "scan")


def choose_method(steps: int) -> str:
    return "scan" if steps >= thresholds.SCAN_FROM else "forward"


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


def _shift(x: torch.Tensor, dim) -> torch.Tensor:
    """Maximum along ``dim`` (kept), without gradient; ``-inf`` everywhere gives the dtype's
    lowest finite value."""
    return x.detach().amax(dim, keepdim=True).clamp(min=torch.finfo(x.dtype).min)


def log_matmul_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) @ exp(b))`` for batches of log-space matrices, shifted so nothing overflows."""
    sa, sb = _shift(a, -1), _shift(b, -2)
    return _safe_log(torch.matmul((a - sa).exp(), (b - sb).exp())) + sa + sb


class _PairProducts(torch.autograd.Function):
    """One level of the reduction: ``(M_0 M_1, M_2 M_3, …)`` in log space, plus the unpaired last
    matrix when the count is odd. One autograd node, so that its backward pass fills a single
    gradient tensor instead of splitting, stacking and concatenating per level."""

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
        g = grad_out / prod.clamp(min=torch.finfo(prod.dtype).tiny)  # d log P = dP / P (see _SafeLog)
        grad = el.new_empty((n, ctx.steps, k, k))
        pairs = grad[:, :2 * half].view(n, half, 2, k, k)
        torch.mul(torch.matmul(g, er.transpose(-1, -2)), el, out=pairs[:, :, 0])
        torch.mul(torch.matmul(el.transpose(-1, -2), g), er, out=pairs[:, :, 1])
        if ctx.steps > 2 * half:
            grad[:, 2 * half:] = grad_tail
        return grad


def _probability_tables(trans: torch.Tensor, emit: torch.Tensor):
    """``(A, b̂, taken)``: ``exp`` of ``trans`` and ``emit`` each shifted by its maximum (per step
    matrix, per step), and what the shifts took out of ``log Z`` per chain."""
    t_shift, e_shift = _shift(trans, (-2, -1)), _shift(emit, -1)
    steps = emit.shape[1]
    taken = t_shift.flatten(1).sum(1) * (steps if t_shift.shape[1] == 1 else 1) + e_shift.squeeze(-1).sum(-1)
    return (trans - t_shift).exp(), (emit - e_shift).exp(), taken


def _steps(trans: torch.Tensor, n: int) -> list:
    """The transition of each of ``n`` steps, ``(1 | B, K, K)`` each: one ``unbind`` (a single
    autograd node, where indexing step by step would give a full-size gradient per step)."""
    return [trans[:, 0]] * n if trans.shape[1] == 1 else list(trans.unbind(1))


def _forward_scaled(init: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    """``α̂_t = (α̂_{t-1} A_t) ∘ b̂_t / c_t`` with ``A_t = exp(trans_t - s_t)``, ``b̂_t = exp(emit_t - m_t)``
    (``c_t`` the sum, taken every ``thresholds.RESCALE_EVERY`` steps, else 1);
    ``log Z = log Σ α̂_T + Σ_t (log c_t + s_t + m_t)``. The scales and shifts are constants to
    autograd (log Z does not depend on them), so the gradient is exact. A scale that
    underflows to 0 gives -inf or NaN (the caller then uses ``_forward_log``)."""
    s0 = _shift(init, -1)
    alpha = (init - s0).exp()
    scale = alpha.detach().sum(-1, keepdim=True)
    alpha = alpha / scale
    logs = [scale.log() + s0]
    mats, emits, taken = _probability_tables(trans, emit)
    shared = mats.shape[0] == 1
    emits = emits.unbind(1)
    every = thresholds.RESCALE_EVERY.get(init.dtype, 1)
    for t, (a, e) in enumerate(zip(_steps(mats, len(emits)), emits), 1):
        alpha = (alpha @ a[0] if shared else torch.matmul(alpha.unsqueeze(-2), a).squeeze(-2)) * e
        if t % every == 0 or t == len(emits):
            scale = alpha.detach().sum(-1, keepdim=True)
            alpha = alpha / scale
            logs.append(scale.log())
    return alpha.sum(-1).log() + torch.cat(logs, -1).sum(-1) + taken


def _forward_log(init: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    """``α_t = logsumexp_i(α_{t-1, i} + trans_t[i, ·]) + emit_t``: never underflows."""
    alpha = init
    for a, e in zip(_steps(trans, emit.shape[1]), emit.unbind(1)):
        alpha = log_matmul_exp(alpha.unsqueeze(-2), a).squeeze(-2) + e
    return torch.logsumexp(alpha, -1)


def _forward(init: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    log_z = _forward_scaled(init, trans, emit)
    if not bool((log_z > float("-inf")).all()):  # a scale of 0: -inf, or NaN after it
        return _forward_log(init, trans, emit)
    return log_z


class _ForwardBackward(torch.autograd.Function):
    """The scaled forward recursion with the backward recursion written out (Baum-Welch), for
    the E-step's per-step pair posteriors: the gradients are ``γ_0`` for ``init``, ``γ_t`` for
    ``emit``, ``ξ_t(i, j) = α̂_{t-1}(i) A_t(i, j) b̂_t(j) β̂_t(j) / c_t`` for ``probe`` (zeros
    added to ``trans``), and ``ξ`` summed over the dims ``trans`` broadcasts along for ``trans``,
    so a shared transition never becomes a per-step tensor in the recursions. First derivatives
    only; a scale that underflows gives ``-inf`` (the caller then uses the log-space recursion)."""

    @staticmethod
    def forward(ctx, init, trans, emit, probe):
        s0 = _shift(init, -1)
        mats, emits, taken = _probability_tables(trans, emit)
        alpha = (init - s0).exp()
        scale = alpha.sum(-1, keepdim=True)
        alphas, scales = [alpha / scale], [scale]
        shared = mats.shape[0] == 1
        for a, e in zip(_steps(mats, emits.shape[1]), emits.unbind(1)):
            prev = alphas[-1]
            nxt = (prev @ a[0] if shared else torch.matmul(prev.unsqueeze(-2), a).squeeze(-2)) * e
            scale = nxt.sum(-1, keepdim=True)
            alphas.append(nxt / scale)
            scales.append(scale)
        scales = torch.cat(scales, -1)
        log_z = scales.log().sum(-1) + s0.squeeze(-1) + taken
        ctx.save_for_backward(torch.stack(alphas, 1), scales, mats, emits)
        ctx.trans_shape = trans.shape
        return log_z

    @staticmethod
    def backward(ctx, grad):
        alphas, scales, mats, emits = ctx.saved_tensors
        steps = emits.shape[1]
        shared = mats.shape[0] == 1
        beta = torch.ones_like(alphas[:, 0])
        betas = [beta]
        # w_t = b̂_t β̂_t / c_t, then β̂_{t-1} = A_t w_t
        ws = []
        step_mats = _steps(mats, steps)
        scaled = (emits / scales[:, 1:, None]).unbind(1)
        for t in range(steps - 1, -1, -1):
            w = scaled[t] * betas[-1]
            ws.append(w)
            betas.append(w @ step_mats[t][0].T if shared else torch.matmul(step_mats[t], w.unsqueeze(-1)).squeeze(-1))
        betas.reverse()
        ws.reverse()
        g = grad.unsqueeze(-1)
        gamma = alphas * torch.stack(betas, 1) * g.unsqueeze(-1)
        w = torch.stack(ws, 1) * g.unsqueeze(-1)              # (B, T, K)
        xi = alphas[:, :-1].unsqueeze(-1) * mats * w.unsqueeze(-2)   # α̂_{t-1} A_t w_t: (B, T, K, K)
        trans_grad = xi.sum_to_size(ctx.trans_shape) if ctx.needs_input_grad[1] else None
        return gamma[:, 0], trans_grad, gamma[:, 1:], xi


def _chunk_products(mats: torch.Tensor) -> torch.Tensor:
    """``(B, C, L, K, K)`` log step matrices → their products over each chunk, ``(B, C, K, K)``:
    a recursion over the ``L`` positions run on every chunk at once, in scaled probability
    space (each row divided by its sum at each step), in log space where a row underflows."""
    shift = _shift(mats, (-2, -1))
    probs = (mats - shift).exp().unbind(2)
    rows, scales = probs[0], []
    scale = rows.detach().sum(-1, keepdim=True)
    rows, scales = rows / scale, [scale]
    for p in probs[1:]:
        nxt = torch.matmul(rows, p)
        scale = nxt.detach().sum(-1, keepdim=True)
        rows = nxt / scale
        scales.append(scale)
    out = _safe_log(rows) + torch.cat(scales, -1).log().sum(-1, keepdim=True) + shift.sum(2)
    if bool(out.isnan().any()):
        steps = mats.unbind(2)
        out = steps[0]
        for m in steps[1:]:
            out = log_matmul_exp(out, m)
    return out


def _shared_chunk_products(trans: torch.Tensor, emit: torch.Tensor, steps: int) -> Optional[torch.Tensor]:
    """``_chunk_products`` of ``M_t = trans + emit_t`` (columns) with one ``K × K`` ``trans`` for
    every step, ``emit`` ``(B, C, L, K)`` whose steps past ``steps`` are padding (identity):
    ``rows ← (rows A) ∘ b̂_t``, each row divided by its sum, never a log-matrix per step. None
    where a row underflows (the caller then uses the log-space products)."""
    b, c, length, k = emit.shape
    t_shift = _shift(trans, (-2, -1))
    a = (trans - t_shift).exp()
    e_shift = _shift(emit, -1)
    probs = (emit - e_shift).exp().unbind(2)
    real = torch.arange(c * length, device=emit.device).reshape(c, length) < steps   # (C, L)
    full = real.all(0).tolist()
    rows = a * probs[0].unsqueeze(-2)
    scale = rows.detach().sum(-1, keepdim=True)
    rows, scales = rows / scale, [scale]
    eye = torch.eye(k, dtype=emit.dtype, device=emit.device)
    every = thresholds.RESCALE_EVERY.get(emit.dtype, 1)
    for s in range(1, length):
        nxt = torch.matmul(rows, a) * probs[s].unsqueeze(-2)
        if not full[s]:
            nxt = torch.where(real[:, s, None, None], nxt, rows)
        if s % every == 0 or s == length - 1:  # rows renormalized every few steps, as in the forward recursion
            scale = nxt.detach().sum(-1, keepdim=True)
            nxt = nxt / scale
            scales.append(scale)
        rows = nxt
    if not full[0]:  # a chunk made only of padding: the identity
        rows = torch.where(real[:, 0, None, None], rows, eye)
    out = _safe_log(rows) + torch.cat(scales, -1).log().sum(-1, keepdim=True)
    counted = real.to(emit.dtype)                                            # (C, L)
    shift = (e_shift.squeeze(-1) * counted).sum(-1) + t_shift.reshape(()) * counted.sum(-1)
    out = out + shift[..., None, None]
    return None if bool(out.isnan().any()) else out


def _scan(init: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """``log Z = logsumexp_ij(init_i + (M_1 ⋯ M_T)_ij)`` by chunk products and a pairwise reduction."""
    b, steps, k = emit.shape
    chunk = chunk or max(1, min(32, int(round(steps ** 0.5))))
    n_chunks = -(-steps // chunk)
    pad = n_chunks * chunk - steps
    mats = None
    if trans.shape[0] == 1 and trans.shape[1] == 1:
        padded = torch.cat((emit, emit.new_zeros((b, pad, k))), dim=1) if pad else emit
        mats = _shared_chunk_products(trans[0, 0], padded.reshape(b, n_chunks, chunk, k), steps)
    if mats is None:
        mats = (trans + emit.unsqueeze(-2)).expand(b, steps, k, k)
        if pad:  # identity steps: 0 on the diagonal, -inf off it
            eye = torch.full((k, k), float("-inf"), dtype=mats.dtype, device=mats.device).fill_diagonal_(0.0)
            mats = torch.cat((mats, eye.expand(b, pad, k, k)), dim=1)
        mats = _chunk_products(mats.reshape(b, n_chunks, chunk, k, k))
    tails = []  # unpaired last matrices, latest in time first
    while mats.shape[1] > 1:
        mats, tail = _PairProducts.apply(mats)
        if tail.shape[1]:
            tails.append(tail[:, 0])
    total = mats[:, 0]
    for tail in reversed(tails):
        total = log_matmul_exp(total, tail)
    return torch.logsumexp(init.unsqueeze(-1) + total, dim=(-2, -1))


def chain_log_partition(init: torch.Tensor, trans: torch.Tensor, emit: Optional[torch.Tensor] = None,
                        method: Optional[str] = None, probe: Optional[torch.Tensor] = None,
                        first_order: bool = False) -> torch.Tensor:
    """``log Z_b`` of ``B`` chains, shape ``(B,)``; differentiable in all inputs.

    :param init: ``(B, K)`` log-factor of the first state.
    :param trans: ``(1 | B, 1 | T, K, K)`` log-factors of the steps, rows = state before the step.
    :param emit: ``(B, T, K)`` log-factors of the state after each step (None: zeros).
    :param method: ``"forward"``, ``"scan"`` or None (the scan from ``thresholds.SCAN_FROM`` steps on).
    :param probe: ``(B, T, K, K)`` zeros added to ``trans``, whose gradient is the posterior of
        each step's pair of states.
    :param first_order: only first derivatives will be taken (the E-step): with a ``probe``,
        the forward method then runs the backward recursion itself, so that a shared ``trans``
        stays shared (autograd would need it per step to give the per-step posteriors).
    """
    if trans.dim() != 4 or init.dim() != 2:
        raise ValueError(f"init must be (B, K) and trans (B, T, K, K), got {tuple(init.shape)} and {tuple(trans.shape)}")
    b, k = init.shape
    steps = trans.shape[1] if emit is None else emit.shape[1]
    # factors of mixed precision (float32 params, float64 data): the recursion runs in the wider type
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in (init, trans, emit, probe) if t is not None])
    init, trans = init.to(dtype), trans.to(dtype)
    emit = None if emit is None else emit.to(dtype)
    probe = None if probe is None else probe.to(dtype)
    if emit is None:
        emit = init.new_zeros((b, steps, k))
    if steps == 0:
        return torch.logsumexp(init, -1)
    method = method or choose_method(steps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "forward" and first_order and probe is not None:
        log_z = _ForwardBackward.apply(init, trans, emit, probe)
        if bool((log_z > float("-inf")).all()):
            return log_z
    if probe is not None:
        trans = trans + probe
    return (_forward if method == "forward" else _scan)(init, trans, emit)
