"""Multi-process training helpers (torchrun): process group set-up, averaging, gathering with gradient."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import Tensor

T = TypeVar("T")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own part."""

    @staticmethod
    def forward(ctx: Any, padded: Tensor, world_size: int, rank: int) -> Tensor:  # padded: (N, ...)
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        torch_dist.all_gather(parts, padded.contiguous())
        ctx.rank = rank
        return torch.stack(parts)  # (world, N, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # grad: (world, N, ...)
        grad = grad.contiguous()
        torch_dist.all_reduce(grad)  # every rank's gradient of every part, summed
        return grad[ctx.rank], None, None  # (N, ...)


def _import_collectives_before_init() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import: imported after
    ``init_process_group`` (by ``torch._dynamo``, which DistributedDataParallel imports), they hold the
    default group forever. ``destroy_process_group`` then cannot free it, gloo's threads outlive
    the run, and the interpreter's exit may abort a finished run ("terminate called without an active
    exception"). Imported first, the defaults are ``None`` (the default group, looked up at each call).
    """
    import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object joined the process group (from_env), so ``close`` may destroy it

    @staticmethod
    def single() -> Distributed:
        return Distributed()

    @staticmethod
    def from_env(device_type: str = "cpu") -> Distributed:
        """Join the process group that torchrun describes in the environment (or run alone)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return Distributed()
        owns = not torch_dist.is_initialized()  # a group the caller set up stays the caller's to destroy
        if owns:
            _import_collectives_before_init()
            backend = "nccl" if device_type == "cuda" else "gloo"
            torch_dist.init_process_group(backend=backend)
        return Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                           owns_group=owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        on = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
        tensor = torch.tensor([value], dtype=torch.float64, device=on)
        torch_dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def from_main(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (e.g. a choice only rank 0 can make, after writing files)."""
        if not self.enabled:
            return value
        return round(self.mean(float(value if self.is_main else 0)) * self.world_size)

    def main_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank, bit for bit (e.g. a validation score every rank acts on: ranks that
        computed it with nondeterministic kernels could otherwise disagree on stopping, and the one that goes on
        would wait forever in the next collective)."""
        if not self.enabled:
            return value
        on = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.float64, device=on)
        torch_dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def gather_equal(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (the same shape and dtype on each rank, e.g. a random generator's state), in
        rank order, on every rank, on the CPU; no gradient."""
        if not self.enabled:
            return [tensor.detach().cpu()]
        on = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"  # NCCL gathers GPU tensors only
        local = tensor.detach().to(on)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, local)
        return [part.cpu() for part in parts]

    def gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-serialisable ``value`` (of any size), in rank order, on every rank (collective)."""
        if not self.enabled:
            return [value]
        data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)  # (n_r,)
        sizes = [int(size) for size in self.gather_equal(torch.tensor([len(data)], dtype=torch.long))]
        padded = torch.zeros(max(sizes), dtype=torch.uint8)  # (largest,)
        padded[: len(data)] = data
        return [json.loads(bytes(part[:n].tolist()).decode()) for part, n in
                zip(self.gather_equal(padded), sizes, strict=True)]

    def gather_rows(self, *tensors: Tensor) -> tuple[list[Tensor], int]:
        """Concatenate every rank's tensors along dim 0, for tensors that share their first dimension (n_r rows
        on rank r), with one exchange of the sizes for all of them; gradients flow back to each rank's part.
        Also returns the index of this rank's first row in the gathered tensors.

        Ranks may hold different n_r: tensors are padded to the largest, gathered, then trimmed. Tensors
        without gradient (e.g. item ids) build no graph.
        """
        if not tensors:
            raise ValueError("gather_rows needs at least one tensor")
        rows = len(tensors[0])
        if any(len(t) != rows for t in tensors):
            raise ValueError(f"gather_rows: tensors of {[len(t) for t in tensors]} rows; they must share their rows")
        if not self.enabled:
            return list(tensors), 0
        device = tensors[0].device
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world_size)]
        torch_dist.all_gather(sizes, torch.tensor([rows], device=device))
        counts = [int(s.item()) for s in sizes]
        largest = max(counts)
        gathered = []
        for tensor in tensors:
            padded = torch.cat([tensor, tensor.new_zeros((largest - rows, *tensor.shape[1:]))])
            parts = _GatherWithGrad.apply(padded, self.world_size, self.rank)  # (world, largest, ...)
            gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]))
        return gathered, sum(counts[: self.rank])

    def main_first(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 first (e.g. filling a cache), then on the other ranks."""
        if self.is_main:
            result = work()
            self.barrier()
            return result
        self.barrier()
        return work()

    def close(self) -> None:
        """Destroy the process group this object joined: its communication threads end here, not in the
        interpreter's exit, where gloo's could abort a finished run ("terminate called without an active
        exception"). Nothing else may hold the group then (see ``_import_collectives_before_init``)."""
        if self.enabled and self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
