"""pyroem: exact expectation-maximization for Pyro models with discrete latent variables."""
from .checkpoint import Checkpoint, load_checkpoint
from .compare import Comparison, compare_svi
from .diagnostics import MonotonicityWarning
from .em import EM
from .expectations import Expectations
from .functional import log_likelihood, posterior
from .results import EMResult

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "Comparison",
    "EM",
    "EMResult",
    "Expectations",
    "MonotonicityWarning",
    "compare_svi",
    "load_checkpoint",
    "log_likelihood",
    "posterior",
]
