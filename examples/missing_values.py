"""A Gaussian mixture fitted to data with 20% of its entries missing.

Draws 600 points from three 4-D normals (fixed seed), deletes each entry with probability 0.2
(missing completely at random: about 59% of the rows lose at least one entry) and fits
``GaussianMixture(3)`` four ways:

- ``missing="marginalize"``: every row scored by the marginal of its observed entries, the
  missing ones integrated out by EM (the classic EM for incomplete normal data);
- complete cases: the rows with no missing entry only;
- mean imputation: each missing entry replaced by its column's mean;
- the full data before deletion, as the yardstick.

Repeated over ``--repeats`` data sets, it prints the mean log-likelihood per point of 5,000 new
complete points under each fit and the error of the fitted means, and draws the fits of the first
data set on two of the coordinates.

    python examples/missing_values.py [--out DIR] [--seed 0] [--repeats 10]
"""
from __future__ import annotations

import argparse
import itertools
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pyroem.models import GaussianMixture  # noqa: E402

MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [2.5, 2.0, -1.0, 1.0], [-1.0, 3.0, 2.0, -1.5]])
COV = np.array([[1.0, 0.6, 0.3, 0.0], [0.6, 1.0, 0.4, 0.2], [0.3, 0.4, 1.0, 0.5], [0.0, 0.2, 0.5, 1.0]])
COVS = np.stack([COV, 0.6 * np.eye(4) + 0.2, np.diag([0.5, 1.5, 0.8, 1.0])])
PER_GROUP = 200
MISSING = 0.2
FITS = ("marginalize", "complete cases", "mean imputation", "full data")


def simulate(rng: np.random.Generator, per_group: int):
    X = np.concatenate([rng.multivariate_normal(m, c, size=per_group) for m, c in zip(MEANS, COVS)])
    return X, np.repeat(np.arange(len(MEANS)), per_group)


def fit_four_ways(X: np.ndarray, Xmis: np.ndarray, seed: int):
    """The four fits of one data set, by name."""
    complete = ~np.isnan(Xmis).any(1)
    imputed = np.where(np.isnan(Xmis), np.nanmean(Xmis, axis=0), Xmis)
    kw = dict(n_components=3, n_init=3, random_state=seed)
    return {
        "marginalize": GaussianMixture(missing="marginalize", **kw).fit(Xmis),
        "complete cases": GaussianMixture(**kw).fit(Xmis[complete]),
        "mean imputation": GaussianMixture(**kw).fit(imputed),
        "full data": GaussianMixture(**kw).fit(X),
    }


def means_error(fitted: np.ndarray) -> float:
    """Root mean squared distance of the fitted means from the true ones, best matching."""
    return min(np.sqrt(np.mean((fitted[list(p)] - MEANS) ** 2)) for p in itertools.permutations(range(3)))


def ellipse(mean: np.ndarray, cov: np.ndarray, n: int = 100) -> np.ndarray:
    """The 2-standard-deviation contour of a bivariate normal."""
    t = np.linspace(0, 2 * np.pi, n)
    vals, vecs = np.linalg.eigh(cov)
    return mean[:, None] + (vecs * 2 * np.sqrt(vals)) @ np.stack([np.cos(t), np.sin(t)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the PNG (default: current folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated data and the fits")
    parser.add_argument("--repeats", type=int, default=10, help="number of simulated data sets (default 10)")
    args = parser.parse_args()

    # a row that loses all four entries carries no information; GaussianMixture warns of such rows
    warnings.filterwarnings("ignore", message=".*have no observed value")
    rng = np.random.default_rng(args.seed)
    test, _ = simulate(rng, 5000 // 3 + 1)
    scores = {name: [] for name in FITS}
    errors = {name: [] for name in FITS}
    first = None
    for r in range(args.repeats):
        X, group = simulate(rng, PER_GROUP)
        Xmis = np.where(rng.random(X.shape) < MISSING, np.nan, X)
        fits = fit_four_ways(X, Xmis, args.seed + r)
        for name, est in fits.items():
            scores[name].append(est.score(test))
            errors[name].append(means_error(est.means_))
        if first is None:
            first = (X, Xmis, group, fits)
    X, Xmis, group, fits = first
    incomplete = np.isnan(Xmis).any(1)
    print(f"{len(X)} points, 4 coordinates, {MISSING:.0%} of the entries missing: {incomplete.mean():.0%} of the rows "
          f"incomplete, {int((~incomplete).sum())} complete (first data set of {args.repeats})")
    print(f"{'fit':<16} {'rows used':>9}  {'held-out log-lik':>16}  {'error of the means':>18}")
    for name in FITS:
        rows = {"complete cases": int((~incomplete).sum())}.get(name, len(X))
        print(f"{name:<16} {rows:>9}  {np.mean(scores[name]):>16.4f}  {np.mean(errors[name]):>18.4f}")
    labels = fits["marginalize"].predict(Xmis)  # incomplete rows by their observed entries
    best = max(itertools.permutations(range(3)), key=lambda p: np.mean(np.asarray(p)[labels] == group))
    right = np.asarray(best)[labels] == group
    print(f"rows labelled with their own group: incomplete {right[incomplete].mean():.1%}, "
          f"complete {right[~incomplete].mean():.1%}")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
    i, j = 0, 1
    both = ~np.isnan(Xmis[:, [i, j]]).any(1)
    ax[0].scatter(Xmis[both, i], Xmis[both, j], c=group[both], cmap="tab10", vmin=0, vmax=9, s=9, alpha=0.6)
    styles = {"full data": ("black", "-"), "marginalize": ("tab:red", "--"), "complete cases": ("tab:blue", ":")}
    for name, (colour, line) in styles.items():
        est = fits[name]
        for k in range(3):
            e = ellipse(est.means_[k, [i, j]], est.covariances_[k][np.ix_([i, j], [i, j])])
            ax[0].plot(e[0], e[1], color=colour, linestyle=line, linewidth=1.6, label=name if k == 0 else None)
    ax[0].set_xlabel(f"x{i + 1}")
    ax[0].set_ylabel(f"x{j + 1}")
    ax[0].set_title("Fitted components (2 sd), first data set\n(points: rows with x1 and x2 observed)", fontsize=10)
    ax[0].legend(loc="upper left", fontsize=8)
    names = list(FITS)
    colours = ["tab:red", "tab:blue", "tab:gray", "black"]
    for row, (name, colour) in enumerate(zip(names, colours)):
        ax[1].errorbar(np.mean(scores[name]), row, xerr=np.std(scores[name]), fmt="o", color=colour, capsize=4)
        ax[1].scatter(scores[name], np.full(len(scores[name]), row + 0.18), color=colour, s=8, alpha=0.5)
    ax[1].set_yticks(range(4))
    ax[1].set_yticklabels(names)
    ax[1].invert_yaxis()
    ax[1].set_xlabel("held-out log-likelihood per point (higher is better)")
    ax[1].set_title(f"Held-out fit over {args.repeats} data sets\n(dots: each data set; mean ± 1 sd)", fontsize=10)
    ax[1].grid(axis="x", alpha=0.3)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "missing_values.png")
    fig.savefig(path, dpi=110)
    print(path)


if __name__ == "__main__":
    main()
