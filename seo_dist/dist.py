"""Distributed plumbing: the only module that reads the launcher's rank variables.

Works the same under ``torchrun`` (single or multi node), the ``deepspeed`` launcher
(which appends ``--local_rank=N`` to the command line) and a plain ``python`` process,
where world size 1 runs with no process group at all.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")

_LOCAL_RANK_FROM_ARGV: int | None = None


@dataclass(frozen=True, slots=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    launcher: str

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def strip_local_rank_arg(argv: list[str]) -> list[str]:
    """Remove ``--local_rank=N`` / ``--local-rank N`` (appended by the deepspeed launcher).

    The value is remembered and used when ``LOCAL_RANK`` is not in the environment.
    """
    global _LOCAL_RANK_FROM_ARGV
    out: list[str] = []
    skip_next = False
    for i, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        for flag in ("--local_rank", "--local-rank"):
            if arg == flag and i + 1 < len(argv):
                _LOCAL_RANK_FROM_ARGV = int(argv[i + 1])
                skip_next = True
                break
            if arg.startswith(flag + "="):
                _LOCAL_RANK_FROM_ARGV = int(arg.split("=", 1)[1])
                break
        else:
            out.append(arg)
    return out


def _detect_launcher() -> str:
    env = os.environ
    if "CROSS_RANK" in env or _LOCAL_RANK_FROM_ARGV is not None:
        return "deepspeed"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "RANK" in env:
        return "slurm"
    if "RANK" in env:
        return "env"
    return "none"


def get_dist_info() -> DistInfo:
    """Rank, local rank and world size from the launcher's environment (defaults: one process)."""
    env = os.environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank_default = _LOCAL_RANK_FROM_ARGV if _LOCAL_RANK_FROM_ARGV is not None else 0
    local_rank = int(env.get("LOCAL_RANK", str(local_rank_default)))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    return DistInfo(rank, local_rank, world_size, local_world_size, _detect_launcher())


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this job's workers (``--max-restarts``); 0 on the first attempt."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def launch_id() -> str | None:
    """The torchrun agent that started this worker and restarts it after a failure, as ``host:pid:start time``.

    The same across restarts of one job and never reused by another, so a restarted worker can find the
    experiment of the previous attempt. None when not under torchrun.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    import psutil

    try:
        agent = psutil.Process(os.getppid())
        return f"{hostname()}:{agent.pid}:{agent.create_time():.3f}"
    except (psutil.Error, OSError):
        return None


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_initialized() else get_dist_info().rank


def get_world_size() -> int:
    return tdist.get_world_size() if is_initialized() else get_dist_info().world_size


def is_rank_zero() -> bool:
    return get_rank() == 0


def get_device() -> torch.device:
    """``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_dist_info().local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Initialise the default process group (nccl on CUDA, gloo on CPU) when world size > 1.

    World size 1 creates no process group; every helper below then acts locally.
    """
    info = get_dist_info()
    if info.world_size > 1 and not is_initialized():
        device = get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        attempt = elastic_restart_count()
        if attempt > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun keeps one store (its agent's) for every attempt, so a restarted worker would read the
            # addresses the failed attempt's ranks published there and connect to dead ports (gloo
            # "connectFullMesh failed: Connection refused", then a hang; pytorch#167288). Each attempt gets
            # its own namespace in that store.
            agent_store = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
                                         is_master=False, timeout=timeout)  # fmt: skip
            store = tdist.PrefixStore(f"seo_dist/attempt_{attempt}", agent_store)
            tdist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size,
                                     timeout=timeout)  # fmt: skip
        else:
            tdist.init_process_group(backend=backend, timeout=timeout)
    return info


def set_collective_timeout(timeout_s: float) -> bool:
    """Change the default process group's collective timeout (a long one for start-up, a shorter one once
    training runs); False where there is no group or this torch cannot change it."""
    if not is_initialized():
        return False
    try:
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(datetime.timedelta(seconds=timeout_s))
    except Exception:  # noqa: BLE001 - an older torch, or a backend without a settable timeout
        return False
    return True


def ensure_process_group() -> None:
    """Make sure a default process group exists, for libraries that insist on one (DeepSpeed).

    At world size 1 with no launcher this is a one-rank group on an in-memory store: no port, no
    environment variables, so several single-process jobs can run side by side.
    """
    if is_initialized():
        return
    info = init_distributed()
    if info.world_size == 1 and not is_initialized():
        # DeepSpeed's engine reads these even for one process; describe the one-rank world for it.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", str(info.local_rank)), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        backend = "nccl" if get_device().type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, store=tdist.HashStore(), rank=0, world_size=1)


def cleanup() -> None:
    if is_initialized():
        tdist.destroy_process_group()


def barrier(group: Any = None) -> None:
    if is_initialized():
        tdist.barrier(group=group)


def new_gloo_group() -> Any:
    """A separate gloo group (for work that must not share the training group), or None at world size 1."""
    if not is_initialized():
        return None
    return tdist.new_group(backend="gloo")


def broadcast_object(obj: T, src: int = 0, group: Any = None) -> T:
    """Rank ``src``'s value of ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_object(obj: T, group: Any = None) -> list[T]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size(group)
    tdist.all_gather_object(out, obj, group=group)
    return out


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a short list of floats over all ranks (float64 on the CPU/GPU device)."""
    if not is_initialized():
        return list(values)
    device = get_device() if tdist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def hostname() -> str:
    return socket.gethostname()
