"""One run on several processes: PyTorch's ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m torchcf train ...`` (or ``torchcf train --nproc N``, which starts
the same through ``torch.distributed.run``) runs N copies of the command; torchrun gives each its
``RANK`` and ``WORLD_SIZE`` and the rendezvous, and :func:`setup` joins the process group (gloo on
CPUs, NCCL on GPUs). Every rank loads the same data and draws the same epochs from ``(seed,
epoch)``; each trains on its share of every global batch (``World.span``) with the gradients
averaged by ``DistributedDataParallel`` (``training.steps.DistributedStep``), evaluates its share
of the users (``gather``), and rank 0 alone writes the run directory. Without torchrun's variables
everything here is the one-process identity.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from torchcf.errors import ConfigError, TorchcfError

__all__ = [
    "BACKENDS",
    "World",
    "agree",
    "barrier",
    "current",
    "gather",
    "launched",
    "same",
    "setup",
    "teardown",
    "total",
]

BACKENDS = ("auto", "gloo", "nccl")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints and writes."""
        return self.rank == 0

    def span(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """The contiguous share ``[lo, hi)`` of ``n`` items of ``rank`` (default: this one);
        shares differ in size by at most one and follow each other in rank order."""
        r = self.rank if rank is None else rank
        return n * r // self.size, n * (r + 1) // self.size


def launched() -> bool:
    """Was this process started as one of several by torchrun (its ``WORLD_SIZE`` > 1)?"""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current() -> World:
    """The process group's world, or a world of one when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def setup(backend: str = "auto", timeout: float = 300.0, device: str = "auto") -> World:
    """Join the process group torchrun described (no-op for one process). ``backend`` auto:
    NCCL when training on CUDA, else gloo. A collective that waits longer than ``timeout``
    seconds (a dead or hung rank) fails instead of waiting forever."""
    if not launched():
        return World()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if not timeout > 0:
        raise ConfigError(f"--dist-timeout must be positive, got {timeout}")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return current()


def teardown() -> None:
    """Leave the process group (if any). What still refers to it (a DistributedDataParallel
    wrapper in a reference cycle) is collected first: freed later, at interpreter exit, gloo's
    threads are torn down with the interpreter and the process aborts ("terminate called
    without an active exception") after a finished run."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def gather(part: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """Every rank's ``part`` (its ``span(n)`` of an ``n``-row tensor), concatenated in rank
    order on every rank: the one-process tensor, row for row."""
    if world.size == 1:
        return part
    spans = [world.span(n, r) for r in range(world.size)]
    most = max(hi - lo for lo, hi in spans)
    padded = part.new_zeros((most, *part.shape[1:]))
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, spans, strict=True)])


def total(world: World, *values: float) -> list[float]:
    """The sums of ``values`` over every rank (in float64; the values themselves for one)."""
    if world.size == 1:
        return list(values)
    sums = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(sums)
    return sums.tolist()


def same(world: World, value: T) -> T:
    """Rank 0's ``value`` on every rank (a default run directory's time stamp, say)."""
    if world.size == 1:
        return value
    box: list[T] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank (no-op for one process)."""
    if world.size > 1:
        dist.barrier()


def agree(world: World, action: Callable[[], T]) -> T | None:
    """Rank 0 runs ``action`` (creating the run directory, say) and tells the others whether it
    failed: then every rank raises the same one-line error, instead of the others waiting at
    their first collective until the timeout. Returns the action's result on rank 0."""
    if world.size == 1:
        return action()
    result: T | None = None
    failure: list[str | None] = [None]
    if world.main:
        try:
            result = action()
        except TorchcfError as exc:
            failure[0] = str(exc)
            dist.broadcast_object_list(failure, src=0)
            raise
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise TorchcfError(failure[0])
    return result
