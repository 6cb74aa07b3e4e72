"""EM against SVI on the same Pyro model, from the same start: a Gaussian mixture and the peppered moth.

``pyroem.compare_svi`` fits each model by exact EM and by SVI (Adam on the ELBO with the discrete
latents summed out, which here is the exact log-likelihood), records log p(y|θ) at every step
of both, prints a summary and draws log p(y|θ) against wall-clock time and against step.

    python examples/em_vs_svi.py [--out DIR] [--svi-steps 600] [--lr 0.05]
"""
from __future__ import annotations

import argparse
import os

import pyro
import torch

import pyroem
from pyroem.models import HardyWeinberg, hardy_weinberg_model
from pyroem.models import GMMUpdates, gmm_model

MOTH_COUNTS = {"carbonaria": 85, "insularia": 196, "typica": 341}


def mixture_data(seed: int = 3) -> torch.Tensor:
    """300 points from three bivariate normals, in random order."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    scales = (1.0, 0.7, 0.5)
    X = torch.cat([c + s * torch.randn(100, 2, generator=g, dtype=torch.float64) for c, s in zip(centers, scales)])
    return X[torch.randperm(len(X), generator=g)]


def moth_problem():
    """``hardy_weinberg_model`` on the moth counts, and the allele-counting M-step.

    EM: expected genotype counts E[n_g] from the posterior of each phenotype class, then
    p_a = (allele copies of a in E[n_g]) / 2n.
    """
    system = HardyWeinberg.peppered_moth().system
    counts = torch.tensor([float(MOTH_COUNTS[p]) for p in system.phenotypes], dtype=torch.float64)
    copies = torch.as_tensor(system.allele_copies, dtype=torch.float64)  # (genotypes, alleles)

    def allele_counting(expect, counts, *rest):
        genotype_counts = counts @ expect.marginal("genotype")
        return {"allele_freqs": genotype_counts @ copies / (2 * counts.sum())}

    args = (counts, torch.as_tensor(system.pairs), torch.as_tensor(system.phenotype_of), len(system.alleles))
    return args, allele_counting


def run(name, title, model, args, updates, em_steps, svi_steps, lr, out):
    pyro.clear_param_store()
    result = pyroem.compare_svi(model, *args, em_steps=em_steps, svi_steps=svi_steps,
                                svi_optim=pyro.optim.Adam({"lr": lr}), updates=updates)
    print(f"== {title}")
    print(result.summary())
    path = result.plot(os.path.join(out, f"em_vs_svi_{name}.png"), title=title)
    print(f"figure: {path}\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the PNGs (default: current folder)")
    parser.add_argument("--em-steps", type=int, default=40, help="EM steps per model (default 40)")
    parser.add_argument("--svi-steps", type=int, default=600, help="SVI steps per model (default 600)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of SVI (default 0.05)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # small problems: thread hand-offs would cost more than they save

    # reg_covar=0: the closed-form M-step then maximizes the same likelihood SVI climbs
    X = mixture_data()
    run("gmm", "Gaussian mixture, 3 full-covariance components, 300 points", gmm_model, (X, 3, "full"),
        GMMUpdates(reg_covar=0.0), args.em_steps, args.svi_steps, args.lr, args.out)

    moth_args, allele_counting = moth_problem()
    result = run("moth", "Peppered moth allele frequencies (85, 196, 341)", hardy_weinberg_model, moth_args,
                 allele_counting, args.em_steps, args.svi_steps, args.lr, args.out)
    for method in (result.em, result.svi):
        freqs = method.params["allele_freqs"].tolist()
        print(f"{method.method:>3} allele frequencies: "
              + ", ".join(f"p_{a} = {p:.5f}" for a, p in zip("CIT", freqs)))


if __name__ == "__main__":
    main()
