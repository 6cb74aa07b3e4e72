"""What a fit returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch


@dataclass
class EMResult:
    """Outcome of :meth:`pyroem.EM.fit`.

    ``history[i]`` is ``log p(y|θᵢ)`` at the parameters step ``i + 1`` started from;
    ``log_likelihood`` is the value at the returned ``params`` (MAP sites add their log prior),
    ``history[-1]``; after ``fit(..., final_m_step=True)`` the params are one M-step past it.
    ``stop_reason`` says why the fit ended: ``"converged"``, ``"max_iter"``, ``"callback"`` (it
    returned True), ``"callback_error"`` (it raised) or ``"interrupted"`` (``KeyboardInterrupt``).
    """

    params: Dict[str, torch.Tensor]
    log_likelihood: float
    history: List[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    stop_reason: str = ""

    def __repr__(self) -> str:
        names = ", ".join(self.params)
        return (
            f"EMResult(log_likelihood={self.log_likelihood:.6f}, n_iter={self.n_iter}, "
            f"converged={self.converged}, stop_reason={self.stop_reason!r}, params=[{names}])"
        )
