"""``pyroem.models.GaussianMixture`` against scikit-learn and pomegranate: time per EM step.

Every library starts from the same parameters (K data rows as means, uniform weights, the
data's covariance shrunk by ``K^(2/D)`` as every component's covariance) and runs ``--steps``
EM steps with no early stop, on the same simulated data, interleaved in one process. Reported:
median milliseconds per step over ``--repeats`` runs (scikit-learn and pyroem: fit time /
``n_iter_``, both include their final E-step; pomegranate: fit time / steps), the ratios
against pyroem in the same dtype, and the mean log-likelihood per sample at each library's
final parameters, all scored by the same float64 code.

    python benchmarks/bench_gmm.py                       # N=200000, D=8, K=16, 20 steps
    python benchmarks/bench_gmm.py --markdown            # a README-ready table
    python benchmarks/bench_gmm.py --phases              # where a pyroem step spends its time
    python benchmarks/bench_gmm.py --n 10000000 --dtype float32 --steps 5 --peak   # memory
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import resource
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from _tables import print_table
from pyroem.models import GaussianMixture

DTYPES = {"float64": np.float64, "float32": np.float32}


# -- data, start, scoring -----------------------------------------------------------------------
def simulate(n: int, d: int, k: int, seed: int, dtype=np.float64) -> np.ndarray:
    """``n`` rows from ``k`` full-covariance Gaussians in ``d`` dimensions (centres ~ N(0, 4²))."""
    rs = np.random.RandomState(seed)
    centres = 4.0 * rs.randn(k, d)
    a = rs.randn(k, d, d) / np.sqrt(d)
    chol = np.linalg.cholesky(a @ a.transpose(0, 2, 1) + 0.3 * np.eye(d))
    z = rs.randint(k, size=n)
    out = np.empty((n, d), dtype=dtype)
    for c in range(k):  # one component at a time keeps memory at O(n d)
        rows = np.flatnonzero(z == c)
        out[rows] = centres[c] + rs.randn(rows.size, d) @ chol[c].T
    return out


def common_start(X: np.ndarray, k: int, seed: int) -> Dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    n, d = X.shape
    means = X[rs.choice(n, k, replace=False)].astype(np.float64)
    sub = X[rs.choice(n, min(n, 200_000), replace=False)].astype(np.float64)
    prec = np.linalg.inv(np.cov(sub.T, bias=True) / k ** (2.0 / d))
    return {"weights_init": np.full(k, 1.0 / k), "means_init": means,
            "precisions_init": np.repeat(prec[None], k, axis=0)}


def mean_log_likelihood(X: np.ndarray, weights, means, covariances) -> float:
    """``mean_n log Σ_k w_k N(x_n | μ_k, Σ_k)`` in float64 (one scorer for every library)."""
    x = torch.as_tensor(X, dtype=torch.float64)
    w, mu, cov = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (weights, means, covariances))
    mvn = torch.distributions.MultivariateNormal(mu, scale_tril=torch.linalg.cholesky((cov + cov.mT) / 2))
    total = torch.zeros((), dtype=torch.float64)
    for a in range(0, x.shape[0], 1_000_000):
        lp = mvn.log_prob(x[a:a + 1_000_000, None, :]) + w.log()
        total += torch.logsumexp(lp, 1).sum()
    return float(total) / x.shape[0]


# -- one timed fit per library ---------------------------------------------------------------------
Fit = Tuple[float, Tuple[np.ndarray, np.ndarray, np.ndarray]]  # (ms per step, final parameters)


def fit_sklearn(X: np.ndarray, k: int, steps: int, start: dict) -> Fit:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    est = SkGaussianMixture(k, covariance_type="full", max_iter=steps, tol=0.0, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X)
        elapsed = time.perf_counter() - t0
    return 1000 * elapsed / est.n_iter_, (est.weights_, est.means_, est.covariances_)


def fit_pyroem(X: np.ndarray, k: int, steps: int, start: dict, **kwargs) -> Fit:
    est = GaussianMixture(k, covariance_type="full", max_iter=steps, tol=0.0, **start, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X)
        elapsed = time.perf_counter() - t0
    return 1000 * elapsed / est.n_iter_, (est.weights_, est.means_, est.covariances_)


def pomegranate_available() -> bool:
    try:
        import pomegranate.gmm  # noqa: F401
        import pomegranate.distributions  # noqa: F401
    except ImportError:
        return False
    return True


def fit_pomegranate(X: np.ndarray, k: int, steps: int, start: dict) -> Fit:
    """pomegranate 1.x: ``GeneralMixtureModel`` of ``Normal(covariance_type='full')`` started at
    the given parameters; ``tol=-inf`` so it runs all ``steps`` (E-step, then M-step, each)."""
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    dt = torch.float64 if X.dtype == np.float64 else torch.float32
    covs = np.linalg.inv(start["precisions_init"])
    dists = [Normal(means=torch.tensor(start["means_init"][c], dtype=dt),
                    covs=torch.tensor(covs[c], dtype=dt), covariance_type="full") for c in range(k)]
    model = GeneralMixtureModel(dists, priors=torch.tensor(start["weights_init"], dtype=dt),
                                max_iter=steps, tol=-math.inf)
    x = torch.as_tensor(X)
    t0 = time.perf_counter()
    model.fit(x)
    elapsed = time.perf_counter() - t0
    weights = model.priors.detach().numpy()
    means = np.stack([d.means.detach().numpy() for d in model.distributions])
    cov = np.stack([d.covs.detach().numpy() for d in model.distributions])
    return 1000 * elapsed / steps, (weights, means, cov)


# -- per-phase timing of one pyroem fit ------------------------------------------------------------
def phases(X: np.ndarray, k: int, steps: int, start: dict) -> Dict[str, float]:
    """Milliseconds per step spent in each phase of ``GaussianMixture.fit`` (wrapped functions)."""
    import pyroem.em as em_mod
    import pyroem.models.gaussian.densities as gauss
    import pyroem.models.gaussian.mixture as gm

    spent: Dict[str, float] = collections.defaultdict(float)
    patched: List[Tuple[object, str, Callable]] = []

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                spent[label] += time.perf_counter() - t0
        patched.append((owner, name, original))
        setattr(owner, name, timed)

    wrap(em_mod.EM, "_e_step", "engine E-step (em.e_step)")
    wrap(em_mod.ModelTracer, "trace", "  trace the model (pyro + log_prob)")
    wrap(gauss.GaussianComponents, "log_prob", "    GaussianComponents.log_prob (C @ f(X))")
    wrap(em_mod, "contract_trace", "  contract: logsumexp + backward")
    wrap(gm, "gaussian_statistics", "statistics R @ f(X)ᵀ")
    wrap(em_mod.EM, "m_step", "engine M-step (em.m_step)")
    wrap(gm, "parameters_from_statistics", "  closed form from statistics")
    wrap(gm, "inv_scale_from_covariances", "  Cholesky + inverse")
    wrap(em_mod, "write_params", "  write params (engine)")
    wrap(em_mod.ModelTracer, "probe", "engine probe (once per fit)")
    try:
        t0 = time.perf_counter()
        est = GaussianMixture(k, max_iter=steps, tol=0.0, **start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        total = time.perf_counter() - t0
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    out = {"fit total / n_iter": 1000 * total / est.n_iter_}
    out.update({label: 1000 * v / est.n_iter_ for label, v in spent.items()})
    return out


# -- main -------------------------------------------------------------------------------------------
def peak_memory(args) -> None:
    """pyroem alone on a large float32 problem: time per step and peak memory."""
    X = simulate(args.n, args.d, args.k, args.seed, DTYPES[args.dtype[0]])
    start = common_start(X, args.k, args.seed + 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kwargs = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    if torch.cuda.is_available() and args.device == "cuda":
        kwargs["device"] = "cuda"
        torch.cuda.reset_peak_memory_stats()
    ms, params = fit_pyroem(X, args.k, args.steps, start, **kwargs)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pyroem {args.dtype[0]}  N={args.n} D={args.d} K={args.k} chunk_size={args.chunk_size or 'auto'}: "
          f"{ms:.0f} ms/step")
    print(f"data in numpy: {X.nbytes / 2**20:.0f} MiB; peak RSS before fit {rss0:.0f} MiB, after {rss1:.0f} MiB")
    if "device" in kwargs:
        print(f"CUDA max_memory_allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="repeatable; default both")
    p.add_argument("--markdown", action="store_true", help="print a README-ready table")
    p.add_argument("--phases", action="store_true", help="per-phase timing of pyroem")
    p.add_argument("--no-pomegranate", action="store_true")
    p.add_argument("--peak", action="store_true", help="pyroem only: time and peak memory (large N)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ["float64", "float32"]
    torch.set_num_threads(args.threads)
    if args.peak:
        return peak_memory(args)

    X64 = simulate(args.n, args.d, args.k, args.seed)
    start = common_start(X64, args.k, args.seed + 1)
    runners: Dict[Tuple[str, str], Callable[[np.ndarray], Fit]] = {}
    use_pg = not args.no_pomegranate and pomegranate_available()
    if not use_pg and not args.no_pomegranate:
        print("pomegranate is not installed: skipped (pip install pomegranate==1.1.2)")
    for dt in args.dtype:
        runners[("scikit-learn", dt)] = lambda X: fit_sklearn(X, args.k, args.steps, start)
        if use_pg:
            runners[("pomegranate", dt)] = lambda X: fit_pomegranate(X, args.k, args.steps, start)
        runners[("pyroem", dt)] = lambda X: fit_pyroem(X, args.k, args.steps, start)
    data = {dt: X64.astype(DTYPES[dt]) for dt in args.dtype}
    times: Dict[Tuple[str, str], List[float]] = collections.defaultdict(list)
    final: Dict[Tuple[str, str], tuple] = {}
    for key, run in runners.items():  # warm-up (first-call costs), not timed
        small = data[key[1]][:5000]
        run(small)
    for _ in range(args.repeats):  # interleaved: every library once per round
        for key, run in runners.items():
            ms, params = run(data[key[1]])
            times[key].append(ms)
            final[key] = params
    ll = {key: mean_log_likelihood(X64, *params) for key, params in final.items()}
    ref = ll.get(("scikit-learn", "float64"), next(iter(ll.values())))
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"GaussianMixture against its peers: N={args.n} D={args.d} K={args.k} full covariance, "
          f"{args.steps} steps from the same start, torch threads {args.threads}, "
          f"median of {args.repeats} interleaved runs")
    head = ["library", "dtype", "ms/step", "sklearn / this", "pomegranate / this", "final mean log-lik",
            "|Δ| vs sklearn f64"]
    rows = []
    for (lib, dt), m in med.items():
        sk = med.get(("scikit-learn", dt))
        pg = med.get(("pomegranate", dt))
        rows.append([lib, dt, f"{m:.1f}", f"{sk / m:.1f}x" if sk else "-", f"{pg / m:.1f}x" if pg else "-",
                     f"{ll[(lib, dt)]:.6f}", f"{abs(ll[(lib, dt)] - ref):.1e}"])
    print_table(head, rows, args.markdown)
    if args.phases:
        for dt in args.dtype:
            print(f"\npyroem {dt} phases (ms/step):")
            for label, v in phases(data[dt], args.k, args.steps, start).items():
                print(f"  {label:45s} {v:7.1f}")


if __name__ == "__main__":
    main()
