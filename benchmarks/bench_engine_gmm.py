"""Engine overhead on a user's Gaussian mixture: ``pyroem.EM(model, updates).step`` against the
same E- and M-step written by hand in torch.

Both sides evaluate ``dist.MultivariateNormal(locs, scale_tril).log_prob`` over (K, N), take a
logsumexp over components, form responsibilities and apply the same weighted-MLE formulas
(weights = N_k / N, means, covariances -> Cholesky factor). They start from identical
parameters in one process and run the same number of steps, one pyroem step then one hand
step, so that load from elsewhere on the machine hits both alike; the script prints the median
milliseconds per step of each, their ratio, and the largest difference between the two
log-likelihood trajectories.

    python benchmarks/bench_engine_gmm.py [--n 50000] [--d 4] [--k 8] [--steps 20] [--dtype float64]
    python benchmarks/bench_engine_gmm.py --profile    # where pyroem's step spends its time
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
import warnings
from typing import Callable, Dict, List, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import pyroem

Params = Dict[str, torch.Tensor]


# -- data and starting point -------------------------------------------------------------
def simulate(n: int, d: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``n`` points from a ``k``-component full-covariance mixture in ``d`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    mix = torch.randn(k, d, d, generator=g, dtype=torch.float64) / d ** 0.5
    chol = torch.linalg.cholesky(mix @ mix.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=torch.float64))
    z = torch.multinomial(torch.full((k,), 1.0 / k, dtype=torch.float64), n, replacement=True, generator=g)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = centres[z] + (chol[z] @ eps.unsqueeze(-1)).squeeze(-1)
    return x.to(dtype)


def initial_params(x: torch.Tensor, k: int, seed: int) -> Params:
    """Uniform weights, ``k`` data points as means, the data's spread as every covariance."""
    g = torch.Generator().manual_seed(seed + 1)
    n, d = x.shape
    pick = torch.randperm(n, generator=g)[:k]
    std = x.std(0).mean()
    return {
        "weights": torch.full((k,), 1.0 / k, dtype=x.dtype),
        "locs": x[pick].clone(),
        "scale_tril": std * torch.eye(d, dtype=x.dtype).expand(k, d, d).clone(),
    }


# -- the user's model and closed-form M-step -------------------------------------------------
def model(x: torch.Tensor) -> None:
    weights = pyro.param("weights", constraint=constraints.simplex)
    locs = pyro.param("locs")
    scale_tril = pyro.param("scale_tril", constraint=constraints.lower_cholesky)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=scale_tril[z]), obs=x)


def weighted_mle(resp: torch.Tensor, x: torch.Tensor) -> Params:
    """Weighted MLE from responsibilities ``resp`` (N, K): the M-step both sides share."""
    nk = resp.sum(0)
    locs = (resp.T @ x) / nk.unsqueeze(-1)
    diff = x.unsqueeze(0) - locs.unsqueeze(1)  # (K, N, D)
    cov = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / nk.view(-1, 1, 1)
    return {"weights": nk / x.shape[0], "locs": locs, "scale_tril": torch.linalg.cholesky(cov)}


def updates(expect: pyroem.Expectations, x: torch.Tensor) -> Params:
    return weighted_mle(expect.marginal("z"), x)


# -- the same EM step by hand -----------------------------------------------------------------
def hand_step(params: Params, x: torch.Tensor) -> Tuple[float, Params]:
    """One EM step; returns ``log p(x | θ)`` at the starting θ and the updated θ."""
    comp = dist.MultivariateNormal(params["locs"].unsqueeze(1), scale_tril=params["scale_tril"].unsqueeze(1))
    log_joint = comp.log_prob(x) + params["weights"].log().unsqueeze(-1)  # (K, N)
    log_px = torch.logsumexp(log_joint, 0)  # (N,)
    resp = (log_joint - log_px).exp().T  # (N, K)
    return float(log_px.sum()), weighted_mle(resp, x)


# -- timing -----------------------------------------------------------------------------------
def set_store(init: Params) -> None:
    pyro.clear_param_store()
    pyro.param("weights", init["weights"].clone(), constraint=constraints.simplex)
    pyro.param("locs", init["locs"].clone())
    pyro.param("scale_tril", init["scale_tril"].clone(), constraint=constraints.lower_cholesky)


def run_interleaved(em: pyroem.EM, init: Params, x: torch.Tensor, steps: int
                    ) -> Tuple[List[float], List[float], List[float], List[float]]:
    """Both trajectories from ``init``, one pyroem step then one hand step, so that a passing
    load on the machine hits both alike. Returns per-step seconds and log-likelihoods of each."""
    set_store(init)
    params = {k: v.clone() for k, v in init.items()}
    t_em, t_hand, ll_em, ll_hand = [], [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        ll_em.append(em.step(x))
        t1 = time.perf_counter()
        with torch.no_grad():
            ll, params = hand_step(params, x)
        t2 = time.perf_counter()
        ll_hand.append(ll)
        t_em.append(t1 - t0)
        t_hand.append(t2 - t1)
    return t_em, t_hand, ll_em, ll_hand


def profile_pyroem(init: Params, x: torch.Tensor, steps: int, top: int) -> None:
    """cProfile of ``steps`` pyroem steps, sorted by cumulative time."""
    set_store(init)
    em = pyroem.EM(model, updates)
    em.step(x)  # probe and first trace outside the profile
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        em.step(x)
    prof.disable()
    print(f"\ncProfile of {steps} pyroem steps (cumulative time, top {top}):")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="data points")
    parser.add_argument("--d", type=int, default=4, help="dimensions")
    parser.add_argument("--k", type=int, default=8, help="components")
    parser.add_argument("--steps", type=int, default=20, help="timed EM steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions (median reported)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of pyroem's steps")
    parser.add_argument("--markdown", action="store_true", help="print a README table instead of the report")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    x = simulate(args.n, args.d, args.k, dtype, args.seed)
    set_store(initial_params(x, args.k, args.seed))
    # the starting point as the store gives it back, so both sides begin from the same numbers
    init = {name: pyro.param(name).detach().clone() for name in ("weights", "locs", "scale_tril")}

    # every repetition restarts the same EM object from θ₀, which it would report as a decrease
    warnings.filterwarnings("ignore", category=pyroem.MonotonicityWarning)
    em = pyroem.EM(model, updates)  # its one-off probe of the model happens in the warm-up
    run_interleaved(em, init, x, args.warmup)
    t_em, t_hand = [], []  # per step, over every repetition
    ll_em = ll_hand = None
    for _ in range(args.repeats):
        te, th, ll_em, ll_hand = run_interleaved(em, init, x, args.steps)
        t_em.append(te)
        t_hand.append(th)

    ms_em = 1e3 * statistics.median(t for rep in t_em for t in rep)
    ms_hand = 1e3 * statistics.median(t for rep in t_hand for t in rep)
    rep_em = [1e3 * sum(rep) / args.steps for rep in t_em]
    rep_hand = [1e3 * sum(rep) / args.steps for rep in t_hand]
    gap = max(abs(a - b) for a, b in zip(ll_em, ll_hand))
    if args.markdown:
        print(f"Engine overhead: a user's Pyro GMM (`MultivariateNormal`, closed-form `updates`), N={args.n}, "
              f"D={args.d}, K={args.k}, {args.dtype}; max |Δ log-likelihood| over the trajectory {gap:.1e}.\n")
        print("| | ms / step | ratio |")
        print("|---|---:|---:|")
        print(f"| hand-written torch | {ms_hand:.1f} | 1.00 |")
        print(f"| `pyroem.EM.step` | {ms_em:.1f} | {ms_em / ms_hand:.2f} |")
        return
    print(f"GMM N={args.n} D={args.d} K={args.k} {args.dtype}, {args.steps} steps x {args.repeats} "
          f"repetitions, torch threads={torch.get_num_threads()}")
    print(f"pyroem EM.step     {ms_em:9.2f} ms/step median   (mean per repetition: "
          + ", ".join(f"{t:.1f}" for t in rep_em) + ")")
    print(f"hand-written torch {ms_hand:9.2f} ms/step median   (mean per repetition: "
          + ", ".join(f"{t:.1f}" for t in rep_hand) + ")")
    print(f"ratio pyroem / hand: {ms_em / ms_hand:.3f}   (target <= 1.3; "
          f"of the mean times: {sum(rep_em) / sum(rep_hand):.3f})")
    print(f"log-likelihood: start {ll_em[0]:.6f}, after {args.steps - 1} steps {ll_em[-1]:.6f}")
    target = "(target <= 1e-9 in float64)" if dtype == torch.float64 else "(float32 rounding)"
    print(f"max |ll_pyroem - ll_hand| over the trajectory: {gap:.3e}, relative "
          f"{gap / abs(ll_hand[-1]):.1e}   {target}")
    if args.profile:
        profile_pyroem(init, x, args.steps, top=40)


if __name__ == "__main__":
    main()
