"""What ran, where, and with which software: the pieces of ``metadata.json`` that describe the run.

Everything here is best effort: a missing tool (git, NVML) gives an empty or ``None`` field, never
an exception, because a tracking failure must not stop a training job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METADATA_SCHEMA_VERSION = 1
_GIT_TIMEOUT_S = 20.0
_VERSION_PACKAGES = (
    "torch",
    "deepspeed",
    "transformers",
    "tokenizers",
    "safetensors",
    "tensorboard",
    "wandb",
    "seo_dist",
)


# --------------------------------------------------------------------------- ranks and hosts


@dataclass(frozen=True, slots=True)
class RankInfo:
    """What each rank reports once at start (gathered to rank 0)."""

    rank: int
    local_rank: int
    host: str
    pid: int
    gpus: list[dict[str, Any]] = field(default_factory=list)
    """NVML GPUs of the node; only local rank 0 of each node fills this, so each node reports once."""


def local_rank_info(rank: int, local_rank: int, host: str) -> dict[str, Any]:
    gpus = gpu_info() if local_rank == 0 else []
    return asdict(RankInfo(rank, local_rank, host, os.getpid(), gpus))


def summarize_hosts(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"hosts": [{host, ranks, gpus}], "ranks": [...]}`` from the gathered per-rank dicts."""
    by_host: dict[str, dict[str, Any]] = {}
    for info in sorted(infos, key=lambda i: i["rank"]):
        entry = by_host.setdefault(info["host"], {"host": info["host"], "ranks": [], "gpus": []})
        entry["ranks"].append(info["rank"])
        if info.get("gpus"):
            entry["gpus"] = info["gpus"]
    ranks = [
        {k: info[k] for k in ("rank", "local_rank", "host", "pid")} for info in sorted(infos, key=lambda i: i["rank"])
    ]
    return {"hosts": list(by_host.values()), "ranks": ranks}


# --------------------------------------------------------------------------- hardware and software


def gpu_info() -> list[dict[str, Any]]:
    """GPUs of this node through NVML (nvidia-ml-py); an empty list when NVML is absent or fails."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return []
    gpus: list[dict[str, Any]] = []
    try:
        driver = _nvml_str(pynvml.nvmlSystemGetDriverVersion())
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": i,
                    "name": _nvml_str(pynvml.nvmlDeviceGetName(handle)),
                    "memory_total_bytes": int(memory.total),
                    "driver_version": driver,
                    "uuid": _nvml_str(pynvml.nvmlDeviceGetUUID(handle)),
                }
            )
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def _nvml_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def framework_versions() -> dict[str, Any]:
    """torch/CUDA/cuDNN/NCCL and library versions, without importing DeepSpeed (slow, noisy)."""
    versions: dict[str, Any] = {name: package_version(name) for name in _VERSION_PACKAGES}
    import torch  # already loaded by the job in practice; imported here for the standalone commands

    versions["torch"] = torch.__version__
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = None
    versions["nccl"] = None
    try:
        versions["cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            nccl = torch.cuda.nccl.version()
            versions["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
    except Exception:
        pass
    return versions


def system_info(hosts: dict[str, Any]) -> dict[str, Any]:
    """Python, platform, CPU, RAM, GPUs and versions of rank 0's node, plus ``hosts``/``ranks`` of the job.

    ``gpus`` is rank 0's node as reported in the gathered ``hosts`` (NVML is queried once per node).
    """
    import psutil

    gpus: list[dict[str, Any]] = next((h["gpus"] for h in hosts.get("hosts", []) if 0 in h["ranks"]), [])

    return {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": {
            "model": cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
        },
        "ram_bytes": psutil.virtual_memory().total,
        "gpus": gpus,
        "versions": framework_versions(),
        **hosts,
    }


def requirements_text() -> str:
    """``pip freeze``-like listing of the installed distributions, read with importlib.metadata (no subprocess)."""
    lines: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")  # type: ignore[attr-defined]  # [] raises KeyError on Python 3.14+
        if not name or name.lower() in lines:
            continue
        line = f"{name}=={dist.version}"
        direct = dist.read_text("direct_url.json")
        if direct:
            try:
                info = json.loads(direct)
                if info.get("dir_info", {}).get("editable"):
                    line = f"{line}  # editable install from {info.get('url')}"
            except ValueError:
                pass
        lines[name.lower()] = line
    return "".join(f"{lines[k]}\n" for k in sorted(lines))


# --------------------------------------------------------------------------- git


@dataclass(slots=True)
class GitInfo:
    root: str | None = None
    commit: str | None = None
    branch: str | None = None
    dirty: bool | None = None
    remote: str | None = None
    untracked_files: int | None = None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.decode(errors="replace")


def git_root(start: Path) -> Path | None:
    out = _git(["rev-parse", "--show-toplevel"], start)
    return Path(out.strip()) if out else None


def strip_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: a remote URL must never leak a token into metadata."""
    return re.sub(r"^(\w[\w+.-]*://)[^/@]*@", r"\1", url.strip())


def git_info(root: Path) -> GitInfo:
    info = GitInfo(root=str(root))
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], root)
    info.commit = head.strip() if head else None  # None in a repository without commits
    branch = _git(["symbolic-ref", "--short", "-q", "HEAD"], root)
    info.branch = branch.strip() if branch else ("HEAD (detached)" if info.commit else None)
    status = _git(["status", "--porcelain", "--untracked-files=all"], root)
    if status is not None:
        lines = [ln for ln in status.splitlines() if ln]
        info.untracked_files = sum(1 for ln in lines if ln.startswith("??"))
        info.dirty = any(not ln.startswith("??") for ln in lines)
    remotes = _git(["remote"], root)
    if remotes and remotes.split():
        name = "origin" if "origin" in remotes.split() else remotes.split()[0]
        url = _git(["remote", "get-url", name], root)
        info.remote = strip_credentials(url) if url else None
    return info


def git_diff(root: Path) -> str | None:
    """The uncommitted changes to tracked files, against HEAD (binary-safe patch)."""
    return _git(["diff", "HEAD", "--binary"], root)


def git_diff_without_secrets(
    root: Path, extra_patterns: tuple[str, ...] = ()
) -> tuple[str | None, list[dict[str, str]]]:
    """:func:`git_diff` without the files whose name or changed text looks like a secret; and what was dropped
    (names and reasons only)."""
    from seo_dist.tracking.secrets import SecretFilter, describe, scrub_diff

    diff = git_diff(root)
    if not diff:
        return diff, []
    kept, dropped = scrub_diff(diff, SecretFilter(extra_patterns=extra_patterns))
    return kept, describe(dropped)


# --------------------------------------------------------------------------- config hash


def hash_mapping(data: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys, no whitespace) - same rule as JobConfig.config_hash."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
