"""Viterbi decoding (max-product along a chain), vectorized over sequences and states.

:func:`viterbi`, :func:`viterbi_speculative` (long sequences) and :func:`viterbi_blocked` decode
padded sequences of a chain with one shared transition matrix (hmmlearn's tie-breaking);
:func:`chain_viterbi` decodes the chain tables the E-step builds (``pyroem.chain_kernels``), whose
transitions may vary along time and batch."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from . import thresholds


def _columns_reversed(log_trans: torch.Tensor) -> torch.Tensor:
    """``log Aᵀ`` with its last dim reversed: ``out[..., j, r] = log A[K-1-r, j]``, the layout in
    which :func:`_best_predecessor` reduces over contiguous memory."""
    return log_trans.transpose(-2, -1).flip(-1).contiguous()


def _best_predecessor(delta: torch.Tensor, cols_rev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``max_i δ(i) + log A_ij`` and its ``i`` for every ``j`` (batched over leading dims of
    ``delta``), ties to the last maximal ``i``: the max runs over the reversed states
    (``cols_rev`` from :func:`_columns_reversed`), where the first maximum is the last one of the
    original order."""
    best, idx = (delta.flip(-1).unsqueeze(-2) + cols_rev).max(dim=-1)
    return best, cols_rev.shape[-1] - 1 - idx


def _backtrack(pointers, end: int) -> list:
    """The path ending in state ``end`` whose steps ``pointers[t][x_{t+1}] = x_t`` give."""
    path = [end]
    for row in reversed(pointers):
        path.append(row[path[-1]])
    return path[::-1]


def _forward_torch(log_start, log_trans, log_emit, mask):
    """``(max_j δ_T(j), argmax, ψ as numpy (N, T-1, K))`` by the recursion, on the data's device."""
    cols_rev = _columns_reversed(log_trans)
    full = mask.all(0).tolist()
    delta = log_start + log_emit[:, 0]
    pointers = []
    for t in range(1, log_emit.shape[1]):
        best, ptr = _best_predecessor(delta, cols_rev)
        nxt = best + log_emit[:, t]
        pointers.append(ptr)
        delta = nxt if full[t] else torch.where(mask[:, t, None], nxt, delta)
    log_prob, end_state = delta.max(-1)
    psi = torch.stack(pointers, dim=1).cpu().numpy() if pointers else None
    return log_prob, end_state, psi


def _viterbi_scalar(log_start, log_trans, emit):
    """``(log prob, path)`` of one float64 sequence by the recursion over Python floats (IEEE
    doubles: the same bits as :func:`_forward_numpy`); ties go to the last maximal predecessor
    and the first maximal end state, as there."""
    k = len(log_start)
    cols = log_trans.T.tolist()                       # cols[j][i] = log A_ij
    rows = emit.tolist()
    delta = [a + b for a, b in zip(log_start.tolist(), rows[0])]
    states = range(k)
    psi = []
    for e in rows[1:]:
        nxt, ptr = [], []
        for j in states:
            col, best, arg = cols[j], -math.inf, 0
            for i in states:
                v = delta[i] + col[i]
                if v >= best:
                    best, arg = v, i
            nxt.append(best + e[j])
            ptr.append(arg)
        delta = nxt
        psi.append(ptr)
    end = max(states, key=delta.__getitem__)          # the first maximal state
    return delta[end], _backtrack(psi, end)


def _forward_numpy(log_start, log_trans, log_emit, mask):
    """:func:`_forward_torch` in numpy (the same additions in the same order, so the same bits)."""
    n_seq, t_max, k = log_emit.shape
    trans_rev = log_trans[::-1]
    full = mask.all(0)
    delta = log_start + log_emit[:, 0]
    psi = np.empty((n_seq, max(t_max - 1, 0), k), dtype=np.int64)
    for t in range(1, t_max):
        scores = delta[:, ::-1, None] + trans_rev              # (N, K_prev reversed, K)
        idx = scores.argmax(1)                                  # first max: the last maximal i
        nxt = scores.max(1) + log_emit[:, t]
        psi[:, t - 1] = k - 1 - idx
        delta = nxt if full[t] else np.where(mask[:, t, None], nxt, delta)
    return delta.max(-1), delta.argmax(-1), psi


def viterbi(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
            mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Most probable state paths.

    Forward (O(T K²), vectorized over sequences): ``δ_t(j) = max_i [δ_{t-1}(i) + log A_ij] +
    log b_j(y_t)`` with back-pointers ``ψ_t(j)`` = the maximizing ``i``; padded steps (``mask``
    False) keep ``δ``. Backward: ``x_{T_n - 1} = argmax δ_{T_n - 1}``, ``x_{t-1} = ψ_t(x_t)``,
    followed on the host (one integer look-up per step). Exact ties between paths resolve as in
    hmmlearn: the first maximal state at the end, the last maximal one in ``ψ``.

    :param log_start: ``(K,)`` log initial probabilities.
    :param log_trans: ``(K, K)`` log transition matrix, rows = previous state.
    :param log_emit: ``(N, T, K)`` log emission probabilities per sequence, step and state.
    :param mask: ``(N, T)`` bool, True on real steps (each sequence starts at step 0).
    :returns: ``(log_prob (N,), states (N, T))`` on the data's device; states at padded steps
        are meaningless.
    """
    n_seq, t_max, k = log_emit.shape
    if (log_emit.device.type == "cpu" and n_seq == 1 and k <= thresholds.VITERBI_SCALAR_MAX_STATES
            and log_emit.dtype == torch.float64 and bool(mask.all())):
        log_prob, path = _viterbi_scalar(*(x.detach().numpy() for x in (log_start, log_trans, log_emit[0])))
        return (torch.tensor([log_prob], dtype=log_emit.dtype),
                torch.tensor([path], dtype=torch.long, device=log_emit.device))
    if log_emit.device.type == "cpu" and n_seq * k * k < thresholds.VITERBI_TORCH_FROM:
        # few scores per step: numpy's per-call cost is a fraction of torch's
        arrays = (x.detach().numpy() for x in (log_start, log_trans, log_emit, mask))
        log_prob, end_state, psi = _forward_numpy(*arrays)
        log_prob, end_state = torch.from_numpy(log_prob), torch.from_numpy(end_state)
    else:
        log_prob, end_state, psi = _forward_torch(log_start, log_trans, log_emit, mask)
    if t_max == 1:
        return log_prob, end_state.unsqueeze(1)
    last = mask.sum(-1) - 1
    ends, end_states = last.cpu().numpy(), end_state.cpu().numpy()
    if n_seq == 1:  # one sequence: follow the pointers as Python integers, far cheaper per step
        states = np.zeros((1, t_max), dtype=np.int64)
        states[0, :ends[0] + 1] = _backtrack(psi[0, :ends[0]].tolist(), int(end_states[0]))
        return log_prob, torch.as_tensor(states, device=log_emit.device)
    states = np.zeros((n_seq, t_max), dtype=np.int64)
    rows = np.arange(n_seq)
    state = end_states.copy()
    for t in range(t_max - 1, -1, -1):
        state = np.where(ends == t, end_states, state)
        states[:, t] = state
        if t:
            state = np.where(t <= ends, psi[rows, t - 1, state], state)
    return log_prob, torch.as_tensor(states, device=log_emit.device)


def _max_plus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a ⊗ b)[i, j] = max_l a[i, l] + b[l, j]`` over the last two dims (batched)."""
    return (a.unsqueeze(-1) + b.unsqueeze(-3)).amax(-2)


def _cut_into_blocks(log_emit: torch.Tensor, mask: torch.Tensor, c: int):
    """The emissions and mask of steps ``1 … T-1`` cut into blocks of ``c`` steps, the last one
    padded with masked steps: ``(emit (N, B, c, K), step_mask (N, B, c), B)``."""
    n_seq, t_max, k = log_emit.shape
    steps = t_max - 1
    n_blocks = -(-steps // c)
    pad = n_blocks * c - steps
    emit, step_mask = log_emit[:, 1:], mask[:, 1:]
    if pad:
        emit = torch.cat((emit, emit.new_zeros((n_seq, pad, k))), dim=1)
        step_mask = torch.cat((step_mask, step_mask.new_zeros((n_seq, pad))), dim=1)
    return emit.reshape(n_seq, n_blocks, c, k), step_mask.reshape(n_seq, n_blocks, c), n_blocks


def viterbi_blocked(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                    mask: torch.Tensor, chunk: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` with about ``6 √T`` sequential steps instead of ``2 T``, for long sequences.

    The ``T - 1`` transitions are cut into blocks of ``chunk`` (default ``≈ √T``). (1) Each
    block's max-plus product of the step matrices ``M_t[i, j] = log A_ij + log b_j(y_t)`` (the
    identity on padded steps), all blocks at once; (2) ``δ`` at every block start, block after
    block; (3) the recursion inside every block at once, keeping the back-pointers ``ψ_t``;
    (4) each block's composed back-pointer map; (5) the state at every block end, block after
    block from the last; (6) the states inside every block at once. Same path as :func:`viterbi`
    up to rounding: ``δ`` at a block start is summed in another order, so two paths whose
    log-probabilities agree to rounding may be chosen between differently.
    """
    n_seq, t_max, k = log_emit.shape
    delta = log_start + log_emit[:, 0]
    if t_max == 1:
        log_prob, end_state = delta.max(-1)
        return log_prob, end_state.unsqueeze(1)
    steps = t_max - 1
    c = chunk or max(1, int(round(steps ** 0.5)))
    emit, step_mask, n_blocks = _cut_into_blocks(log_emit, mask, c)
    eye = torch.full((k, k), -math.inf, dtype=log_emit.dtype, device=log_emit.device)
    eye.fill_diagonal_(0.0)

    # (1) block products
    prod = eye.expand(n_seq, n_blocks, k, k)
    for s in range(c):
        m = torch.where(step_mask[:, :, s, None, None], log_trans + emit[:, :, s, None, :], eye)
        prod = _max_plus(prod, m)
    # (2) δ at every block start
    starts = [delta]
    for b in range(n_blocks - 1):
        starts.append((starts[-1].unsqueeze(-1) + prod[:, b]).amax(-2))
    delta = torch.stack(starts, dim=1)                                # (N, B, K)
    # (3) the recursion inside all blocks, with back-pointers (identity on padded steps)
    cols_rev = _columns_reversed(log_trans)
    same = torch.arange(k, device=log_emit.device).expand(n_seq, n_blocks, k)
    psi = torch.empty((n_seq, n_blocks, c, k), dtype=torch.long, device=log_emit.device)
    for s in range(c):
        best, ptr = _best_predecessor(delta, cols_rev)
        real = step_mask[:, :, s, None]
        psi[:, :, s] = torch.where(real, ptr, same)
        delta = torch.where(real, best + emit[:, :, s], delta)
    log_prob, end_state = delta[:, -1].max(-1)
    # (4) each block's map from its last state to the state before its first step
    back = same
    for s in range(c - 1, -1, -1):
        back = psi[:, :, s].gather(-1, back)
    # (5) the state at every block end, from the last block back
    ends = [end_state]
    for b in range(n_blocks - 1, 0, -1):
        ends.append(back[:, b].gather(-1, ends[-1].unsqueeze(-1)).squeeze(-1))
    state = torch.stack(ends[::-1], dim=1)                            # (N, B)
    # (6) the states inside all blocks
    states = torch.empty((n_seq, n_blocks, c), dtype=torch.long, device=log_emit.device)
    for s in range(c - 1, -1, -1):
        states[:, :, s] = state
        state = psi[:, :, s].gather(-1, state.unsqueeze(-1)).squeeze(-1)
    out = torch.cat((state[:, :1], states.reshape(n_seq, n_blocks * c)[:, :steps]), dim=1)
    return log_prob, out


def _parallel(new: torch.Tensor, old: torch.Tensor, tol: float) -> torch.Tensor:
    """Per row of ``(..., K)``: is ``new - old`` the same number in every state (to ``tol``
    relative to the scores' size), with the same impossible (``-inf``) states?"""
    live = torch.isfinite(new)
    support = (live == torch.isfinite(old)).all(-1)
    d = torch.where(live, new - old, 0.0)
    spread = torch.where(live, d, -math.inf).amax(-1) - torch.where(live, d, math.inf).amin(-1)
    size = torch.where(live, new.abs(), 0.0).amax(-1)
    return (support & (spread <= tol * (1.0 + size))) | ~live.any(-1)


def viterbi_speculative(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                        mask: torch.Tensor, chunk: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` for long sequences with O(T K²) work in about ``4 √T`` sequential steps.

    The ``T - 1`` transitions are cut into blocks of ``chunk`` (default ``≈ √T / 2``) and the
    recursion runs in every block at once, each block started from zeros instead of its true
    ``δ``. A max-plus product of a few steps' matrices has rank one (the best paths coalesce,
    Maleki et al. 2014), so a block's ``δ`` soon equals the true one up to a constant, and
    argmaxes, hence back-pointers, are unchanged by a constant. A correction pass then reruns
    every block from the previous block's end until its ``δ`` is parallel to the one stored
    (usually a few steps); blocks whose end still changed make their successor rerun, and so on.
    The path is followed back through each block's composed back-pointer map; its
    log-probability is summed along it. Where the corrections do not settle within
    ``thresholds.SPECULATIVE_MAX_PASSES`` rounds, :func:`viterbi_blocked` decodes instead. Same path as
    :func:`viterbi` up to rounding (two paths whose scores agree to rounding may be chosen
    between differently).
    """
    n_seq, t_max, k = log_emit.shape
    device = log_emit.device
    delta0 = log_start + log_emit[:, 0]
    if t_max == 1:
        log_prob, end_state = delta0.max(-1)
        return log_prob, end_state.unsqueeze(1)
    steps = t_max - 1
    # blocks of ≈ √T / 2 steps: the passes over a block's length cost more per step (three of
    # them) than the walk over the blocks (one integer look-up per block)
    c = chunk or max(1, int(round(0.5 * steps ** 0.5)))
    emit, step_mask, n_blocks = _cut_into_blocks(log_emit, mask, c)
    full = step_mask.all(0).all(0).tolist()
    cols_rev = _columns_reversed(log_trans)
    same = torch.arange(k, device=device).expand(n_seq, n_blocks, k)
    scores = log_emit.new_empty((n_seq, n_blocks, c, k))   # δ after every step, up to a constant per block
    psi = torch.empty((n_seq, n_blocks, c, k), dtype=torch.long, device=device)

    def advance(delta, blocks, s):
        best, ptr = _best_predecessor(delta, cols_rev)
        nxt = best + (emit[:, :, s] if blocks is None else emit[:, blocks, s])
        if not full[s]:
            real = (step_mask[:, :, s] if blocks is None else step_mask[:, blocks, s]).unsqueeze(-1)
            nxt, ptr = torch.where(real, nxt, delta), torch.where(real, ptr, same[:, :nxt.shape[1]])
        return nxt, ptr

    delta = torch.cat((delta0.unsqueeze(1), delta0.new_zeros((n_seq, n_blocks - 1, k))), dim=1)
    for s in range(c):
        delta, ptr = advance(delta, None, s)
        scores[:, :, s] = delta
        psi[:, :, s] = ptr
    tol = 64 * torch.finfo(log_emit.dtype).eps
    todo = torch.arange(1, n_blocks, device=device)   # blocks whose start may be wrong
    for _ in range(thresholds.SPECULATIVE_MAX_PASSES):
        if not len(todo):
            break
        delta = scores[:, todo - 1, -1]
        active = torch.ones((n_seq, len(todo)), dtype=torch.bool, device=device)
        for s in range(c):
            delta, ptr = advance(delta, todo, s)
            # this step's pointers came from the corrected δ before it; from a step whose δ is
            # parallel to the stored one on, nothing further changes
            psi[:, todo, s] = torch.where(active.unsqueeze(-1), ptr, psi[:, todo, s])
            # past a sequence's end (padding) nothing depends on δ any more
            active = active & ~_parallel(delta, scores[:, todo, s], tol) & step_mask[:, todo, s]
            scores[:, todo, s] = torch.where(active.unsqueeze(-1), delta, scores[:, todo, s])
            if not bool(active.any()):
                break
        moved = todo[active.any(0)] + 1    # a block whose end changed: its successor's start did
        todo = moved[moved < n_blocks]
    if len(todo):  # the corrections did not settle
        return (viterbi_blocked if k <= thresholds.BLOCKED_MAX_STATES else viterbi)(log_start, log_trans, log_emit, mask)
    # the first maximal state at each sequence's last step
    lengths = mask.sum(-1)
    at_end = scores.reshape(n_seq, n_blocks * c, k)[torch.arange(n_seq, device=device), (lengths - 2).clamp(min=0)]
    end_state = torch.where((lengths > 1).unsqueeze(-1), at_end, delta0).max(-1).indices
    # each block's map from its last state to the state before its first step
    back = same
    for s in range(c - 1, -1, -1):
        back = psi[:, :, s].gather(-1, back)
    back_np, rows = back.cpu().numpy(), np.arange(n_seq)
    ends = np.empty((n_seq, n_blocks), dtype=np.int64)
    state_np = end_state.cpu().numpy()
    for b in range(n_blocks - 1, -1, -1):
        ends[:, b] = state_np
        state_np = back_np[rows, b, state_np]
    state = torch.as_tensor(ends, device=device)
    states = torch.empty((n_seq, n_blocks, c), dtype=torch.long, device=device)
    for s in range(c - 1, -1, -1):
        states[:, :, s] = state
        state = psi[:, :, s].gather(-1, state.unsqueeze(-1)).squeeze(-1)
    path = torch.cat((state[:, :1], states.reshape(n_seq, n_blocks * c)[:, :steps]), dim=1)
    # log p(path, y): its start, transitions and emissions summed along it (padding counts 0)
    picked = log_emit.gather(-1, path.unsqueeze(-1)).squeeze(-1)
    moves = log_trans[path[:, :-1], path[:, 1:]] + picked[:, 1:]
    log_prob = log_start[path[:, 0]] + picked[:, 0] + torch.where(mask[:, 1:], moves, 0.0).sum(-1)
    return log_prob, path


def chain_viterbi(init: torch.Tensor, trans: torch.Tensor,
                  emit: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(max log score (B,), states (B, T + 1))`` of the chains ``init`` ``(B, K)``, ``trans``
    ``(1 | B, 1 | T, K, K)`` (rows: the state before the step), ``emit`` ``(B, T, K)`` (None:
    zeros), as ``chain_log_partition`` takes them: the argmax of
    ``init[x_0] + Σ_t trans_t[x_{t-1}, x_t] + emit_t[x_t]``."""
    if emit is None:
        emit = init.new_zeros((init.shape[0], trans.shape[1], init.shape[1]))
    b, steps, k = emit.shape
    if trans.shape[0] == 1 and trans.shape[1] == 1:
        log_emit = torch.cat([init.unsqueeze(1), emit], dim=1)
        mask = torch.ones(log_emit.shape[:2], dtype=torch.bool, device=emit.device)
        decoder = viterbi_speculative if steps + 1 >= thresholds.SCAN_FROM else viterbi
        return decoder(torch.zeros(k, dtype=emit.dtype, device=emit.device), trans[0, 0], log_emit, mask)
    delta = init
    pointers = []
    rev = trans.transpose(-2, -1).flip(-1)
    for t in range(steps):
        best, ptr = _best_predecessor(delta, rev[:, 0 if rev.shape[1] == 1 else t])
        delta = best + emit[:, t]
        pointers.append(ptr)
    score, state = delta.max(-1)
    states = [state]
    for ptr in reversed(pointers):
        state = ptr.gather(-1, state.unsqueeze(-1)).squeeze(-1)
        states.append(state)
    return score, torch.stack(states[::-1], dim=1)
