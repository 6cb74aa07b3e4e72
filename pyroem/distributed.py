"""Data-parallel EM on ``torch.distributed``: each rank holds a shard of the data, and every sum
over data points — log p(y|θ), statistics, expected counts, Q with its gradient and Hessian — is
all-reduced, so every rank takes the same steps to the same parameters.

Launch with ``torchrun --nproc_per_node=N script.py`` (gloo on CPUs, NCCL on GPUs) and call
``torch.distributed.init_process_group`` before the fit; give it a ``timeout`` so that a rank lost
in the middle of a step ends the others' wait. A rank whose E-step or M-step fails makes every
rank raise (the others name the failed rank and its error) instead of waiting.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, TypeVar

import torch

T = TypeVar("T")


class DataParallel:
    """The default process group of ``torch.distributed`` while it has more than one rank."""

    def __init__(self, dist) -> None:
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    @staticmethod
    def current() -> Optional["DataParallel"]:
        """The process group the fit runs in, or None (one process)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return DataParallel(dist)
        return None

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a new tensor; every rank gets the total)."""
        out = t.detach().clone().contiguous()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``t`` on every rank (a new tensor; ``t`` must have the same shape everywhere)."""
        out = t.detach().clone().contiguous()
        self._dist.broadcast(out, src=src)
        return out

    def sum_float(self, value: float) -> float:
        return float(self.sum(torch.tensor(value, dtype=torch.float64)))

    def sum_dict(self, stats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: self.sum(v) for k, v in stats.items()}

    def agree(self, fn: Callable[[], T], what: str, device: Optional[torch.device] = None) -> T:
        """Run ``fn`` on every rank; if it raises on any, raise on all (the failed rank its own
        error, the others a ``RuntimeError`` naming that rank and its error)."""
        err: Optional[BaseException] = None
        out = None
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - reported to every rank, then raised
            err = e
        flag = torch.tensor(0.0 if err is None else 1.0, dtype=torch.float64,
                            device=device if device is not None else torch.device("cpu"))
        if float(self.sum(flag)) == 0.0:
            return out
        messages = [None] * self.world_size
        self._dist.all_gather_object(messages, None if err is None else f"{type(err).__name__}: {err}")
        if err is not None:
            raise err
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        rank, message = failed[0]
        raise RuntimeError(f"{what} failed on rank {rank} of {self.world_size}, so every rank stops: {message}")
