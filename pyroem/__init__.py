"""pyroem: exact expectation-maximization for Pyro models with discrete latent variables."""
from .checkpoint import Checkpoint, load_checkpoint
from .compare import Comparison, compare_svi
from .diagnostics import MonotonicityWarning
from .em import EM
from .expectations import Expectations
from .functional import log_likelihood, posterior
from .results import EMResult
from .scratch import donate

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "Comparison",
    "EM",
    "EMResult",
    "Expectations",
    "MonotonicityWarning",
    "compare_svi",
    "donate",
    "load_checkpoint",
    "log_likelihood",
    "posterior",
]
