"""B independent small Gaussian mixtures: one batched ``fit_batch`` call against a Python loop of single fits.

Every dataset is fitted from the same explicit start (weights, means, precisions) by pyroem's
batched EM, by a loop of pyroem ``GaussianMixture.fit`` and by a loop of scikit-learn's; the script
prints the wall time of each, the ratios and the largest difference in final lower bound.

    python benchmarks/bench_gmm_batch.py --fits 1000 --n 200 --d 2 --k 3
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def make_data(fits: int, n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    centers = rng.uniform(-6, 6, size=(fits, k, d))
    labels = rng.randint(k, size=(fits, n))
    X = centers[np.arange(fits)[:, None], labels] + rng.randn(fits, n, d)
    return X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=2)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--covariance", default="full", choices=["full", "tied", "diag", "spherical"])
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--loop-fits", type=int, default=100,
                    help="datasets fitted by the Python loops (timed, then scaled to --fits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true", help="print a README table instead of the report")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.mixture import GaussianMixture as SkGMM

    from pyroem.models import GaussianMixture

    X = make_data(args.fits, args.n, args.d, args.k, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = SkGMM(args.k, covariance_type=args.covariance, max_iter=1, random_state=args.seed).fit(X[0])
    inits = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    hyper = dict(covariance_type=args.covariance, max_iter=args.max_iter, tol=args.tol, **inits)

    if not args.markdown:
        print(f"{args.fits} Gaussian mixtures, N={args.n}, D={args.d}, K={args.k}, {args.covariance} covariance, "
              f"float64, torch threads={torch.get_num_threads()}")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    batch = GaussianMixture(args.k, **hyper).fit_batch(X)
    t_batch = time.perf_counter() - t0

    m = min(args.loop_fits, args.fits)
    t0 = time.perf_counter()
    ours = [GaussianMixture(args.k, **hyper).fit(X[i]) for i in range(m)]
    t_ours = (time.perf_counter() - t0) * args.fits / m
    t0 = time.perf_counter()
    sk = [SkGMM(args.k, **hyper).fit(X[i]) for i in range(m)]
    t_sk = (time.perf_counter() - t0) * args.fits / m

    dlb = max(abs(batch[i].lower_bound_ - sk[i].lower_bound_) for i in range(m))
    if args.markdown:
        scaled = f" (loops timed on {m} datasets, scaled)" if m < args.fits else ""
        print(f"Batched fits: {args.fits} mixtures, N={args.n}, D={args.d}, K={args.k}, {args.covariance}, "
              f"float64, same start, tol={args.tol}{scaled}; max |Δ lower bound| vs scikit-learn {dlb:.1e}.\n")
        print("| | seconds | loop / batch |")
        print("|---|---:|---:|")
        print(f"| pyroem `fit_batch` (one call) | {t_batch:.2f} | 1.0× |")
        print(f"| pyroem loop of `fit` | {t_ours:.2f} | {t_ours / t_batch:.1f}× |")
        print(f"| scikit-learn loop of `fit` | {t_sk:.2f} | {t_sk / t_batch:.1f}× |")
        return
    dlb_ours = max(abs(batch[i].lower_bound_ - ours[i].lower_bound_) for i in range(m))
    iters = [f.n_iter_ for f in batch]
    print(f"  iterations per fit: min {min(iters)}, median {int(np.median(iters))}, max {max(iters)}")
    print(f"  {'pyroem fit_batch (one call)':32s} {t_batch:9.3f} s")
    print(f"  {'pyroem loop of fit':32s} {t_ours:9.3f} s   ratio loop/batch {t_ours / t_batch:7.1f}x"
          + (f"   (timed on {m}, scaled)" if m < args.fits else ""))
    print(f"  {'scikit-learn loop of fit':32s} {t_sk:9.3f} s   ratio loop/batch {t_sk / t_batch:7.1f}x"
          + (f"   (timed on {m}, scaled)" if m < args.fits else ""))
    print(f"  max |lower_bound_ batch - scikit-learn| = {dlb:.2e}, batch - pyroem loop = {dlb_ours:.2e}")


if __name__ == "__main__":
    main()
