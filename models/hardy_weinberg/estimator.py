"""Allele frequencies from phenotype counts under Hardy-Weinberg equilibrium, by exact EM.

``hardy_weinberg_model`` is a plain Pyro model (copy it as the start of a custom one); the
estimator ``HardyWeinberg`` runs it through ``pyroem.EM`` with the allele-counting M-step.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from pyroem import EM, log_likelihood, posterior
from pyroem.information import observed_information

from ..exceptions import NotFittedError
from .alleles import AlleleSystem, build_system, check_counts, check_init

__all__ = ["HardyWeinberg", "NotFittedError", "hardy_weinberg_model"]

MSTEPS = ("closed-form", "autograd")

Counts = Union[Mapping[Hashable, float], Sequence[float], np.ndarray, torch.Tensor]


def hardy_weinberg_model(counts: torch.Tensor, pairs: torch.Tensor, phenotype_of: torch.Tensor,
                         n_alleles: int,
                         freqs_constraint: constraints.Constraint = constraints.simplex) -> None:
    """Phenotype counts ``n_ph`` of a population in Hardy-Weinberg equilibrium.

    One latent genotype per phenotype class, ``g ~ Cat(P(g))`` with ``P(ii) = p_i²`` and
    ``P(ij) = 2 p_i p_j``; the phenotype is a deterministic function of ``g``. Each class is
    weighted by its count, so ``log p(y) = Σ_ph n_ph log P(ph)`` and the posterior of ``g`` in
    class ``ph`` gives the expected genotype counts ``E[n_g] = Σ_ph n_ph p(g | ph)``.

    :param counts: ``(P,)`` phenotype counts (float).
    :param pairs: ``(G, 2)`` allele indices of every unordered genotype.
    :param phenotype_of: ``(G,)`` index of the phenotype each genotype shows.
    :param freqs_constraint: constraint of the ``allele_freqs`` param. ``HardyWeinberg`` passes
        ``constraints.real`` with its closed-form M-step, which may set a frequency to exactly
        0 (an allele without evidence); the simplex's coordinates cannot hold that.
    """
    n_pheno = counts.shape[-1]
    freqs = pyro.param(
        "allele_freqs",
        lambda: torch.full((n_alleles,), 1.0 / n_alleles, dtype=counts.dtype, device=counts.device),
        constraint=freqs_constraint,
    )
    i, j = pairs[:, 0], pairs[:, 1]
    log2 = torch.tensor(math.log(2.0), dtype=freqs.dtype, device=freqs.device)
    genotype_logits = torch.log(freqs[i]) + torch.log(freqs[j]) + torch.where(i != j, log2, 0.0)
    shows = phenotype_of.unsqueeze(-1) == torch.arange(n_pheno, device=counts.device)
    phenotype_logits = torch.zeros(shows.shape, dtype=counts.dtype, device=counts.device)
    phenotype_logits = phenotype_logits.masked_fill(~shows, -math.inf)  # (G, P): 0 or -inf
    seen = counts > 0  # Pyro's scale must be positive: classes with no count are masked out
    weight = torch.where(seen, counts, torch.ones_like(counts))
    with pyro.plate("phenotypes", n_pheno, dim=-1), poutine.mask(mask=seen), poutine.scale(scale=weight):
        g = pyro.sample("genotype", dist.Categorical(logits=genotype_logits))
        pyro.sample("phenotype", dist.Categorical(logits=phenotype_logits[g]),
                    obs=torch.arange(n_pheno, device=counts.device))


class HardyWeinberg:
    """Allele frequencies from phenotype counts by EM (the gene-counting algorithm).

    :param alleles: allele names, e.g. ``["A", "B", "O"]``.
    :param phenotypes: ``{phenotype: [genotypes]}``; a genotype is a pair of alleles, written
        ``("A", "O")``, ``"AO"`` (single-character alleles) or ``"A1/A2"``; order inside a
        pair does not matter. Every unordered genotype must show exactly one phenotype.
    :param init: start frequencies, ``{allele: freq}`` or a sequence in allele order
        (default: uniform).
    :param mstep: ``"closed-form"`` (allele counting,
        ``p_i = (2 E[n_ii] + Σ_{j≠i} E[n_ij]) / 2n``) or ``"autograd"`` (pyroem's default M-step,
        Newton's method on the simplex-constrained frequencies).
    :param accelerate: ``None`` or ``"squarem"`` (see ``pyroem.EM.fit``): fewer iterations on
        allele systems where EM converges slowly.
    :param max_iter: most EM steps.
    :param tol: stop when ``|Δ log-likelihood| ≤ tol · max(1, |log-likelihood|)``.
    :param dtype: ``torch.float64`` or ``torch.float32``; ``device`` where tensors live.

    After ``fit``: ``allele_freqs_`` ``{allele: p}``, ``genotype_freqs_`` ``{genotype: P(g)}``,
    ``phenotype_freqs_``, ``expected_genotype_counts_``, ``log_likelihood_`` (``Σ n_ph log P(ph)``,
    multinomial coefficient left out), ``history_`` (its value at the start of every step and at
    the end), ``allele_freqs_history_`` (one ``{allele: p}`` per entry of ``history_``),
    ``n_iter_``, ``converged_``, ``allele_freqs_se_`` (standard errors from the observed
    information) and ``allele_freqs_ci_`` (95% Wald intervals on the logit scale, inside (0, 1)).
    """

    def __init__(self, alleles: Sequence[str], phenotypes: Mapping[Hashable, Sequence],
                 init=None, mstep: str = "closed-form", max_iter: int = 100, tol: float = 1e-8,
                 dtype: torch.dtype = torch.float64, device=None, accelerate: Optional[str] = None) -> None:
        self.system: AlleleSystem = build_system(alleles, phenotypes)
        self.alleles = list(self.system.alleles)
        self.phenotypes = {ph: list(g) for ph, g in phenotypes.items()}
        self.init = init
        self.mstep = mstep
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.device = device
        self.accelerate = accelerate
        self._check_hyper()

    # -- presets ----------------------------------------------------------------------
    @classmethod
    def peppered_moth(cls, **kwargs) -> "HardyWeinberg":
        """Peppered moth wing colour: alleles C > I > T (carbonaria, insularia, typica)."""
        phenotypes = {"carbonaria": ["CC", "CI", "CT"], "insularia": ["II", "IT"], "typica": ["TT"]}
        return cls(["C", "I", "T"], phenotypes, **kwargs)

    @classmethod
    def abo(cls, **kwargs) -> "HardyWeinberg":
        """ABO blood groups: A and B codominant, both dominant over O."""
        phenotypes = {"A": ["AA", "AO"], "B": ["BB", "BO"], "AB": ["AB"], "O": ["OO"]}
        return cls(["A", "B", "O"], phenotypes, **kwargs)

    # -- checks -----------------------------------------------------------------------
    def _check_hyper(self) -> None:
        if self.mstep not in MSTEPS:
            raise ValueError(f"mstep must be one of {MSTEPS}, got {self.mstep!r}")
        if (isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral)
                or self.max_iter < 0):
            raise ValueError(f"max_iter must be an int >= 0, got {self.max_iter!r}")
        if (isinstance(self.tol, bool) or not isinstance(self.tol, numbers.Real)
                or not math.isfinite(self.tol) or self.tol < 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if self.accelerate is not None and self.accelerate not in EM.accelerations:
            raise ValueError(f"accelerate must be None or one of {EM.accelerations}, got {self.accelerate!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        check_init(self.init, self.system.alleles)

    def _check_fitted(self) -> None:
        if not hasattr(self, "allele_freqs_"):
            raise NotFittedError(f"this {type(self).__name__} has not been fitted yet: call fit first")

    # -- the Pyro model with this allele system bound ------------------------------------
    def _tensor(self, value, dtype=None) -> torch.Tensor:
        return torch.as_tensor(value, dtype=dtype or self.dtype, device=self.device)

    def model(self, counts: torch.Tensor) -> None:
        """``hardy_weinberg_model`` for this allele system: ``model(counts)``, counts ``(P,)``."""
        constraint = constraints.real if self.mstep == "closed-form" else constraints.simplex
        hardy_weinberg_model(counts, self._tensor(self.system.pairs, torch.long),
                             self._tensor(self.system.phenotype_of, torch.long),
                             len(self.alleles), freqs_constraint=constraint)

    def _updates(self, expect, counts: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Allele counting: each expected genotype count adds its allele copies, over ``2n``."""
        n_g = counts @ expect.marginal("genotype")  # (P,) @ (P, G) -> expected genotype counts
        copies = self._tensor(self.system.allele_copies, counts.dtype)
        return {"allele_freqs": (n_g @ copies) / (2 * counts.sum())}

    def _counts(self, counts: Counts) -> torch.Tensor:
        return self._tensor(check_counts(counts, self.system.phenotypes))

    # -- fitting --------------------------------------------------------------------
    def fit(self, counts: Counts) -> "HardyWeinberg":
        """Estimate allele frequencies from ``{phenotype: count}`` or counts in phenotype order."""
        self._check_hyper()
        y = self._counts(counts)
        start = self._tensor(check_init(self.init, self.system.alleles))
        path: List[np.ndarray] = []

        def record(n_iter, ll, params) -> None:
            path.append(params["allele_freqs"].cpu().numpy().astype(np.float64))

        updates = self._updates if self.mstep == "closed-form" else None
        store = pyro.get_param_store()
        with store.scope():
            self._load(start)
            em = EM(self.model, updates=updates, max_plate_nesting=1)
            res = em.fit(y, max_iter=self.max_iter, tol=self.tol, callback=record, accelerate=self.accelerate)
            self._summarize(y, res.params["allele_freqs"])
            self._uncertainty(em, y)
        self.history_ = list(res.history)
        self.log_likelihood_ = float(res.log_likelihood)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        self.allele_freqs_history_ = [dict(zip(self.alleles, p.tolist())) for p in path]
        return self

    def _uncertainty(self, em: EM, y: torch.Tensor) -> None:
        """Standard errors and 95% intervals of the allele frequencies from the observed
        information on the simplex (``pyroem.information``); NaN where it is singular (an allele
        at frequency 0, or too few phenotypes to identify the frequencies)."""
        try:
            info = observed_information(em.tracer, ["allele_freqs"], (y,), {},
                                        kinds={"allele_freqs": constraints.simplex})
        except ValueError:
            nan = [float("nan")] * len(self.alleles)
            self.allele_freqs_se_ = dict(zip(self.alleles, nan))
            self.allele_freqs_ci_ = {a: (float("nan"), float("nan")) for a in self.alleles}
            return
        se = info.standard_errors()["allele_freqs"].cpu().numpy().astype(np.float64)
        low, high = (t.cpu().numpy().astype(np.float64) for t in info.conf_int(0.05)["allele_freqs"])
        self.allele_freqs_se_ = dict(zip(self.alleles, se.tolist()))
        self.allele_freqs_ci_ = {a: (float(lo), float(hi)) for a, lo, hi in zip(self.alleles, low, high)}

    def _load(self, freqs: torch.Tensor) -> None:
        constraint = constraints.real if self.mstep == "closed-form" else constraints.simplex
        pyro.get_param_store().setdefault("allele_freqs", freqs, constraint=constraint)

    def _summarize(self, y: torch.Tensor, freqs: torch.Tensor) -> None:
        """Learned attributes at ``freqs`` (param store already holding them)."""
        post = posterior(self.model, y)["genotype"]  # (P, G)
        system = self.system
        p = freqs.detach().cpu().numpy().astype(np.float64)
        i, j = system.pairs[:, 0], system.pairs[:, 1]
        geno = p[i] * p[j] * np.where(i == j, 1.0, 2.0)
        pheno = np.bincount(system.phenotype_of, weights=geno, minlength=len(system.phenotypes))
        names = system.genotype_names
        self.allele_freqs_ = dict(zip(self.alleles, p.tolist()))
        self.genotype_freqs_ = dict(zip(names, geno.tolist()))
        self.phenotype_freqs_ = dict(zip(system.phenotypes, pheno.tolist()))
        n_g = (y @ post).detach().cpu().numpy().astype(np.float64)
        self.expected_genotype_counts_ = dict(zip(names, n_g.tolist()))

    # -- at the fitted frequencies ---------------------------------------------------------
    def score(self, counts: Counts) -> float:
        """``Σ_ph n_ph log P(ph)`` at the fitted frequencies (multinomial coefficient left out)."""
        self._check_fitted()
        y = self._counts(counts)
        freqs = self._tensor([self.allele_freqs_[a] for a in self.alleles])
        store = pyro.get_param_store()
        with store.scope(), torch.no_grad():
            self._load(freqs)
            return float(log_likelihood(self.model, y))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(alleles={self.alleles}, phenotypes={self.phenotypes}, "
                f"mstep={self.mstep!r}, max_iter={self.max_iter}, tol={self.tol}, accelerate={self.accelerate!r})")
