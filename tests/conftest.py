"""Shared test plumbing: real jobs in subprocesses (torchrun, the deepspeed launcher, plain python).

Runs are expensive (a DeepSpeed start costs seconds on 2 cores), so fixtures that launch a job are
session-scoped and several tests read the same run's outputs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PYTHON = sys.executable
BIN = Path(PYTHON).parent

# Small and fast: enough steps for the loss to fall clearly, few validation batches.
FAST = [
    "train.max_steps=16",
    "train.lr=3e-3",
    "train.log_interval=4",
    "train.eval_interval=8",
    "train.eval_batches=4",
    "train.warmup_steps=2",
    "train.progress_bar=false",
    "model.config.n_layer=2",
    "model.config.n_embd=64",
    "model.config.n_head=2",
]

FINAL_LINE = re.compile(r"seo_dist: (\w+) at step (\d+); val/loss ([\d.]+) -> ([\d.]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SEO_DIST_CACHE": str(cache_dir),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class JobRun:
    proc: subprocess.CompletedProcess
    base_dir: Path

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def final(self) -> tuple[str, int, float, float]:
        m = FINAL_LINE.search(self.proc.stdout)
        assert m, f"no final line in output:\n{self.output[-4000:]}"
        return m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))

    def exp_dirs(self) -> list[Path]:
        return sorted(p for p in self.base_dir.iterdir() if p.is_dir()) if self.base_dir.exists() else []


def launcher_cmd(launcher: str, nproc: int) -> list[str]:
    if launcher == "python":
        return [PYTHON, "-m", "seo_dist.train"]
    if launcher == "torchrun":
        return [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(free_port()),
            "-m",
            "seo_dist.train",
        ]
    if launcher == "deepspeed":
        return [
            str(BIN / "deepspeed"),
            "--num_accelerators",
            str(nproc),
            "--master_port",
            str(free_port()),
            "--module",
            "seo_dist.train",
        ]
    raise ValueError(launcher)


def run_job(
    tmp: Path,
    cache: Path,
    *,
    launcher: str = "torchrun",
    nproc: int = 2,
    config: str = "tiny_cpu.yaml",
    overrides: list[str] = (),
    extra: list[str] = (),
    timeout: float = 300,
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> JobRun:
    """Run one training job in a subprocess; experiments go under ``tmp/experiments``; ``env`` is added to the
    job's environment."""
    base = tmp / "experiments"
    sets = [f"experiment.base_dir={base}", *overrides]
    if name:
        sets.append(f"experiment.experiment_id={name}")
    cmd = [*launcher_cmd(launcher, nproc), "--config", str(CONFIGS / config), "--set", *sets, *extra]
    proc = subprocess.run(
        cmd, cwd=tmp, env={**job_env(cache), **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    return JobRun(proc=proc, base_dir=base)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenizer cache for the whole session (the tokenizer is trained once)."""
    return tmp_path_factory.mktemp("seo_dist_cache")
