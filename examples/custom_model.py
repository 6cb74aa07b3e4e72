"""Zero-inflated Poisson regression fitted by EM: a custom Pyro model with a discrete latent.

Each observation is a count y with a covariate x. With probability ``pi`` it is a structural
zero (the latent indicator is 1 and y = 0 for sure); otherwise y ~ Poisson(exp(b0 + b1 x)).
The indicator is a ``pyro.sample`` site without ``obs``: pyroem enumerates it in the E-step
and fits ``pi``, ``b0`` and ``b1`` with its autograd M-step (no closed-form updates needed).

Plots the log-likelihood per EM step and the counts against x with the fitted mean
``(1 - pi) exp(b0 + b1 x)`` (``custom_model.png``).

    python examples/custom_model.py [--n 2000] [--seed 0] [--out DIR]
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch.distributions import constraints  # noqa: E402

import pyroem  # noqa: E402

TRUE_PARAMS = {"pi": 0.3, "b0": 1.0, "b1": 0.5}


def simulate(n: int, seed: int):
    """Covariates ``x`` and counts ``y`` drawn from the model at ``TRUE_PARAMS`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    structural_zero = torch.rand(n, generator=g, dtype=torch.float64) < TRUE_PARAMS["pi"]
    rate = torch.exp(TRUE_PARAMS["b0"] + TRUE_PARAMS["b1"] * x)
    y = torch.poisson(rate, generator=g)
    y[structural_zero] = 0.0
    return x, y


def model(x: torch.Tensor, y: torch.Tensor) -> None:
    pi = pyro.param("pi", torch.tensor(0.5, dtype=x.dtype), constraint=constraints.unit_interval)
    coef = pyro.param("coef", torch.zeros(2, dtype=x.dtype))  # (b0, b1)
    rate = torch.exp(coef[0] + coef[1] * x)
    with pyro.plate("data", len(y)):
        is_zero = pyro.sample("structural_zero", dist.Bernoulli(pi))
        # y is exactly 0 where is_zero is 1, Poisson(rate) where it is 0
        counts = dist.MaskedMixture(is_zero.bool(), dist.Poisson(rate), dist.Delta(torch.zeros_like(rate)))
        pyro.sample("y", counts, obs=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of observations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated data")
    parser.add_argument("--max-steps", type=int, default=50, help="most EM steps")
    parser.add_argument("--tol", type=float, default=1e-10,
                        help="stop when the log-likelihood changes by at most tol * |log-likelihood|")
    parser.add_argument("--out", default=".", help="folder for the PNG (default: current folder)")
    args = parser.parse_args()

    x, y = simulate(args.n, args.seed)
    print(f"{args.n} counts, {int((y == 0).sum())} zeros, mean {float(y.mean()):.3f}")

    pyro.clear_param_store()
    em = pyroem.EM(model)  # no updates: every parameter is fitted by autograd on Q
    print(f"{'step':>4} {'log-likelihood':>16} {'pi':>9} {'b0':>9} {'b1':>9}")

    def show(step, log_lik, params):
        b0, b1 = params["coef"].tolist()
        print(f"{step:>4} {log_lik:>16.8f} {float(params['pi']):>9.5f} {b0:>9.5f} {b1:>9.5f}")

    result = em.fit(x, y, max_iter=args.max_steps, tol=args.tol, callback=show)
    state = "converged" if result.converged else "stopped without converging"
    print(f"{state} after {result.n_iter} steps, log-likelihood {result.log_likelihood:.8f}")

    b0, b1 = result.params["coef"].tolist()
    fitted = {"pi": float(result.params["pi"]), "b0": b0, "b1": b1}
    print(f"{'parameter':<10} {'true':>8} {'fitted':>10}")
    for name, true in TRUE_PARAMS.items():
        print(f"{name:<10} {true:>8.4f} {fitted[name]:>10.6f}")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(range(len(result.history)), result.history, marker="o", ms=3)
    left.set_xlabel("EM step")
    left.set_ylabel("log-likelihood")
    left.set_title("Each step raises log p(y | θ)")
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(y))
    right.scatter(x.numpy(), y.numpy() + jitter, s=4, alpha=0.3, color="grey", label="counts (jittered)")
    grid = torch.linspace(float(x.min()), float(x.max()), 200, dtype=x.dtype)
    for params, style, label in ((fitted, "-", "fitted"), (TRUE_PARAMS, "--", "true")):
        mean = (1 - params["pi"]) * torch.exp(params["b0"] + params["b1"] * grid)
        right.plot(grid.numpy(), mean.numpy(), style, lw=2, label=f"{label} mean (1 - pi) exp(b0 + b1 x)")
    right.set_xlabel("x")
    right.set_ylabel("y")
    right.set_title("Zero-inflated Poisson regression")
    right.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out, "custom_model.png")
    fig.savefig(path, dpi=120)
    print(path)


if __name__ == "__main__":
    main()
