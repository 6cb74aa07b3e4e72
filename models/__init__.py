"""Bundled models built on pyroem's public API: estimators and the Pyro model functions behind them."""
from .gaussian import BatchGMMUpdates, GaussianMixture, GMMUpdates, batch_gmm_model, gmm_model
from .hardy_weinberg import HardyWeinberg, hardy_weinberg_model
from .hmm import CategoricalHMM, GaussianHMM, categorical_hmm_model, gaussian_hmm_model

__all__ = [
    "BatchGMMUpdates",
    "CategoricalHMM",
    "GMMUpdates",
    "GaussianHMM",
    "GaussianMixture",
    "HardyWeinberg",
    "batch_gmm_model",
    "categorical_hmm_model",
    "gaussian_hmm_model",
    "gmm_model",
    "hardy_weinberg_model",
]
