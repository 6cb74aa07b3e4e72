"""``pyroem compare``: EM against stochastic variational inference (SVI) on the same Pyro model,
through ``pyroem.compare_svi``; prints its summary and draws its figure."""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, Tuple

from . import demo_data
from .errors import CliError, warnings_as_notes
from .options import non_negative_float, positive_int

HELP = "EM versus SVI on a bundled problem: log-likelihood per step of each"
PROBLEMS = ("gmm", "moth")


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "compare", parents=parents, help=HELP,
        description=HELP + ". gmm: 400 points from four bivariate normals, a 4-component Gaussian "
                           "mixture; moth: the peppered moth allele frequencies (85, 196, 341).")
    p.add_argument("problem", choices=PROBLEMS, help="which bundled problem")
    p.add_argument("--out", metavar="DIR", default=".", help="folder for the PNG figure (default: here)")
    p.add_argument("--em-steps", type=positive_int, default=50, help="EM steps (default 50)")
    p.add_argument("--svi-steps", type=positive_int, default=500, help="SVI steps (default 500)")
    p.add_argument("--lr", type=non_negative_float, default=None,
                   help="Adam learning rate of SVI (default: compare_svi's own optimizer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated data (default 0)")
    p.set_defaults(run=run)


def gmm_problem(seed: int) -> Tuple[Callable, tuple, Callable]:
    """``gmm_model`` on the four-cluster data with its closed-form updates."""
    import torch

    from pyroem.models import gaussian

    X, _ = demo_data.four_clusters(seed)
    args = (torch.as_tensor(X, dtype=torch.float64), 4, "full")
    return gaussian.gmm_model, args, gaussian.GMMUpdates(reg_covar=0.0)


def moth_problem(seed: int) -> Tuple[Callable, tuple, Callable]:
    """``hardy_weinberg_model`` on the moth counts with the allele-counting update."""
    import torch

    from pyroem.models import HardyWeinberg, hardy_weinberg_model

    system = HardyWeinberg.peppered_moth().system
    counts = torch.tensor([demo_data.MOTH_COUNTS[p] for p in system.phenotypes], dtype=torch.float64)
    copies = torch.as_tensor(system.allele_copies, dtype=torch.float64)

    def allele_counting(expect, counts, *rest) -> Dict[str, "torch.Tensor"]:
        genotype_counts = counts @ expect.marginal("genotype")  # E[n_g] = Σ_ph n_ph p(g | ph)
        return {"allele_freqs": genotype_counts @ copies / (2 * counts.sum())}

    args = (counts, torch.as_tensor(system.pairs), torch.as_tensor(system.phenotype_of), len(system.alleles))
    return hardy_weinberg_model, args, allele_counting


def run(args: argparse.Namespace) -> int:
    import pyro

    import pyroem

    model, model_args, updates = (gmm_problem if args.problem == "gmm" else moth_problem)(args.seed)
    optim = None if args.lr is None else pyro.optim.Adam({"lr": args.lr})
    path = os.path.join(args.out, f"compare_{args.problem}.png")
    with pyro.get_param_store().scope(), warnings_as_notes():
        pyro.set_rng_seed(args.seed)
        result = pyroem.compare_svi(model, *model_args, em_steps=args.em_steps, svi_steps=args.svi_steps,
                                    svi_optim=optim, updates=updates)
    print(result.summary())
    os.makedirs(args.out, exist_ok=True)
    try:
        result.plot(path)
    except OSError as err:
        raise CliError(f"{path}: cannot write the figure: {err.strerror or err}") from None
    print(f"figure: {os.path.abspath(path)}")
    return 0
