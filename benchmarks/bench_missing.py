"""The cost of missing values: an EM step of ``GaussianMixture(missing="marginalize")`` on data
with a fraction of its entries deleted, against a step on the complete data and against
scikit-learn's step on the complete data (scikit-learn refuses NaN).

A step's time is ``(t(21 steps) − t(1 step)) / 20``, which leaves out the initialization. The
three fits run round by round (interleaved); the table shows the median time per step and the
median per-round ratio to scikit-learn's.

    python benchmarks/bench_missing.py [--n 200000] [--d 8] [--k 4] [--missing 0.2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from pyroem.models import GaussianMixture


def per_step(make, X) -> float:
    times = {}
    for steps in (1, 21):
        est = make(steps)
        t0 = time.perf_counter()
        est.fit(X)
        times[steps] = time.perf_counter() - t0
    return (times[21] - times[1]) / 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--missing", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n, args.d)) + 3.0 * (rng.integers(0, args.k, size=(args.n, 1)) == np.arange(args.d) % args.k)
    holes = X.copy()
    holes[rng.random(X.shape) < args.missing] = np.nan
    incomplete = np.isnan(holes).any(1).mean()
    patterns = len(np.unique(np.isnan(holes[np.isnan(holes).any(1)]), axis=0))
    print(f"N = {args.n}, D = {args.d}, K = {args.k}, {args.missing:.0%} of the entries missing: {incomplete:.0%} of "
          f"the rows incomplete, {patterns} patterns; torch threads {torch.get_num_threads()}; median of "
          f"{args.rounds} interleaved rounds")
    print(f"{'covariance':<11} {'missing (ms)':>13} {'complete (ms)':>14} {'sklearn complete (ms)':>22} "
          f"{'missing / sklearn':>18}")
    for ct in ("full", "tied", "diag", "spherical"):
        cases = {
            "missing": (lambda s, ct=ct: GaussianMixture(args.k, covariance_type=ct, missing="marginalize", max_iter=s,
                                                         tol=0.0, random_state=0), holes),
            "complete": (lambda s, ct=ct: GaussianMixture(args.k, covariance_type=ct, max_iter=s, tol=0.0,
                                                          random_state=0), X),
            "sklearn": (lambda s, ct=ct: SkGaussianMixture(args.k, covariance_type=ct, max_iter=s, tol=0.0,
                                                           random_state=0), X),
        }
        for make, data in cases.values():  # warm-up
            make(1).fit(data)
        times = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (make, data) in cases.items():
                times[name].append(per_step(make, data))
        ratio = statistics.median(m / s for m, s in zip(times["missing"], times["sklearn"]))
        med = {name: 1000 * statistics.median(v) for name, v in times.items()}
        print(f"{ct:<11} {med['missing']:>13.1f} {med['complete']:>14.1f} {med['sklearn']:>22.1f} {ratio:>18.2f}")


if __name__ == "__main__":
    main()
