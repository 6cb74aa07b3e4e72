"""Hidden Markov models with hmmlearn's API: ``CategoricalHMM``, ``GaussianHMM`` and their Pyro models."""
from ..exceptions import NotFittedError
from .base import ConvergenceMonitor
from .estimators import CategoricalHMM, GaussianHMM, categorical_hmm_model, gaussian_hmm_model

__all__ = ["CategoricalHMM", "ConvergenceMonitor", "GaussianHMM", "NotFittedError", "categorical_hmm_model",
           "gaussian_hmm_model"]
