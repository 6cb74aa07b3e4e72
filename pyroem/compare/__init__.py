"""EM against stochastic variational inference (SVI) on one Pyro model, from the same start.

``compare_svi`` fits a model twice from one snapshot of the param store: by ``pyroem.EM`` and by
``pyro.infer.SVI`` with the discrete latents summed out exactly (``TraceEnum_ELBO``), so SVI does
gradient ascent on the same objective ``log p(y|θ)``. Both runs record the exact log-likelihood
against step and wall-clock time.
"""
from .results import Comparison, MethodTrace
from .runner import compare_svi
from .svi import ExactELBO

__all__ = ["Comparison", "ExactELBO", "MethodTrace", "compare_svi"]
