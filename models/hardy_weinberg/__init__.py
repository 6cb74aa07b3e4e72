"""Allele frequencies under Hardy-Weinberg equilibrium from phenotype counts: ``HardyWeinberg``."""
from ..exceptions import NotFittedError
from .estimator import HardyWeinberg, hardy_weinberg_model

__all__ = ["HardyWeinberg", "NotFittedError", "hardy_weinberg_model"]
