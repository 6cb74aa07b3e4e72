"""pyroem: exact expectation-maximization for Pyro models with discrete latent variables.

The public names are imported on first use, so ``import pyroem`` (and the ``pyroem`` command's
``--help`` and ``--version``) does not load torch and Pyro until something needs them.
"""
from importlib import import_module

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Bootstrap": "parametric_bootstrap",
    "bootstrap": "parametric_bootstrap",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Comparison": "compare",
    "compare_svi": "compare",
    "Decoding": "decoding",
    "decode": "decoding",
    "MonotonicityWarning": "diagnostics",
    "EM": "em",
    "Expectations": "expectations",
    "log_likelihood": "functional",
    "marginalize_missing": "missing",
    "posterior": "functional",
    "vectorized_markov": "markov",
    "StepwiseStatistics": "online",
    "EMResult": "results",
    "donate": "donation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyroem' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
