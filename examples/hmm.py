"""The occasionally dishonest casino: a hidden Markov model fitted by Baum-Welch with pyroem.

A casino mostly rolls a fair die but sometimes switches to a loaded one that shows a six half of
the time. From 20 sessions of 150 rolls we fit a two-state ``CategoricalHMM`` (the same API as
hmmlearn's), recover the switching probabilities and the loaded die, and decode which die was in
use with the Viterbi path and the posterior state probabilities.

    python examples/hmm.py [--out DIR]
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pyroem.models import CategoricalHMM  # noqa: E402

FAIR, LOADED = 0, 1
TRUE_TRANSMAT = np.array([[0.95, 0.05], [0.10, 0.90]])
TRUE_EMISSION = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])


def simulate(n_sessions: int, length: int, seed: int):
    """Rolls (one column of faces 0..5), the session lengths and the die behind every roll."""
    truth = CategoricalHMM(n_components=2, init_params="", random_state=seed)
    truth.startprob_ = np.array([1.0, 0.0])
    truth.transmat_ = TRUE_TRANSMAT
    truth.emissionprob_ = TRUE_EMISSION
    rolls, dice = zip(*(truth.sample(length, random_state=seed + i) for i in range(n_sessions)))
    return np.concatenate(rolls), np.full(n_sessions, length), np.concatenate(dice)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the figure (default: here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, lengths, dice = simulate(n_sessions=20, length=150, seed=args.seed)
    # A start that only says "state 1 favours sixes a little": EM does the rest.
    hmm = CategoricalHMM(n_components=2, n_iter=200, tol=1e-3, init_params="")
    hmm.startprob_ = np.array([0.5, 0.5])
    hmm.transmat_ = np.array([[0.8, 0.2], [0.2, 0.8]])
    hmm.emissionprob_ = np.array([[1 / 6] * 6, [0.15] * 5 + [0.25]])
    hmm.fit(X, lengths)

    print(f"Baum-Welch: {hmm.n_iter_} steps, converged={hmm.converged_}, "
          f"log-likelihood {hmm.score(X, lengths):.4f}")
    np.set_printoptions(precision=3, suppress=True)
    print("transition matrix (rows: fair, loaded)\n  fitted\n", hmm.transmat_, "\n  true\n", TRUE_TRANSMAT)
    print("P(six) for each die: fitted", hmm.emissionprob_[:, 5], " true", TRUE_EMISSION[:, 5])

    path_states = hmm.predict(X, lengths)
    posterior = hmm.predict_proba(X, lengths)[:, LOADED]
    print(f"Viterbi path names the right die for {np.mean(path_states == dice):.1%} of rolls")

    first = slice(0, lengths[0])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    t = np.arange(lengths[0])
    ax.fill_between(t, 0, dice[first], step="mid", color="tab:red", alpha=0.2, label="loaded die in use")
    ax.plot(t, posterior[first], color="tab:blue", label="P(loaded | rolls)")
    ax.plot(t, path_states[first], color="black", lw=1, ls="--", label="Viterbi path")
    ax.set_xlabel("roll")
    ax.set_ylabel("loaded")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Occasionally dishonest casino: decoding the first session")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "hmm_casino.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(path)


if __name__ == "__main__":
    main()
