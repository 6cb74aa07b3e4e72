"""scikit-learn's estimator protocol, shared by the bundled estimators."""
from __future__ import annotations

import inspect
from typing import List


class Estimator:
    """The constructor's arguments are the estimator's params: ``get_params``/``set_params`` read
    and write them by name (so ``sklearn.base.clone`` and grid searches work), and the repr shows
    those that differ from their defaults."""

    @classmethod
    def _param_names(cls) -> List[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Estimator":
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._param_names():
            value, default = getattr(self, name), sig.parameters[name].default
            if not (value is default or (isinstance(value, (int, float, str, bool)) and value == default
                                         and type(value) is type(default))):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
