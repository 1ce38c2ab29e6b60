"""Plumbing for the chaos suite (``tests/test_chaos_*.py``): real jobs in their own sessions, waits with
deadlines, whole-tree kills, and the invariants every fault must leave intact on disk.

torchrun starts each worker in a new session, so killing torchrun's process group leaves its workers
running: :meth:`Job.kill` collects the whole tree first and signals every process group in it.
Every wait has a deadline; every job is killed (tree and all) when its ``with`` block exits.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from conftest import BIN, CONFIGS, free_port, job_env

from seo_dist.checkpoint import verify_checkpoint
from seo_dist.checkpoint.index import read_latest, scan_checkpoints
from seo_dist.checkpoint.layout import STAGING_SUFFIX, parse_step

TESTS = Path(__file__).resolve().parent

# The chaos model: tiny, with a save every few steps so that a random moment often lands in a save.
CHAOS_SETS = [
    "model.config.n_layer=2", "model.config.n_embd=64", "model.config.n_head=2", "train.warmup_steps=2",
    "train.log_interval=1", "train.eval_interval=0", "train.eval_batches=2", "train.progress_bar=false",
    "experiment.code_snapshot=false", "experiment.console=false", "experiment.wandb=disabled",
    "checkpoint.export_final=false", "checkpoint.keep_last=2",
]  # fmt: skip
STARTUP_TIMEOUT_S = 150.0
"""Launch to first training step, generous for a loaded 2-core machine (about 11 s when idle)."""
JOB_TIMEOUT_S = 240.0


# ---------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, job: Job | None = None, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s, or as soon as ``job`` ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if job is not None and job.poll() is not None:
            value = predicate()  # it may have happened just before the exit
            if value:
                return value
            raise AssertionError(f"job exited (rc {job.poll()}) before: {what}\n{job.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}\n{job.tail() if job else ''}")
        time.sleep(interval)


# ---------------------------------------------------------------------------- processes


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_tree(pids: list[int], sig: int) -> None:
    """Send ``sig`` to every process group under ``pids`` (collected first, signalled in one sweep)."""
    groups: set[int] = set()
    procs = [p for pid in pids for p in _tree(pid)]
    for p in procs:
        try:
            groups.add(os.getpgid(p.pid))
        except ProcessLookupError:
            continue
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


@dataclass
class Job:
    """One launched command (torchrun or python) in its own session; output goes to a file, never a pipe."""

    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen = field(init=False)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self.started = time.monotonic()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> int:
        """The exit code; the whole tree is killed and the test fails if it runs past ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"job still running after {timeout:.0f}s: {' '.join(self.cmd[:6])}\n{self.tail()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 5000) -> str:
        return self.output()[-chars:]

    def workers(self) -> dict[int, psutil.Process]:
        """Live worker processes by global rank (read from their environment)."""
        found: dict[int, psutil.Process] = {}
        for p in _tree(self.proc.pid)[1:]:
            try:
                rank = p.environ().get("RANK")
            except (psutil.Error, OSError):
                continue
            if rank is not None:
                found[int(rank)] = p
        return found

    def wait_for_workers(self, n: int, timeout: float = STARTUP_TIMEOUT_S) -> dict[int, psutil.Process]:
        return wait_until(lambda: (w := self.workers()) and len(w) >= n and w, timeout, f"{n} worker(s)", self)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal torchrun and every worker (each in its own session) in one sweep."""
        signal_tree([self.proc.pid], sig)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.poll() is None or _tree(self.proc.pid)[1:]:
            self.kill()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def chaos_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = job_env(cache_dir)
    for key in ("SEO_DIST_CKPT_FAULT", "SEO_DIST_CKPT_WRITE_DELAY_S"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def torchrun_args(nproc: int = 2, *extra: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--master-port", str(free_port()), *extra]


def train_command(
    base_dir: Path,
    sets: list[str] = (),
    *,
    exp_id: str | None = None,
    resume: Path | None = None,
    launcher: list[str] | None = None,
    entry: list[str] | None = None,
) -> list[str]:
    """``torchrun ... -m seo_dist.train --config tiny_cpu.yaml --set <chaos sets> ...`` (or ``--resume``)."""
    launcher = launcher if launcher is not None else torchrun_args()
    entry = entry if entry is not None else ["-m", "seo_dist.train"]
    cmd = [*launcher, *entry]
    if resume is not None:
        cmd += ["--resume", str(resume)]
        return cmd + (["--set", *sets] if sets else [])
    ident = [f"experiment.experiment_id={exp_id}"] if exp_id else []
    return cmd + ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", f"experiment.base_dir={base_dir}",
                  *CHAOS_SETS, *ident, *sets]  # fmt: skip


# ---------------------------------------------------------------------------- reading an experiment


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a last line cut short by a SIGKILL is ignored (complete lines must parse)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return rows


def events(exp_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl_tolerant(exp_dir / "logs" / "events.jsonl")


def event_names(exp_dir: Path) -> list[str]:
    return [e["event"] for e in events(exp_dir)]


def metadata(exp_dir: Path) -> dict[str, Any]:
    return json.loads((exp_dir / "metadata.json").read_text())


def loss_rows(exp_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_jsonl_tolerant(exp_dir / "metrics" / "metrics.jsonl") if "train/loss" in r]


def last_logged_step(exp_dir: Path) -> int:
    rows = loss_rows(exp_dir)
    return rows[-1]["step"] if rows else 0


def in_flight(ckpt_root: Path) -> list[str]:
    """Staging folders of saves being written now."""
    if not ckpt_root.is_dir():
        return []
    return [p.name for p in ckpt_root.iterdir() if p.name.endswith(STAGING_SUFFIX) and p.name.startswith("step_")]


@dataclass
class DiskState:
    """What a checkpoints root holds, checked against the commit protocol's promises."""

    committed: list[str]
    latest: str | None
    staging: list[str]
    invalid: dict[str, str]
    """Committed folders (manifest present) that fail full verification, with the reason."""

    @property
    def newest_step(self) -> int:
        steps = [parse_step(n) for n in self.committed]
        return max((s for s in steps if s is not None), default=0)

    def problems(self) -> list[str]:
        """Broken promises: a committed folder that does not verify, or ``latest`` naming a partial folder."""
        out = [f"{name} is committed but invalid: {why}" for name, why in self.invalid.items()]
        if self.latest is not None and self.latest not in self.committed:
            out.append(f"latest names {self.latest}, which is not a committed checkpoint")
        if self.committed and self.latest is None:
            out.append("checkpoints are committed but latest is missing")
        return out


def disk_state(ckpt_root: Path) -> DiskState:
    scan = scan_checkpoints(ckpt_root) if ckpt_root.is_dir() else None
    committed = [i.name for i in scan.committed] if scan else []
    invalid = {}
    for name in committed:
        report = verify_checkpoint(ckpt_root / name, "full")
        if not report.ok:
            invalid[name] = report.summary()
    return DiskState(committed, read_latest(ckpt_root), in_flight(ckpt_root), invalid)


# ---------------------------------------------------------------------------- attempts on one experiment

WRITE_DELAY_S = "0.25"
"""Slow checkpoint writes during kill trials (per file, in the background writer): saves overlap training."""
SURVIVOR_BOUND_S = 90.0
"""A rank or node that loses its peer must exit by itself within this long (gloo sees the closed connection)."""


@dataclass
class Attempt:
    """One start of the job: a single torchrun with 2 ranks, or two torchrun "nodes" with one rank each."""

    jobs: list[Job]
    started_step: int
    """The newest committed checkpoint when this attempt started: what a resume must load."""
    started_state: DiskState
    first_event: int
    """Index of this attempt's first line in events.jsonl."""
    moment: str = ""
    killed_at: float = 0.0

    @property
    def lead(self) -> Job:
        return self.jobs[0]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        signal_tree([j.proc.pid for j in self.jobs], sig)
        self.killed_at = time.monotonic()

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        return [j.wait(max(1.0, deadline - time.monotonic())) for j in self.jobs]

    def running(self) -> bool:
        return any(j.poll() is None for j in self.jobs)

    def workers(self) -> dict[int, psutil.Process]:
        return {rank: p for job in self.jobs for rank, p in job.workers().items()}

    def tail(self) -> str:
        return "\n".join(j.tail(3000) for j in self.jobs)

    def close(self) -> None:
        for j in self.jobs:
            j.__exit__()


@dataclass
class Chain:
    """Attempts on one experiment: a fresh start, then ``--resume`` after every fault."""

    tmp: Path
    cache: Path
    exp_id: str
    sets: list[str]
    attempts: list[Attempt] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base(self) -> Path:
        return self.tmp / "experiments"

    @property
    def exp_dir(self) -> Path:
        return self.base / self.exp_id

    @property
    def ckpt_root(self) -> Path:
        return self.exp_dir / "checkpoints"

    def resumable(self) -> bool:
        return (self.exp_dir / "metadata.json").is_file() or self.ckpt_root.is_dir()

    def start(
        self,
        *,
        topology: str = "single",
        slow_writes: bool = False,
        env: dict[str, str] | None = None,
        resume_sets: list[str] = (),
        torchrun_extra: list[str] = (),
        entry: list[str] | None = None,
    ) -> Attempt:
        """Start an attempt: ``--resume`` when the experiment exists, else a fresh start with the chain's sets.
        ``topology``: ``single`` (one torchrun, 2 ranks) or ``nodes`` (two torchrun "nodes" on loopback)."""
        env = dict(env) if env is not None else chaos_env(self.cache)
        if slow_writes:
            env["SEO_DIST_CKPT_WRITE_DELAY_S"] = WRITE_DELAY_S
        resume = self.exp_dir if self.resumable() else None
        sets = list(resume_sets) if resume is not None else self.sets
        started = disk_state(self.ckpt_root)
        first_event = len(events(self.exp_dir))
        n = len(self.attempts)
        log = self.tmp / "logs" / f"{self.exp_id}_{n}"
        if topology == "single":
            launcher = torchrun_args(2, *torchrun_extra)
            cmd = train_command(self.base, sets, exp_id=self.exp_id, resume=resume, launcher=launcher, entry=entry)
            jobs = [Job(cmd, self.tmp, env, log.with_suffix(".log"))]
        else:
            launcher = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", f"{self.exp_id}-{n}",
                        "--max-restarts", "0", *torchrun_extra]  # fmt: skip
            cmd = train_command(self.base, sets, exp_id=self.exp_id, resume=resume, launcher=launcher, entry=entry)
            jobs = [Job(cmd, self.tmp, env, Path(f"{log}_node{i}.log")) for i in range(2)]
        attempt = Attempt(jobs, started_step=started.newest_step, started_state=started, first_event=first_event)
        self.attempts.append(attempt)
        return attempt

    def events_of(self, attempt: Attempt) -> list[dict[str, Any]]:
        evs = events(self.exp_dir)
        i = self.attempts.index(attempt)
        end = self.attempts[i + 1].first_event if i + 1 < len(self.attempts) else len(evs)
        return evs[attempt.first_event : end]

    def loads(self) -> list[tuple[Attempt, dict[str, Any]]]:
        """``(attempt, its first checkpoint_loaded event)`` for each attempt that loaded one."""
        out = []
        for attempt in self.attempts:
            loaded = [e for e in self.events_of(attempt) if e["event"] == "checkpoint_loaded"]
            if loaded:
                out.append((attempt, loaded[0]))
        return out

    def wait_until_training(self, attempt: Attempt) -> None:
        """Until this attempt has started (a resume has dropped the rows logged after its checkpoint by then)."""
        begun = {"start", "resumed", "resume_without_checkpoint"}
        wait_until(lambda: any(e["event"] in begun for e in self.events_of(attempt)), STARTUP_TIMEOUT_S,
                   "the attempt to start training", attempt.lead)  # fmt: skip

    def wait_for_moment(
        self, attempt: Attempt, rng: random.Random, max_steps: int, kind: str | None = None, after_commit: bool = False
    ) -> str:
        """Block until a seeded random moment: during startup, at a training step, or while a save is in flight
        (``after_commit``: not before this attempt has committed a checkpoint of its own)."""
        kind = kind or rng.choice(["startup", "step", "save", "save"])
        lead = attempt.lead
        if kind == "startup":
            delay = rng.uniform(2.0, 9.0)
            wait_until(lambda: time.monotonic() - lead.started > delay, delay + 5, "startup moment", None)
            if not attempt.running():
                raise AssertionError(f"job ended during startup:\n{attempt.tail()}")
            return f"startup+{delay:.1f}s"
        self.wait_until_training(attempt)
        if after_commit:
            wait_until(lambda: disk_state(self.ckpt_root).newest_step > attempt.started_step, STARTUP_TIMEOUT_S,
                       "a commit by this attempt", lead)  # fmt: skip
        target = min(attempt.started_step + rng.randint(1, 10), max_steps - 2)
        wait_until(lambda: last_logged_step(self.exp_dir) >= target, STARTUP_TIMEOUT_S, f"step {target}", lead)
        if kind == "save":
            wait_until(lambda: in_flight(self.ckpt_root), 60, "a save in flight", lead)
            time.sleep(rng.uniform(0.0, 0.3))
            return f"save in flight after step {target}"
        time.sleep(rng.uniform(0.0, 0.3))
        return f"step {target}"

    def kill_trial(
        self, rng: random.Random, max_steps: int, *, topology: str = "single", lose: str | None = None,
        kind: str | None = None, after_commit: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """An attempt with slow writes, killed at a random moment: the whole job (``lose=None``), or only the
        "node" holding rank ``lose`` ("0"/"1", topology ``nodes``). Returns what was on disk right after."""
        attempt = self.start(topology=topology, slow_writes=True)
        try:
            attempt.moment = self.wait_for_moment(attempt, rng, max_steps, kind, after_commit)
            if lose is None:
                attempt.kill()
                rcs = attempt.wait(60)
            else:
                rcs = self._lose_a_node(attempt, int(lose))
        finally:
            attempt.close()
        trial = {"moment": attempt.moment, "rcs": rcs, "state": disk_state(self.ckpt_root),
                 "exit_s": time.monotonic() - attempt.killed_at, "attempt": attempt}  # fmt: skip
        self.trials.append(trial)
        return trial

    def _lose_a_node(self, attempt: Attempt, rank: int) -> list[int]:
        """SIGKILL the torchrun "node" (agent and worker) holding ``rank``; the other one must exit by itself."""
        victim = next(i for i, job in enumerate(attempt.jobs) if rank in job.workers())
        signal_tree([attempt.jobs[victim].proc.pid], signal.SIGKILL)
        attempt.killed_at = time.monotonic()
        survivor = attempt.jobs[1 - victim]
        try:
            survivor.proc.wait(timeout=SURVIVOR_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the surviving node still runs {SURVIVOR_BOUND_S:.0f}s after its peer died:\n"
                                 f"{survivor.tail()}") from None  # fmt: skip
        attempt.moment += f"; node of rank {rank} lost"
        return attempt.wait(60)

    def finish(self, **start_kwargs: Any) -> Attempt:
        attempt = self.start(**start_kwargs)
        try:
            rcs = attempt.wait()
        finally:
            attempt.close()
        assert rcs == [0] * len(attempt.jobs), attempt.tail()
        return attempt


def restart_losses(chain: Chain) -> int:
    """Each start loaded the newest checkpoint committed before it, without a fallback; returns the steps of
    committed progress a restart did not get back (must be 0)."""
    lost = 0
    for attempt, event in chain.loads():
        assert event["fell_back_from"] == [], event
        missed = max(0, attempt.started_step - event["step"])
        if missed:
            print(
                f"attempt {chain.attempts.index(attempt)} loaded step {event['step']} but {attempt.started_step} was "
                f"committed; on disk at its start: {attempt.started_state}"
            )  # shown with a failing test
        lost += missed
    return lost


def check_steps_logged_once(exp_dir: Path, last: int | None = None) -> list[int]:
    """Every training step in metrics.jsonl exactly once, 1..last, across all restarts."""
    steps = [r["step"] for r in loss_rows(exp_dir)]
    assert steps == list(range(1, len(steps) + 1)), f"steps logged: {steps}"
    if last is not None:
        assert steps[-1] == last, (steps[-1], last)
    return steps
