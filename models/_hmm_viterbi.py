"""Viterbi decoding of a batch of padded sequences, vectorized over sequences and states."""
from __future__ import annotations

from typing import Tuple

import torch


def viterbi(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
            mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Most probable state paths.

    Forward: ``δ_t(j) = max_i [δ_{t-1}(i) + log A_ij] + log b_j(y_t)``; padded steps (``mask``
    False) keep ``δ``. Backward: ``x_t = argmax_i δ_t(i) + log A_{i, x_{t+1}}`` from
    ``x_{T_n - 1} = argmax δ_{T_n - 1}``, recomputed rather than stored. Exact ties between
    paths resolve as in hmmlearn: the first maximal state at the end, the last one while
    tracing back.

    :param log_start: ``(K,)`` log initial probabilities.
    :param log_trans: ``(K, K)`` log transition matrix, rows = previous state.
    :param log_emit: ``(N, T, K)`` log emission probabilities per sequence, step and state.
    :param mask: ``(N, T)`` bool, True on real steps (each sequence starts at step 0).
    :returns: ``(log_prob (N,), states (N, T))``; states at padded steps are meaningless.
    """
    n_seq, t_max, k = log_emit.shape
    deltas = [log_start + log_emit[:, 0]]
    for t in range(1, t_max):
        best = (deltas[-1].unsqueeze(-1) + log_trans).max(dim=-2).values
        deltas.append(torch.where(mask[:, t].unsqueeze(-1), best + log_emit[:, t], deltas[-1]))
    last = mask.sum(-1) - 1
    state = deltas[-1].argmax(-1)
    states = [state]
    for t in range(t_max - 2, -1, -1):
        back = k - 1 - (deltas[t] + log_trans[:, state].T).flip(-1).argmax(-1)
        state = torch.where(t == last, deltas[t].argmax(-1), torch.where(t < last, back, state))
        states.append(state)
    return deltas[-1].max(-1).values, torch.stack(states[::-1], dim=1)
