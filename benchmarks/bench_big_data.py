"""Data bigger than one E-step: a user-written Gaussian mixture fitted by ``pyroem.EM`` on data in
pieces, and online EM against batch EM.

1. **Streamed**: N rows of D float32 columns in a memory-mapped ``.npy`` file, read in pieces of
   ``--piece`` rows (``EM.fit(data=[X[a:b] for ...])``): seconds per pass, and the peak of the
   process's anonymous memory (sampled every 20 ms from ``/proc/self/status``) against the data's
   size, for each piece size. scikit-learn's ``GaussianMixture`` (float64, all rows in memory, the same start) gives
   its time per EM step. A subset check fits the first ``--subset`` rows in memory and in pieces
   from one start and prints the largest difference between the two histories.
2. **Online**: ``--online-n`` rows; batch EM to convergence gives the optimum; then batch EM and
   online EM (``batch_size``, ``step_size``) from the same start, with the passes and seconds each
   takes until its mean log-likelihood is within 1e-3 of the optimum's.

    python benchmarks/bench_big_data.py [--n 10000000] [--d 8] [--k 16] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import pyroem


# -- the user's model: a full-covariance mixture, its M-step as sufficient statistics ------
def model(X: torch.Tensor, k: int) -> None:
    d = X.shape[1]
    w = pyro.param("w", torch.full((k,), 1.0 / k, dtype=X.dtype), constraint=constraints.simplex)
    loc = pyro.param("loc", torch.zeros(k, d, dtype=X.dtype))
    tril = pyro.param("tril", torch.eye(d, dtype=X.dtype).expand(k, d, d).clone(),
                      constraint=constraints.lower_cholesky)
    with pyro.plate("data", len(X)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.MultivariateNormal(loc[z], scale_tril=tril[z]), obs=X)


def statistics(expect, X, k):
    """Sums over the piece's rows, in float64: the covariance is the difference of the second
    moments and the means' products, and float32 sums of many rows lose its digits."""
    r, X = expect.marginal("z").double(), X.double()            # (N, K), (N, D)
    return {"n": r.sum(0), "sx": r.T @ X, "sxx": torch.einsum("nk,ni,nj->kij", r, X, X)}


def solve(stats, X, k):
    n = stats["n"]
    loc = stats["sx"] / n.unsqueeze(1)
    cov = stats["sxx"] / n[:, None, None] - loc.unsqueeze(2) * loc.unsqueeze(1)
    cov = cov + 1e-6 * torch.eye(cov.shape[-1], dtype=cov.dtype)
    return {"w": (n / n.sum()).to(X.dtype), "loc": loc.to(X.dtype), "tril": torch.linalg.cholesky(cov).to(X.dtype)}


def start(X: np.ndarray, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    loc = torch.as_tensor(np.asarray(X[np.sort(rng.choice(min(len(X), 100_000), k, replace=False))]),
                          dtype=torch.float32)
    d = loc.shape[1]
    return {"w": torch.full((k,), 1.0 / k), "loc": loc, "tril": 2.0 * torch.eye(d).expand(k, d, d).clone()}


def set_params(params: dict, dtype=torch.float32) -> None:
    pyro.clear_param_store()
    pyro.param("w", params["w"].to(dtype).clone(), constraint=constraints.simplex)
    pyro.param("loc", params["loc"].to(dtype).clone())
    pyro.param("tril", params["tril"].to(dtype).clone(), constraint=constraints.lower_cholesky)


def simulate(path: str, n: int, d: int, k: int) -> np.ndarray:
    """``n`` rows from a ``k``-component mixture written to ``path`` block by block; memory-mapped."""
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        centres = rng.normal(scale=4.0, size=(k, d))
        mix = rng.normal(size=(k, d, d)) / np.sqrt(d)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        for a in range(0, n, 1_000_000):
            b = min(n, a + 1_000_000)
            z = rng.integers(k, size=b - a)
            eps = rng.normal(size=(b - a, d))
            out[a:b] = centres[z] + np.einsum("nij,nj->ni", mix[z], eps)
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


# -- memory ----------------------------------------------------------------------------------
class PeakAnonymousMemory:
    """The largest ``RssAnon`` of this process while the block runs (file pages left out)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_anon())
                time.sleep(0.02)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 20:,.0f} MiB"


# -- the two parts ---------------------------------------------------------------------------
def streamed(args) -> None:
    X = simulate(os.path.join(args.dir, f"bench_big_data_{args.n}x{args.d}.npy"), args.n, args.d, args.k)
    init = start(X, args.k)
    print(f"streamed: N={args.n:,} D={args.d} K={args.k} float32 memory-mapped ({mib(X.nbytes)} of data), "
          f"torch threads {torch.get_num_threads()}")
    for size in args.piece:
        pieces = [X[a:a + size] for a in range(0, len(X), size)]
        em = pyroem.EM(model, statistics=statistics, solve=solve)
        set_params(init)
        base = _rss_anon()
        with PeakAnonymousMemory() as mem:
            t0 = time.perf_counter()
            res = em.fit(args.k, data=pieces, max_iter=args.passes, tol=None)
            seconds = (time.perf_counter() - t0) / (args.passes + 1)
        print(f"  pieces of {size:,} rows: {seconds:.2f} s per pass (E-step over every piece + solve); "
              f"mean log-lik {res.history[0] / args.n:.5f} -> {res.history[-1] / args.n:.5f} in {args.passes} "
              f"steps; peak anonymous memory {mib(mem.peak - base)} above the start (data {mib(X.nbytes)})")

    # subset check, in float64 (the float32 second moments above lose digits to cancellation in
    # any summation order): in memory and in pieces, one start
    sub = torch.as_tensor(np.array(X[:args.subset], dtype=np.float64))
    hist = {}
    for kind in ("memory", "pieces"):
        set_params(init, torch.float64)
        em = pyroem.EM(model, statistics=statistics, solve=solve)
        if kind == "memory":
            hist[kind] = em.fit(sub, args.k, max_iter=20, tol=0.0).history
        else:
            hist[kind] = em.fit(args.k, data=torch.split(sub, args.subset // 8), max_iter=20, tol=0.0).history
    gap = max(abs(a - b) / abs(a) for a, b in zip(hist["memory"], hist["pieces"]))
    print(f"  subset check ({args.subset:,} rows, 20 steps): largest relative difference of the "
          f"log-likelihood histories (float64), in memory vs in 8 pieces: {gap:.1e}")

    if args.sklearn:
        from sklearn.mixture import GaussianMixture

        Xs = np.asarray(X[:args.sklearn_n], dtype=np.float64)
        prec = np.linalg.inv(init["tril"].double().numpy() @ init["tril"].double().numpy().transpose(0, 2, 1))
        sk = GaussianMixture(args.k, max_iter=2, tol=0.0, weights_init=init["w"].double().numpy(),
                             means_init=init["loc"].double().numpy(), precisions_init=prec)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            sk.fit(Xs)
            sk_seconds = (time.perf_counter() - t0) / 3  # two steps and the final E-step
        print(f"  scikit-learn GaussianMixture, {args.sklearn_n:,} rows in memory (float64, "
              f"{mib(Xs.nbytes)}): {sk_seconds:.2f} s per step; pyroem streamed per {args.sklearn_n:,} rows: "
              f"{seconds * args.sklearn_n / args.n:.2f} s ({sk_seconds / (seconds * args.sklearn_n / args.n):.1f}x)")


def online(args) -> None:
    X = simulate(os.path.join(args.dir, f"bench_big_data_{args.n}x{args.d}.npy"), args.n, args.d, args.k)
    Xt = torch.as_tensor(np.array(X[:args.online_n]))
    k = args.online_k
    init = start(Xt.numpy(), k, seed=1)
    set_params(init)
    best = pyroem.EM(model, statistics=statistics, solve=solve).fit(Xt, k, max_iter=500, tol=1e-7)
    optimum = best.log_likelihood / len(Xt)
    print(f"online: N={len(Xt):,} D={args.d} K={k} float32; batch optimum mean log-lik {optimum:.5f} "
          f"({best.n_iter} batch steps to tol 1e-7)")
    runs = {"batch EM": {}, f"online EM (batch_size {args.batch_size:,}, step_size {args.step_size})":
            {"batch_size": args.batch_size, "step_size": args.step_size}}
    for name, extra in runs.items():
        set_params(init)
        torch.manual_seed(0)
        em = pyroem.EM(model, statistics=statistics, solve=solve)
        trail = []
        t0 = time.perf_counter()

        def note(n, ll, params):
            with torch.no_grad():
                exact = float(pyroem.log_likelihood(model, Xt, k)) / len(Xt)
            trail.append((n, time.perf_counter() - t0, exact))
            return exact > optimum - 1e-3

        em.fit(Xt, k, max_iter=args.max_passes, tol=None, callback=note, **extra)
        # the callback's n: batch EM's θ_n is evaluated after n passes; online EM's after pass n
        hit = next(((n, s) for n, s, v in trail if v > optimum - 1e-3), None)
        passes = None if hit is None else hit[0]
        if hit is None:
            print(f"  {name}: not within 1e-3 after {args.max_passes} passes")
        else:
            print(f"  {name}: within 1e-3 of the optimum after {passes} passes over the data, "
                  f"{hit[1]:.1f} s (timing includes the exact log-likelihood checks)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--piece", type=int, nargs="+", default=[50_000, 250_000], help="rows per piece")
    p.add_argument("--passes", type=int, default=2, help="EM steps of the streamed fit")
    p.add_argument("--subset", type=int, default=200_000)
    p.add_argument("--sklearn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--sklearn-n", type=int, default=2_000_000)
    p.add_argument("--online-n", type=int, default=1_000_000)
    p.add_argument("--online-k", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=20_000)
    p.add_argument("--step-size", type=float, default=0.6)
    p.add_argument("--max-passes", type=int, default=100)
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--part", choices=("streamed", "online", "both"), default="both")
    args = p.parse_args()
    if args.part in ("streamed", "both"):
        streamed(args)
    if args.part in ("online", "both"):
        online(args)


if __name__ == "__main__":
    main()
