"""``pyroem demo``: the peppered moth, a four-cluster Gaussian mixture and the dishonest casino,
fitted on data built into the package, with one PNG figure each."""
from __future__ import annotations

import argparse
import itertools
import os

import numpy as np

from . import demo_data, plotting

HELP = "fit three bundled examples (moth alleles, 4-cluster GMM, casino HMM) and draw them"


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser("demo", parents=parents, help=HELP, description=HELP + ".")
    p.add_argument("--out", metavar="DIR", default=".", help="folder for the PNG figures (default: here)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated data and fits (default 0)")
    p.set_defaults(run=run)


def moth(out: str) -> str:
    """Allele frequencies per EM step from (1/3, 1/3, 1/3); the figure's path."""
    from pyroem.models import HardyWeinberg

    fit = HardyWeinberg.peppered_moth(tol=1e-10).fit(demo_data.MOTH_COUNTS)
    alleles = fit.alleles
    counts = ", ".join(f"{n} {ph}" for ph, n in demo_data.MOTH_COUNTS.items())
    print(f"Peppered moth ({counts}): EM allele frequencies from (1/3, 1/3, 1/3)")
    print(f"{'step':>4} {'log-likelihood':>15} " + " ".join(f"{'p_' + a:>9}" for a in alleles))
    for step, (ll, freqs) in enumerate(zip(fit.history_, fit.allele_freqs_history_)):
        print(f"{step:>4} {ll:>15.5f} " + " ".join(f"{freqs[a]:>9.5f}" for a in alleles))
    print(f"{'converged' if fit.converged_ else 'stopped'} after {fit.n_iter_} steps")
    fig = plotting.allele_path_figure(fit.allele_freqs_history_, fit.history_, alleles,
                                      title="Peppered moth: allele frequencies from (1/3, 1/3, 1/3)")
    return plotting.save_figure(fig, os.path.join(out, "demo_moth.png"))


def _agreement(truth: np.ndarray, label: np.ndarray, k: int) -> float:
    """Fraction of points whose label matches their group under the best relabelling."""
    return max(float(np.mean(np.asarray(perm)[label] == truth)) for perm in itertools.permutations(range(k)))


def gmm(out: str, seed: int) -> str:
    """Four-cluster Gaussian mixture on 400 simulated points; the figure's path."""
    from pyroem.models import GaussianMixture

    X, group = demo_data.four_clusters(seed)
    est = GaussianMixture(n_components=4, random_state=seed).fit(X)
    print(f"\nGaussian mixture, 4 components, {len(X)} points from 4 bivariate normals: "
          f"{'converged' if est.converged_ else 'stopped'} after {est.n_iter_} steps, "
          f"mean log-likelihood per point {est.score(X):.4f}")
    for k in np.argsort(est.means_[:, 0]):
        m = est.means_[k]
        print(f"  weight {est.weights_[k]:.3f}  mean ({m[0]:+.2f}, {m[1]:+.2f})")
    print(f"  points in the cluster of their own group: {_agreement(group, est.predict(X), 4):.1%}")
    covs = plotting.full_covariances(est.covariances_, est.covariance_type, 4, 2)
    fig = plotting.gmm_figure(X, est.weights_, est.means_, covs, group, label_name="group",
                              title="Gaussian mixture fitted by EM: density contours")
    return plotting.save_figure(fig, os.path.join(out, "demo_gmm.png"))


def casino(out: str, seed: int) -> str:
    """Two-state categorical HMM (fair / loaded die) by Baum-Welch; the figure's path."""
    from pyroem.models import CategoricalHMM

    X, lengths, dice = demo_data.casino(n_sessions=30, length=100, seed=seed)
    hmm = CategoricalHMM(n_components=2, n_iter=100, tol=1e-2, init_params="")
    # a start that only says "state 1 favours sixes" and "dice are not switched often"
    hmm.startprob_ = np.array([0.5, 0.5])
    hmm.transmat_ = np.array([[0.9, 0.1], [0.1, 0.9]])
    hmm.emissionprob_ = np.array([[1 / 6] * 6, [0.12] * 5 + [0.4]])
    hmm.fit(X, lengths)
    print(f"\nOccasionally dishonest casino, {len(lengths)} sessions of {lengths[0]} rolls: Baum-Welch "
          f"{'converged' if hmm.converged_ else 'stopped'} after {hmm.n_iter_} steps, "
          f"log-likelihood {hmm.score(X, lengths):.3f}")
    t = hmm.transmat_
    print(f"  P(fair -> loaded) {t[0, 1]:.3f} (true {demo_data.CASINO_TRANSMAT[0, 1]:.3f}), "
          f"P(loaded -> fair) {t[1, 0]:.3f} (true {demo_data.CASINO_TRANSMAT[1, 0]:.3f})")
    print(f"  P(six): fair die {hmm.emissionprob_[0, 5]:.3f}, loaded die {hmm.emissionprob_[1, 5]:.3f} "
          f"(true {demo_data.CASINO_EMISSION[0, 5]:.3f}, {demo_data.CASINO_EMISSION[1, 5]:.3f})")
    viterbi = hmm.predict(X, lengths)
    print(f"  Viterbi path names the right die for {np.mean(viterbi == dice):.1%} of rolls")
    length = int(lengths[0])  # all sessions have the same length
    s = int(dice.reshape(-1, length).sum(1).argmax())  # the session with the most loaded rolls
    rows = slice(s * length, (s + 1) * length)
    fig = plotting.hmm_figure(hmm.predict_proba(X[rows]), demo_data.CASINO_STATES,
                              paths={"die in use": dice[rows], "Viterbi path": viterbi[rows]},
                              title=f"Occasionally dishonest casino: posterior of session {s + 1}")
    return plotting.save_figure(fig, os.path.join(out, "demo_hmm.png"))


def run(args: argparse.Namespace) -> int:
    import torch

    out = args.out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's tensors are small: one thread avoids hand-off costs
    try:
        paths = [moth(out), gmm(out, args.seed), casino(out, args.seed)]
    finally:
        torch.set_num_threads(threads)
    print("\nfigures:")
    for path in paths:
        print(f"  {os.path.abspath(path)}")
    return 0
