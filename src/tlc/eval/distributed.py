"""Several processes under torchrun: which process this is, and the few collectives tlc needs.

torchrun (``python -m torch.distributed.run``) starts ``--nproc_per_node`` processes on each node
and tells each one who it is through the environment: ``RANK`` (0 .. WORLD_SIZE-1 over all
nodes), ``WORLD_SIZE``, ``LOCAL_RANK`` (its index on its node: which GPU it takes), and
``MASTER_ADDR`` / ``MASTER_PORT`` (where the processes meet). Without ``WORLD_SIZE``, or with
``WORLD_SIZE=1``, tlc runs as one process and never touches torch.distributed.

Only small Python objects travel between processes (the work plan, row counts, errors, the
summary), so every collective here is an object collective with a timeout: a process that dies
or stops answering makes the others fail with a message naming it, never wait forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from .._util import Hint, hinted, one_line

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A launch that cannot work, a failed process, or lost contact between processes."""


class PeerFailed(DistributedError):
    """Another process failed; rank 0 reports it, so this process stops without a message.

    (The CLI exits 0 on it, so that torchrun waits for rank 0's report instead of killing it.)
    """


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun launch (a single process: rank 0 of 1).

    Attributes:
        rank: global index of this process, 0 .. world_size - 1.
        world_size: number of processes over all nodes.
        local_rank: index of this process on its node (its GPU: cuda:local_rank).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        if default is None:
            raise DistributedError(f"WORLD_SIZE={environ.get('WORLD_SIZE')} is set but {name} is not; "
                                   "launch several processes with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not an integer (set by torchrun; check the environment)") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's place in a torchrun launch, read from the environment.

    A launch counts as distributed when ``WORLD_SIZE`` > 1; it then needs ``RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` (``LOCAL_RANK`` defaults to 0).

    Raises:
        DistributedError: malformed or incomplete variables (one line saying which).
    """
    environ = os.environ if environ is None else environ
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    if world_size < 1:
        raise DistributedError(f"WORLD_SIZE={world_size} must be at least 1")
    if world_size == 1:
        return Launch()
    rank = _env_int(environ, "RANK")
    local_rank = _env_int(environ, "LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    if local_rank < 0:
        raise DistributedError(f"LOCAL_RANK={local_rank} must be >= 0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not environ.get(name):
            raise DistributedError(f"WORLD_SIZE={world_size} is set but {name} is not; "
                                   "launch several processes with torchrun")
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of ``items``: every world_size-th item from index ``rank``.

    Round robin keeps neighbours (often similar in size, e.g. frames of one scene) on different
    ranks, so shares differ by at most one item; the shares are disjoint and cover ``items``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return list(items[rank::world_size])


class Group:
    """The processes of one run and the collectives between them.

    With one process every collective is trivial and torch.distributed is not used. Build the
    distributed one with :func:`process_group`.
    """

    def __init__(self, launch: Launch = Launch(), timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.launch = launch
        self.timeout_s = timeout_s

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    def _collective(self, run: Callable[[], T], what: str) -> T:
        try:
            return run()
        except RuntimeError as err:  # gloo/nccl timeouts and closed connections
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other processes while {what} "
                f"(waited at most {self.timeout_s:g} s; {one_line(err, typed=True)})"
            ) from err

    def all_gather(self, obj: Any, what: str = "exchanging results") -> list[Any]:
        """Every rank's ``obj``, indexed by rank, on every rank (picklable objects)."""
        if not self.launch.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        self._collective(lambda: dist.all_gather_object(gathered, obj), what)
        return gathered

    def broadcast(self, obj: Any, what: str = "sharing the plan") -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
        if not self.launch.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        self._collective(lambda: dist.broadcast_object_list(box, src=0), what)
        return box[0]

    def agree(self, error: BaseException | None, what: str) -> None:
        """Every rank says whether it failed; if one did, stop every rank.

        Rank 0 raises :class:`DistributedError` naming each failed rank and its error (or its own
        error, re-raised, if it failed itself); the other ranks raise :class:`PeerFailed` (silent:
        rank 0 speaks for them), or their own error while there is no working rank 0 to report it.
        """
        mine = None if error is None else one_line(error, typed=True)
        messages = self.all_gather(mine, what)
        failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        if not failed:
            return
        if error is not None and self.rank == 0:
            raise error
        if self.rank == 0:
            listed = "; ".join(f"rank {rank} failed while {what}: {message}" for rank, message in failed)
            raise DistributedError(listed)
        if messages[0] is not None and error is not None:
            raise error  # rank 0 failed too and reports only its own error
        raise PeerFailed(f"rank {self.rank}: stopping, " + ", ".join(f"rank {r}" for r, _ in failed) + " failed")

    def run_on_rank0(self, run: Callable[[], T], what: str) -> T:
        """``run()`` on rank 0, its result on every rank; an error there stops every rank."""
        value, error = None, None
        if self.rank == 0:
            try:
                value = run()
            except Exception as err:  # shared below, then re-raised on rank 0
                error = err
        self.agree(error, what)
        return self.broadcast(value, what)


@contextmanager
def process_group(launch: Launch, *, device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Group]:
    """The run's process group: gloo on the CPU, nccl on CUDA (this process on cuda:LOCAL_RANK).

    A single process (``launch.world_size == 1``) gets a trivial group and nothing is
    initialised. On CUDA the process's current device is set to ``cuda:LOCAL_RANK``, so "cuda"
    means that GPU for everything after.

    Args:
        launch: from :func:`detect_launch`.
        device: the device the models run on ("cpu", "cuda").
        timeout_s: how long, in seconds, a process waits for the others at any meeting point
            (start-up, sharing the plan, the end of everyone's share) before failing.
    """
    if timeout_s <= 0:
        raise DistributedError(f"the timeout must be positive, got {timeout_s:g} s")
    if not launch.distributed:
        yield Group(launch, timeout_s)
        return
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.device(device).index is not None:
            raise hinted(DistributedError, Hint("process_group", "device='cuda'", f"device {device} names one GPU, "
                                                "but each torchrun process takes its own (cuda:LOCAL_RANK); pass "))
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise DistributedError(f"LOCAL_RANK={launch.local_rank} but only {count} GPU(s) visible on this node; "
                                   "start at most that many processes per node")
        torch.cuda.set_device(launch.local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()) or (
            backend == "gloo" and not dist.is_gloo_available()):
        raise DistributedError(f"this PyTorch build has no {backend} backend for torch.distributed")
    try:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"rank {launch.rank}: could not join the other {launch.world_size - 1} process(es) "
                               f"({one_line(err, typed=True)})") from err
    try:
        yield Group(launch, timeout_s)
    finally:
        dist.destroy_process_group()
