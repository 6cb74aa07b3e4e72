"""pyroem: exact expectation-maximization for Pyro models with discrete latent variables."""
from .checkpoint import Checkpoint, load_checkpoint
from .compare import Comparison, compare_svi
from .decoding import Decoding, decode
from .diagnostics import MonotonicityWarning
from .em import EM
from .expectations import Expectations
from .functional import log_likelihood, posterior
from .markov import vectorized_markov
from .online import StepwiseStatistics
from .results import EMResult
from .donation import donate

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "Comparison",
    "Decoding",
    "EM",
    "EMResult",
    "Expectations",
    "MonotonicityWarning",
    "StepwiseStatistics",
    "compare_svi",
    "decode",
    "donate",
    "load_checkpoint",
    "log_likelihood",
    "posterior",
    "vectorized_markov",
]
