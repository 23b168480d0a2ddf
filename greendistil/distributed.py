"""torchrun and DistributedDataParallel: who this process is, and the few collectives greendistil needs.

torchrun starts one process per device and tells each who it is through the environment: RANK and
WORLD_SIZE (global), LOCAL_RANK and LOCAL_WORLD_SIZE (on this node), GROUP_RANK (the node). Without those
variables greendistil is one process and nothing here talks to anyone (`SINGLE`).

Roles that follow from the identity:
- rank 0 (`is_main`) creates the run directory and writes the run log, checkpoints and models;
- local rank 0 of each node (`is_node_leader`) measures the node's CPU and RAM with codecarbon, once;
- every rank measures its own GPU with NVML (device LOCAL_RANK, mapped through CUDA_VISIBLE_DEVICES).

Measurements and predictions are gathered as Python objects over a separate gloo group with its own
timeout, so they work the same under nccl (GPU) and gloo (CPU) and a dead peer gives an error, not a hang.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Mapping, TypeVar

import torch
import torch.distributed as torch_dist

from greendistil.errors import ConfigError, GreendistilError, StageError

logger = logging.getLogger(__name__)
T = TypeVar("T")

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
BACKENDS = ("auto", "gloo", "nccl")
# Readings and dev-set predictions are small and the ranks reach them together (after the stage's last
# collective); a peer that has not answered by then is gone, and the record is written with what this rank has.
GATHER_TIMEOUT_S = 120
RANK_SEED_STRIDE = 1_000_003  # a prime far from the small offsets (seed + stage index) runs already use
_gather_group: Any = None  # gloo group for readings and predictions (short timeout), made by `init`
_control_group: Any = None  # gloo group for rank 0's verdicts (`agree`), with the run's long timeout


@dataclass(frozen=True, kw_only=True)
class Dist:
    """This process's place in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    backend: str | None = None  # the process group's backend; None: no process group
    hostname: str = field(default_factory=socket.gethostname)

    @property
    def enabled(self) -> bool:
        """Several processes: DDP and the collectives below are active."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one writer of the run directory."""
        return self.rank == 0

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: measures its node's CPU and RAM."""
        return self.local_rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    def identity(self) -> dict[str, Any]:
        """rank, local_rank, node_rank, hostname: how a reading names the process that took it."""
        return {"rank": self.rank, "local_rank": self.local_rank, "node_rank": self.node_rank,
                "hostname": self.hostname}


SINGLE = Dist()


def from_env(env: Mapping[str, str]) -> Dist:
    """The identity torchrun put in `env`; `SINGLE` when WORLD_SIZE is absent. Raises ConfigError on
    values torchrun would never set (a rank outside the world, a non-integer)."""
    if "WORLD_SIZE" not in env:
        return SINGLE
    values = {}
    for key in ENV_KEYS:
        raw = env.get(key, "0" if key in ("RANK", "LOCAL_RANK", "GROUP_RANK") else env["WORLD_SIZE"])
        try:
            values[key] = int(raw)
        except ValueError:
            raise ConfigError(f"environment: {key}={raw!r} is not an integer; launch with torchrun, which sets "
                              f"{', '.join(ENV_KEYS)}") from None
    world, rank, local_world, local = (values["WORLD_SIZE"], values["RANK"], values["LOCAL_WORLD_SIZE"],
                                       values["LOCAL_RANK"])
    if world < 1 or not 0 <= rank < world or local_world < 1 or not 0 <= local < local_world:
        raise ConfigError(f"environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}, "
                          f"LOCAL_WORLD_SIZE={local_world} are inconsistent; need 0 <= RANK < WORLD_SIZE and "
                          "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE (launch with torchrun)")
    return Dist(rank=rank, world_size=world, local_rank=local, local_world_size=local_world,
                node_rank=values["GROUP_RANK"])


def choose_backend(choice: str, cuda_available: bool) -> str:
    """nccl between GPUs, gloo between CPU processes; an explicit choice must fit the hardware."""
    if choice not in BACKENDS:
        raise ConfigError(f"run.ddp_backend: {choice!r} is not a backend; valid: {', '.join(BACKENDS)}")
    if choice == "auto":
        return "nccl" if cuda_available else "gloo"
    if choice == "nccl" and not cuda_available:
        raise ConfigError("run.ddp_backend: 'nccl' needs CUDA GPUs and none is visible; use 'gloo' (or 'auto') "
                          "for CPU processes")
    return choice


def init(backend_choice: str = "auto", timeout_s: float = 3600.0, device_choice: str = "auto") -> Dist:
    """Join the torchrun job described by the environment (a no-op for a single process).

    Each rank computes on GPU LOCAL_RANK when CUDA is available, unless `device_choice` (`run.device`) is
    "cpu": then the ranks are CPU processes (gloo) even on a GPU host. `timeout_s` bounds every collective of
    the training itself (a rank waiting at a barrier while rank 0 runs a benchmark stage alone).
    """
    global _gather_group, _control_group
    me = from_env(os.environ)
    if not me.enabled:
        return me
    cuda = torch.cuda.is_available() and device_choice != "cpu"
    backend = choose_backend(backend_choice, cuda)
    if cuda:
        if me.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={me.local_rank} but this node shows {torch.cuda.device_count()} GPU(s) "
                              "(CUDA_VISIBLE_DEVICES); start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(me.local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _gather_group = torch_dist.new_group(backend="gloo", timeout=timedelta(seconds=GATHER_TIMEOUT_S))
    _control_group = torch_dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    logger.info("DDP: rank %d of %d (local %d of %d, node %d), backend %s", me.rank, me.world_size,
                me.local_rank, me.local_world_size, me.node_rank, backend)
    return replace(me, backend=backend)


def shutdown(me: Dist) -> None:
    """Leave the process group (at the end of a run, however it ended). Never raises."""
    global _gather_group, _control_group
    if me.enabled and torch_dist.is_initialized():
        try:
            torch_dist.destroy_process_group()
        except Exception as err:
            logger.warning("destroy_process_group failed: %s", err)
    _gather_group = _control_group = None


@contextmanager
def joined(backend_choice: str = "auto", device_choice: str = "auto") -> Iterator[Dist]:
    """This process's place in the torchrun job for the length of a run (a single process outside one)."""
    me = init(backend_choice, device_choice=device_choice)
    try:
        yield me
    finally:
        shutdown(me)


def agree(me: Dist, work: Callable[[], T], *, what: str, error_type: type[Exception] = StageError) -> T | None:
    """Run `work` on rank 0 alone while the other ranks wait for its verdict (over gloo, on the CPU), so
    that a failure on rank 0 stops every rank instead of leaving them at a barrier. Returns `work`'s result
    on rank 0, None elsewhere; the other ranks raise `error_type` when rank 0 failed (with rank 0's message
    when that was a user-facing GreendistilError)."""
    if not me.enabled:
        return work()
    if me.is_main:
        try:
            result = work()
        except BaseException as err:
            user_facing = isinstance(err, GreendistilError)
            _verdict(me, str(err) if user_facing else f"{what} failed on rank 0: {type(err).__name__}: {err}")
            raise
        _verdict(me, None)
        return result
    failure = _verdict(me, None)
    if failure is not None:
        raise error_type(failure)
    return None


def _verdict(me: Dist, failure: str | None) -> str | None:
    box = [failure if me.is_main else None]
    torch_dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


def all_finite(me: Dist, value: float, on: torch.device) -> bool:
    """Whether `value` is finite on every rank: a NaN loss on one rank must stop all of them at the same
    step, or the others would wait for it in the next gradient all-reduce. `on`: the training device."""
    finite = math.isfinite(value)
    if not me.enabled:
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=on)
    torch_dist.all_reduce(flag)
    return bool(flag.item() == 0.0)


def device(me: Dist, choice: str = "auto") -> torch.device:
    """The device this process computes on (`run.device`): "auto" its own GPU when torch sees one, else the
    CPU; "cpu" the CPU even on a GPU host; "cuda" its own GPU, refused by name where there is none."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: 'cuda' but torch sees no GPU here; use 'auto' or 'cpu'")
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", me.local_rank if me.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(me: Dist, obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not me.enabled:
        return obj
    box = [obj if me.is_main else None]
    torch_dist.broadcast_object_list(box, src=0, group=_gather_group)
    return box[0]


def gather(me: Dist, obj: T) -> list[T] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere). Raises if a peer does not answer
    within GATHER_TIMEOUT_S."""
    if not me.enabled:
        return [obj]
    out: list[Any] | None = [None] * me.world_size if me.is_main else None
    torch_dist.gather_object(obj, out, dst=0, group=_gather_group)
    return out


def all_gather(me: Dist, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not me.enabled:
        return [obj]
    out: list[Any] = [None] * me.world_size
    torch_dist.all_gather_object(out, obj, group=_gather_group)
    return out


def wrap(me: Dist, model: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
    """`model` in DistributedDataParallel when there are several ranks (gradients averaged over ranks in
    backward), else `model` itself. DDP copies rank 0's weights to every rank when it wraps.

    After wrapping, ranks > 0 reseed torch's RNG (seed + rank): the weights are already equal, and each
    rank's dropout must differ from its neighbours'; rank 0 keeps the single-process stream.
    `find_unused_parameters`: some trainable weights get no gradient in a step (e.g. a distillation loss
    without the classifier's terms); DDP then has to look for them after every forward.
    """
    if not me.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [me.local_rank] if next(model.parameters()).is_cuda else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if me.rank:
        torch.manual_seed(rank_seed(me, torch.initial_seed()))
    return wrapped


def rank_seed(me: Dist, seed: int) -> int:
    """`seed` on rank 0 (the single-process stream) and a distinct seed on every other rank."""
    return seed + RANK_SEED_STRIDE * me.rank
