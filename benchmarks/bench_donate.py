"""``pyroem.donate`` on a user's own model: a diagonal Gaussian mixture whose distribution builds
the whole ``(K, N)`` log-density table in ``log_prob``, fitted by ``pyroem.EM(model, updates)``
with and without returning ``pyroem.donate(table)``.

Donated, the E-step writes the posterior into the table's memory instead of allocating a second
``(K, N)`` table. The two variants run round by round in one process (time per EM step, median
of the per-round ratios); each variant's peak resident memory is measured in a fresh process.

    python benchmarks/bench_donate.py [--n 1000000] [--k 16] [--d 4] [--steps 10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import pyroem


class DiagonalComponents(dist.TorchDistribution):
    """``x ~ N(loc_z, diag(scale_z²))`` given component ``z``; for enumerated ``z`` the whole
    ``(K, N)`` table in one matrix product."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale, z, donated, batch_shape=None):
        self.loc, self.scale, self.z, self.donated = loc, scale, z, donated
        super().__init__(z.shape if batch_shape is None else torch.Size(batch_shape), loc.shape[-1:],
                         validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return DiagonalComponents(self.loc, self.scale, self.z, self.donated, batch_shape)

    def log_prob(self, x):
        prec = self.scale.pow(-2)                                   # (K, D)
        const = (prec.log().sum(-1) - (self.loc.square() * prec).sum(-1)
                 - x.shape[-1] * 1.8378770664093453) / 2            # (K,)
        table = torch.addmm(const.unsqueeze(1), self.loc * prec, x.T)     # (K, N)
        table.addmm_(prec, x.square().T, alpha=-0.5)
        if self.z.dim() == 2 and self.z.shape[0] == self.loc.shape[0]:  # z enumerated: (K, 1)
            return pyroem.donate(table) if self.donated else table
        return table.gather(0, self.z.long().unsqueeze(0)).squeeze(0)


def make_model(donated: bool):
    def model(x, k):
        w = pyro.param("w", torch.full((k,), 1.0 / k, dtype=x.dtype), constraint=constraints.simplex)
        loc = pyro.param("loc", x[torch.linspace(0, len(x) - 1, k).long()].clone())
        scale = pyro.param("scale", x.std(0).expand(k, -1).clone(), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", DiagonalComponents(loc, scale, z, donated), obs=x)
    return model


def updates(expect, x, k):
    r = expect.marginal("z")                                        # (N, K)
    n = r.sum(0)
    loc = (r.T @ x) / n.unsqueeze(1)
    var = (r.T @ x.square()) / n.unsqueeze(1) - loc.square()
    return {"w": n / n.sum(), "loc": loc, "scale": var.clamp_min(1e-6).sqrt()}


def data(n: int, d: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(k, d, generator=g)
    return centres[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g)


def steps(em: pyroem.EM, x: torch.Tensor, k: int, n_steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n_steps):
        em.step(x, k)
    return (time.perf_counter() - t0) / n_steps


def peak_rss_mib(args, donated: bool) -> float:
    """Peak resident memory of a fresh process running a few steps of one variant."""
    code = (f"import sys; sys.argv = ['x', '--n', '{args.n}', '--k', '{args.k}', '--d', '{args.d}', "
            f"'--steps', '3', '--only', '{'donated' if donated else 'plain'}']; "
            f"import runpy; runpy.run_path({__file__!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", choices=("donated", "plain"), help=argparse.SUPPRESS)
    args = p.parse_args()
    x = data(args.n, args.d, args.k)
    if args.only:  # the child process of peak_rss_mib
        pyro.clear_param_store()
        steps(pyroem.EM(make_model(args.only == "donated"), updates), x, args.k, args.steps)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return
    ems = {v: pyroem.EM(make_model(v), updates) for v in (True, False)}
    stores = {}
    for v, em in ems.items():  # each variant keeps its own params from step to step
        pyro.clear_param_store()
        steps(em, x, args.k, 2)
        stores[v] = pyro.get_param_store().get_state()
    ratios, times = [], {True: [], False: []}
    for _ in range(args.rounds):
        for v in (True, False):
            pyro.get_param_store().set_state(stores[v])
            times[v].append(steps(ems[v], x, args.k, args.steps))
            stores[v] = pyro.get_param_store().get_state()
        ratios.append(times[True][-1] / times[False][-1])
    rss = {v: peak_rss_mib(args, v) for v in (True, False)}
    table_mib = args.n * args.k * x.element_size() / 2 ** 20
    print(f"user-written diagonal GMM, N={args.n} K={args.k} D={args.d} float32, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds of {args.steps} steps; "
          f"one (K, N) table = {table_mib:.0f} MiB")
    for v, name in ((False, "log_prob returns the table"), (True, "log_prob returns pyroem.donate(table)")):
        print(f"  {name:40s} {1e3 * statistics.median(times[v]):8.1f} ms/step   peak RSS {rss[v]:7.0f} MiB")
    print(f"  time donated / plain: median of per-round ratios {statistics.median(ratios):.2f}; "
          f"peak memory saved {rss[False] - rss[True]:.0f} MiB")


if __name__ == "__main__":
    main()
