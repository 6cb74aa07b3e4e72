"""Peppered moth allele frequencies by EM (gene counting), with a plot of the path per step.

85 carbonaria, 196 insularia and 341 typica moths; the alleles C > I > T are dominant in that
order. EM starts from equal frequencies (1/3, 1/3, 1/3).

    python examples/peppered_moth.py [--out DIR] [--tol 1e-4]
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyroem.models import HardyWeinberg  # noqa: E402

COUNTS = {"carbonaria": 85, "insularia": 196, "typica": 341}
ALLELES = ("C", "I", "T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the PNG (default: current folder)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="stop when the log-likelihood changes by at most tol * |log-likelihood|")
    args = parser.parse_args()

    fit = HardyWeinberg.peppered_moth(tol=args.tol).fit(COUNTS)
    print(f"{'step':>4} {'log-lik':>12} " + " ".join(f"{'p_' + a:>9}" for a in ALLELES))
    for step, (ll, freqs) in enumerate(zip(fit.history_, fit.allele_freqs_history_)):
        print(f"{step:>4} {ll:>12.5f} " + " ".join(f"{freqs[a]:>9.5f}" for a in ALLELES))
    state = "converged" if fit.converged_ else "stopped without converging"
    print(f"{state} after {fit.n_iter_} steps (tol={args.tol:g})")

    # the same EM run to full precision: the maximum-likelihood estimate
    full = HardyWeinberg.peppered_moth(tol=1e-12).fit(COUNTS)
    mle = full.allele_freqs_
    gap = max(abs(fit.allele_freqs_[a] - mle[a]) for a in ALLELES)
    print("maximum-likelihood estimate: " + ", ".join(f"p_{a} = {mle[a]:.5f}" for a in ALLELES)
          + f" (log-likelihood {full.log_likelihood_:.5f}, {full.n_iter_} steps at tol=1e-12)")
    print(f"largest difference between the tol={args.tol:g} fit and the estimate: {gap:.1e}")

    steps = range(len(full.allele_freqs_history_))
    fig, ax = plt.subplots(figsize=(6, 4))
    for allele, colour in zip(ALLELES, ("black", "tab:grey", "tab:orange")):
        ax.plot(steps, [f[allele] for f in full.allele_freqs_history_], "o-", color=colour, label=allele)
    ax.axvline(fit.n_iter_, color="tab:blue", linestyle="--", linewidth=1,
               label=f"stop at tol={args.tol:g}")
    ax.set_xlabel("EM step")
    ax.set_ylabel("allele frequency")
    ax.set_title("Peppered moth: EM allele frequencies from (1/3, 1/3, 1/3)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "peppered_moth_em.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(path)


if __name__ == "__main__":
    main()
