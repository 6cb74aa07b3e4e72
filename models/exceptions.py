"""Exception and warning types shared by the bundled estimators (scikit-learn's when it is installed)."""
from __future__ import annotations

try:  # reuse scikit-learn's types so `except NotFittedError` works for users of both libraries
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
except ImportError:  # pragma: no cover - exercised only without scikit-learn

    class ConvergenceWarning(UserWarning):
        """An EM run stopped at its iteration limit before the log-likelihood converged."""

    class NotFittedError(ValueError, AttributeError):
        """An estimator was used before ``fit`` (or before its parameters were set)."""


__all__ = ["ConvergenceWarning", "NotFittedError"]
