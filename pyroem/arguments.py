"""A model's arguments as the user hands them: NumPy arrays and pandas objects become tensors."""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pyro
import torch


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "to_numpy")


def _target() -> Tuple[Optional[torch.dtype], Optional[torch.device]]:
    """The float type and device of the param store's params, each where they all agree."""
    params = [v for _, v in pyro.get_param_store().items() if v.is_floating_point()]
    kinds, devices = {v.dtype for v in params}, {v.device for v in params}
    return (kinds.pop() if len(kinds) == 1 else None), (devices.pop() if len(devices) == 1 else None)


def as_tensor(value: Any, target: Optional[Tuple[Optional[torch.dtype], Optional[torch.device]]] = None) -> Any:
    """An ``np.ndarray`` (a memory map included) or a pandas Series/DataFrame as a tensor, on the
    params' device: real numbers in the params' float type (with no params yet, their own
    float32/float64, else torch's default), integers as int64, booleans as bool. Anything else is
    returned as it is."""
    if _is_pandas(value):
        arr = value.to_numpy()
        if arr.dtype == object:
            raise ValueError(f"a pandas {type(value).__name__} of mixed or text columns cannot be a model "
                             "argument: select the numeric columns (df[['a', 'b']]) first")
        value = arr
    if not isinstance(value, np.ndarray):
        return value
    dtype, device = _target() if target is None else target
    kind = value.dtype.kind
    if kind == "f":
        own = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}.get(value.dtype)
        dtype = dtype or own or torch.get_default_dtype()
        return torch.as_tensor(np.array(value, order="C"), dtype=dtype, device=device)
    if kind in "iu":
        return torch.as_tensor(np.array(value, dtype=np.int64, order="C"), device=device)
    if kind == "b":
        return torch.as_tensor(np.array(value, order="C"), device=device)
    raise ValueError(f"a NumPy array of dtype {value.dtype} cannot be a model argument: give numbers")


def as_model_arguments(args: tuple, kwargs: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any]]:
    """``args`` and ``kwargs`` with every array-like converted by :func:`as_tensor`."""
    if not any(isinstance(v, np.ndarray) or _is_pandas(v) for v in list(args) + list(kwargs.values())):
        return args, kwargs
    target = _target()
    return (tuple(as_tensor(a, target) for a in args), {k: as_tensor(v, target) for k, v in kwargs.items()})


def tensor_arguments(fn):
    """Decorate an entry point that passes ``*args, **kwargs`` on to the model: array-likes among
    them arrive as tensors (:func:`as_model_arguments`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args, kwargs = as_model_arguments(args, kwargs)
        return fn(*args, **kwargs)
    return wrapper
