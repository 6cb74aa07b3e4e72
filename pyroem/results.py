"""What a fit returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch


@dataclass
class EMResult:
    """Outcome of :meth:`pyroem.EM.fit`.

    ``history[i]`` is ``log p(y|θᵢ)`` at the parameters step ``i + 1`` started from;
    ``log_likelihood`` is the value at the returned ``params`` (MAP sites add their log prior),
    ``history[-1]``; after ``fit(..., final_m_step=True)`` the params are one M-step past it.
    ``aic`` and ``bic`` count the free parameters from their constraints (MAP sites included);
    ``standard_errors()``, ``covariance()`` and ``conf_int(alpha)`` come from the observed
    information at the returned params.
    ``stop_reason`` says why the fit ended: ``"converged"``, ``"max_iter"``, ``"callback"`` (it
    returned True), ``"callback_error"`` (it raised) or ``"interrupted"`` (``KeyboardInterrupt``).
    """

    params: Dict[str, torch.Tensor]
    log_likelihood: float
    history: List[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    stop_reason: str = ""
    #: free parameters, counted from the constraints (see :func:`free_parameters`)
    n_parameters: Optional[int] = None
    #: observations: the entries of the observed sites, weighted by their ``poutine.scale``
    n_observations: Optional[float] = None
    #: with ``fit(n_init=k)``: every start's final log-likelihood (the first from the given params)
    init_log_likelihoods: List[float] = field(default_factory=list)
    _information: Optional[Callable] = field(default=None, repr=False, compare=False)

    def information(self, method: str = "hessian"):
        """The observed information at the returned params (:mod:`pyroem.information`), by the
        Hessian of log p(y|θ) or by Louis' identity (``method="louis"``, mixtures); computed on
        each call from the params as the param store holds them now."""
        if self._information is None:
            raise ValueError("this fit cannot give its observed information (data in pieces or online EM)")
        return self._information(method)

    def covariance(self, method: str = "hessian") -> Dict[str, torch.Tensor]:
        """Each param's covariance by the observed information and the delta method."""
        return self.information(method).covariance()

    def standard_errors(self, method: str = "hessian") -> Dict[str, torch.Tensor]:
        """Each param's standard errors, shaped like it."""
        return self.information(method).standard_errors()

    def conf_int(self, alpha: float = 0.05, method: str = "hessian") -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Wald intervals of level ``1 − alpha`` that stay inside each param's constraint."""
        return self.information(method).conf_int(alpha)

    @property
    def aic(self) -> float:
        """``−2 log p(y|θ) + 2p`` (lower is better)."""
        if self.n_parameters is None:
            raise ValueError("this result does not know its number of free parameters")
        return -2.0 * self.log_likelihood + 2.0 * self.n_parameters

    @property
    def bic(self) -> float:
        """``−2 log p(y|θ) + p log n``, ``n`` the number of observations (lower is better)."""
        if self.n_parameters is None or not self.n_observations:
            raise ValueError("this result does not know its number of free parameters and observations")
        return -2.0 * self.log_likelihood + self.n_parameters * math.log(self.n_observations)

    def __repr__(self) -> str:
        names = ", ".join(self.params)
        return (
            f"EMResult(log_likelihood={self.log_likelihood:.6f}, n_iter={self.n_iter}, "
            f"converged={self.converged}, stop_reason={self.stop_reason!r}, params=[{names}])"
        )


def free_parameters(value: torch.Tensor, constraint) -> int:
    """The free parameters in ``value`` under ``constraint``: ``K − 1`` per simplex of ``K``,
    ``D(D+1)/2`` per ``D×D`` Cholesky factor or covariance (``D(D−1)/2`` for a correlation
    Cholesky factor), else one per entry."""
    name = type(constraint).__name__
    if name == "_Simplex":
        k = value.shape[-1]
        return value.numel() // k * (k - 1)
    if name in ("_LowerCholesky", "_PositiveDefinite", "_PositiveSemidefinite", "_CorrCholesky", "_LowerTriangular"):
        d = value.shape[-1]
        per = d * (d - 1) // 2 if name == "_CorrCholesky" else d * (d + 1) // 2
        return value.numel() // (d * d) * per
    return value.numel()
