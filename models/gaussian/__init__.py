"""Gaussian mixtures: ``GaussianMixture`` (scikit-learn's API), its Pyro model and closed-form
M-step, and the batched fit of many mixtures at once."""
from ..exceptions import ConvergenceWarning, NotFittedError
from .batch import BatchGMMUpdates, batch_gmm_model
from .mixture import GaussianMixture, GMMUpdates, gmm_model

__all__ = ["BatchGMMUpdates", "ConvergenceWarning", "GMMUpdates", "GaussianMixture", "NotFittedError",
           "batch_gmm_model", "gmm_model"]
