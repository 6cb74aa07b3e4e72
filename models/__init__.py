"""Bundled models built on pyroem's public API."""
from .hmm import CategoricalHMM, GaussianHMM, categorical_hmm_model, gaussian_hmm_model
from .hardy_weinberg import HardyWeinberg, hardy_weinberg_model
from .gaussian_mixture import GaussianMixture, gmm_model
