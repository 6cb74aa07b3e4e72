"""Checkpoints of an EM fit: written atomically, read back with checks, resumed bit for bit.

A checkpoint is a ``torch.save``'d dict of plain types and tensors (readable with
``torch.load(path, weights_only=True)``)::

    {"format": "pyroem-checkpoint", "version": 1,
     "params": {name: constrained value}, "unconstrained": {name: unconstrained value},
     "constraints": {name: str(constraint)}, "history": [log p(y|θ_0), ...],
     "n_iter": int, "converged": bool, "stop_reason": str, "rng_state": torch RNG state}

``unconstrained`` holds the param store's own tensors, so restoring them reproduces the
parameters exactly; ``params`` is there for reading. ``history`` has ``n_iter`` entries (saved
before evaluating θ_{n_iter}) or ``n_iter + 1`` (θ_{n_iter} evaluated too). ``rng_state`` is
torch's CPU generator state when the E-step at θ_{n_iter} began, so a model that draws (a
subsampled plate) draws the same numbers after a resume.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

import pyro
import torch

from .handlers import param_constraint, unconstrained

FORMAT = "pyroem-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The state of a fit: enough to continue it where it stopped."""

    unconstrained: Dict[str, torch.Tensor]
    constraints: Dict[str, str]
    history: List[float]
    n_iter: int
    converged: bool = False
    stop_reason: str = "running"
    rng_state: torch.Tensor = field(default_factory=torch.get_rng_state)
    params: Dict[str, torch.Tensor] = field(default_factory=dict)
    #: the fitted data's shapes, dtypes and a hash of its values (:func:`data_fingerprint`)
    data: str = ""

    @classmethod
    def capture(cls, names, history: List[float], n_iter: int, rng_state: torch.Tensor,
                converged: bool = False, stop_reason: str = "running") -> "Checkpoint":
        """The named params as the param store holds them now."""
        store = pyro.get_param_store()
        unconstrained, constrained, kinds = {}, {}, {}
        for name in names:
            p = store.get_param(name)
            unconstrained[name] = p.unconstrained().detach().cpu().clone()
            constrained[name] = p.detach().cpu().clone()
            kinds[name] = str(param_constraint(name, store))
        return cls(unconstrained, kinds, [float(h) for h in history], int(n_iter), bool(converged),
                   stop_reason, rng_state.clone(), constrained)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "params": self.params,
            "unconstrained": self.unconstrained,
            "constraints": self.constraints,
            "history": list(self.history),
            "n_iter": self.n_iter,
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "rng_state": self.rng_state,
            "data": self.data,
        }

    def restore(self, names, path: str = "checkpoint") -> None:
        """Write the saved values into the param store after checking they fit the model's params."""
        store = pyro.get_param_store()
        names = list(names)
        missing = [n for n in names if n not in self.unconstrained]
        extra = [n for n in self.unconstrained if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"the model's parameter(s) {', '.join(map(repr, missing))} are not in it")
            if extra:
                parts.append(f"it holds parameter(s) {', '.join(map(repr, extra))} the model does not have")
            raise ValueError(f"checkpoint {path!r} does not match the model: {'; '.join(parts)}")
        for name in names:
            saved, current = self.unconstrained[name], unconstrained(name)
            if saved.shape != current.shape:
                raise ValueError(
                    f"checkpoint {path!r} does not match the model: parameter '{name}' has shape "
                    f"{tuple(saved.shape)} in the checkpoint and {tuple(current.shape)} in the model"
                )
            if saved.dtype != current.dtype:
                raise ValueError(
                    f"checkpoint {path!r} does not match the model: parameter '{name}' is "
                    f"{saved.dtype} in the checkpoint and {current.dtype} in the model"
                )
            kind = str(param_constraint(name, store))
            if self.constraints.get(name, kind) != kind:
                raise ValueError(
                    f"checkpoint {path!r} does not match the model: parameter '{name}' was saved "
                    f"with constraint {self.constraints[name]} and the model declares {kind}"
                )
        with torch.no_grad():
            for name in names:
                unconstrained(name).copy_(self.unconstrained[name])


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Write atomically: a temporary file in the same directory, flushed and fsynced, then
    ``os.replace``d onto ``path``. A failure at any point leaves the previous file as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # the rename itself made durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _bad(path: str, problem: str) -> ValueError:
    return ValueError(f"checkpoint {path!r} {problem}")


def _tensor_dict(state: dict, key: str, path: str) -> Dict[str, torch.Tensor]:
    value = state.get(key)
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise _bad(path, f"is damaged: '{key}' is not a dict of named tensors")
    return dict(value)


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by :meth:`pyroem.EM.fit`.

    Raises ``ValueError`` naming the path when the file is truncated, is not a pyroem
    checkpoint, comes from a newer version, or holds malformed fields.
    """
    path = os.fspath(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError,
            AttributeError, ImportError, IndexError) as err:  # a truncated zip can read as EINVAL
        raise _bad(path, f"cannot be read as a pyroem checkpoint (truncated or not a torch file): {err}") from err
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise _bad(path, f"is not a pyroem checkpoint (no {{'format': '{FORMAT}'}} header)")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(path, f"has an invalid format version {version!r}")
    if version > VERSION:
        raise _bad(path, f"has format version {version}; this pyroem reads version {VERSION} or older")
    unconstrained = _tensor_dict(state, "unconstrained", path)
    params = _tensor_dict(state, "params", path) if "params" in state else {}
    for name, value in unconstrained.items():
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise _bad(path, f"is damaged: parameter '{name}' holds non-finite or non-float values")
    kinds = state.get("constraints", {})
    if not isinstance(kinds, Mapping) or not all(isinstance(v, str) for v in kinds.values()):
        raise _bad(path, "is damaged: 'constraints' is not a dict of strings")
    n_iter = state.get("n_iter")
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 0:
        raise _bad(path, f"is damaged: n_iter is {n_iter!r}, not an int >= 0")
    history = state.get("history")
    if (not isinstance(history, list) or not all(isinstance(h, (int, float)) for h in history)
            or not all(math.isfinite(h) for h in history)):
        raise _bad(path, "is damaged: 'history' is not a list of finite numbers")
    if len(history) not in (n_iter, n_iter + 1):
        raise _bad(path, f"is damaged: {len(history)} history entries for n_iter={n_iter}")
    rng = state.get("rng_state")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise _bad(path, "is damaged: 'rng_state' is not a torch RNG state")
    converged = state.get("converged", False)
    reason = state.get("stop_reason", "running")
    data = state.get("data", "")
    if not isinstance(data, str):
        raise _bad(path, "is damaged: 'data' is not a fingerprint string")
    return Checkpoint(unconstrained, dict(kinds), [float(h) for h in history], n_iter,
                      bool(converged), str(reason), rng, params, data)


def data_fingerprint(args: tuple, kwargs: dict) -> str:
    """The shapes, dtypes and a SHA-256 of the values of a fit's tensor arguments, and the values
    of its plain ones: a resumed fit refuses a checkpoint made on other data."""
    digest = hashlib.sha256()
    parts = []
    for key, value in list(enumerate(args)) + sorted(kwargs.items()):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            parts.append(f"{key}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif value is None or isinstance(value, (bool, int, float, str)):
            parts.append(f"{key}: {value!r}")
        else:
            parts.append(f"{key}: {type(value).__name__}")
    return "; ".join(parts) + f"; sha256 {digest.hexdigest()[:16]}"
