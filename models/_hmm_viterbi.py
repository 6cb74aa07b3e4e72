"""Viterbi decoding of a batch of padded sequences, vectorized over sequences and states."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


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
    trans_rev = log_trans.flip(0)                   # max over reversed rows: the last maximal i
    full = mask.all(0).tolist()
    delta = log_start + log_emit[:, 0]
    last = mask.sum(-1) - 1
    pointers = []
    for t in range(1, t_max):
        best, idx = (delta.flip(-1).unsqueeze(-1) + trans_rev).max(dim=-2)
        nxt = best + log_emit[:, t]
        pointers.append(idx)
        delta = nxt if full[t] else torch.where(mask[:, t, None], nxt, delta)
    log_prob, end_state = delta.max(-1)
    if t_max == 1:
        return log_prob, end_state.unsqueeze(1)
    psi = (k - 1 - torch.stack(pointers, dim=1)).cpu().numpy()     # (N, T-1, K)
    ends, end_states = last.cpu().numpy(), end_state.cpu().numpy()
    states = np.zeros((n_seq, t_max), dtype=np.int64)
    rows = np.arange(n_seq)
    state = end_states.copy()
    for t in range(t_max - 1, -1, -1):
        state = np.where(ends == t, end_states, state)
        states[:, t] = state
        if t:
            state = np.where(t <= ends, psi[rows, t - 1, state], state)
    return log_prob, torch.as_tensor(states, device=log_emit.device)
