"""Checkpoint test job: a tiny tied-embedding LM on real DeepSpeed ZeRO (CPU, gloo), run under torchrun
by tests/test_checkpoint_deepspeed.py. Each mode writes its evidence (state snapshots per rank, losses,
events, errors) under OUT for the test to check.

    torchrun --nproc-per-node 2 tests/ckpt_job.py roundtrip OUT --stages 1,2,3
    torchrun --nproc-per-node 2 tests/ckpt_job.py crash OUT
    torchrun --nproc-per-node 2 tests/ckpt_job.py resume OUT
    torchrun --nproc-per-node 1 tests/ckpt_job.py worldsize OUT        (loads the 2-rank ZeRO-2 run: a reshard)
    torchrun --nproc-per-node 2 tests/ckpt_job.py async OUT --stages 2,3   (test_checkpoint_async.py)
    torchrun --nproc-per-node 2 tests/ckpt_job.py async_kill OUT           (runs until the test kills it)
    torchrun --nproc-per-node 2 tests/ckpt_job.py async_resume OUT

Fault injection: the crash mode wraps library functions from here; the async modes, whose writes run on
the background thread, use the environment variables of seo_dist.checkpoint.faults.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.nn.functional as F

from seo_dist import dist
from seo_dist.checkpoint import CheckpointManager, CheckpointStrategy
from seo_dist.checkpoint import commit as commit_module
from seo_dist.checkpoint.deepspeed_backend import HashingCheckpointEngine
from seo_dist.checkpoint.errors import CheckpointSaveError, IncompatibleCheckpointError
from seo_dist.checkpoint.faults import COPY_DELAY_ENV, DELAY_ENV, FAULT_ENV
from seo_dist.checkpoint.index import read_latest
from seo_dist.checkpoint.layout import checkpoint_name, staging_name

VOCAB, DIM, HIDDEN, MB, SEQ = 64, 32, 64, 2, 8
VAL_LOSS = {2: 1.0, 4: 3.0, 6: 2.5, 8: 2.0}  # step 2 is the best; retention keep_last=2 must still keep it
WRITE_DELAY_S = 1.0  # async modes: the background writer sleeps this long before each file it writes


class TinyLM(torch.nn.Module):
    """Embedding tied to the output head (like GPT-2), an MLP block with dropout (RNG state matters), a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.fc1 = torch.nn.Linear(DIM, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, DIM)
        self.drop = torch.nn.Dropout(0.2)
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        torch.nn.init.normal_(self.emb.weight, std=0.1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.fc2(self.drop(F.gelu(self.fc1(h))))
        return F.cross_entropy(self.head(self.norm(h)).flatten(0, 1), y.flatten())


def build_engine(stage: int, seed: int) -> Any:
    torch.manual_seed(seed)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))
    world = dist.get_world_size()
    config = {
        "train_micro_batch_size_per_gpu": MB,
        "gradient_accumulation_steps": 1,
        "train_batch_size": MB * world,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)
    return engine


def train_step(engine: Any, step: int) -> float:
    g = torch.Generator().manual_seed(10_000 * step + dist.get_rank())
    data = torch.randint(VOCAB, (MB, SEQ + 1), generator=g)
    engine.train()
    loss = engine(data[:, :-1], data[:, 1:])
    engine.backward(loss)
    engine.step()
    return loss.item()


def snapshot(engine: Any, stage: int) -> dict[str, Any]:
    """This rank's optimizer state (its ZeRO partition), the full module state, LR scheduler and step counter."""
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            module = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    else:
        module = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    return {
        "optimizer": engine.optimizer.state_dict(),
        "module": module,
        "lr_scheduler": engine.lr_scheduler.state_dict(),
        "global_steps": engine.global_steps,
        "torch_rng": torch.get_rng_state(),
    }


def dump(out: Path, name: str, obj: Any) -> None:
    torch.save(obj, out / f"{name}_rank{dist.get_rank()}.pt")


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


def make_manager(root: Path, events: list, **kwargs: Any) -> CheckpointManager:
    strategy = kwargs.pop("strategy", CheckpointStrategy(save_interval=2, max_checkpoints=2, keep_best=1))
    return CheckpointManager(root, strategy, event_fn=lambda name, **f: events.append({"event": name, **f}), **kwargs)


def roundtrip(out: Path, stage: int) -> None:
    """A: train 8 steps, save at 2/4/6/8. B: a fresh engine loads step 6 through the manager and trains 7-8.
    C: a fresh engine loads with DeepSpeed's own load_checkpoint (tag from our ``latest``)."""
    out = out / f"zero{stage}"
    out.mkdir(parents=True, exist_ok=True)
    root = out / "checkpoints"
    events: list = []
    rank = dist.get_rank()

    engine = build_engine(stage, seed=0)
    mgr = make_manager(root, events, config_hash="hash-a", config={"train": {"lr": 0.01}, "zero": stage})
    mgr.sweep_abandoned()
    losses_a = {}
    for step in range(1, 9):
        losses_a[step] = train_step(engine, step)
        if mgr.should_save(step):
            mgr.save_checkpoint(
                engine,
                step=step,
                metrics={"val/loss": VAL_LOSS[step], "train/loss": losses_a[step]},
                epoch=step // 4,
                rank_state={"data_step": step, "rank": rank},
            )
            if step in (6, 8):
                dump(out, f"A{step}", snapshot(engine, stage))
    del engine

    engine_b = build_engine(stage, seed=123)
    mgr_b = make_manager(root, events, config_hash="hash-b", config={"train": {"lr": 0.02}, "zero": stage})
    loaded = mgr_b.load_checkpoint(root / "step_00000006", engine_b)
    dump(out, "B_loaded", snapshot(engine_b, stage))
    losses_b = {step: train_step(engine_b, step) for step in (7, 8)}
    del engine_b

    engine_c = build_engine(stage, seed=456)
    load_path, _ = engine_c.load_checkpoint(str(root))  # DeepSpeed reads our `latest` and our files
    dump(out, "C_loaded", snapshot(engine_c, stage))
    write_json(
        out / f"result_rank{rank}.json",
        {
            "losses_a": losses_a,
            "losses_b": losses_b,
            "loaded_name": loaded["name"],
            "loaded_step": loaded["step"],
            "rank_state": loaded["rank_state"],
            "config_changed_keys": loaded["config_changed_keys"],
            "fell_back_from": loaded["fell_back_from"],
            "ds_load_path": load_path,
        },
    )
    if rank == 0:
        write_json(out / "events.json", events)


def crash(out: Path) -> None:
    """Save 1 commits; save 2 fails in rank 0's manifest write; save 3 fails in a rank-1 shard write;
    save 4: rank 1 SIGKILLs itself after writing its first file."""
    out.mkdir(parents=True, exist_ok=True)
    root = out / "checkpoints"
    rank = dist.get_rank()
    events: list = []
    engine = build_engine(2, seed=0)
    mgr = make_manager(root, events, strategy=CheckpointStrategy(save_interval=1, max_checkpoints=3))
    mgr.sweep_abandoned()
    outcomes = {}

    train_step(engine, 1)
    mgr.save_checkpoint(engine, step=1, rank_state={"data_step": 1})
    dump(out, "crash1", snapshot(engine, 2))

    original_write_manifest = commit_module.write_manifest

    def failing_manifest(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    train_step(engine, 2)
    commit_module.write_manifest = failing_manifest
    try:
        mgr.save_checkpoint(engine, step=2, rank_state={"data_step": 2})
        outcomes[2] = "committed"
    except CheckpointSaveError as e:
        outcomes[2] = f"CheckpointSaveError: {e}"
    finally:
        commit_module.write_manifest = original_write_manifest

    original_write_file = HashingCheckpointEngine.write_file

    def failing_write(self: Any, state_dict: Any, folder: Path, relpath: str) -> Any:
        if rank == 1 and "optim_states" in relpath:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return original_write_file(self, state_dict, folder, relpath)

    train_step(engine, 3)
    HashingCheckpointEngine.write_file = failing_write
    try:
        mgr.save_checkpoint(engine, step=3, rank_state={"data_step": 3})
        outcomes[3] = "committed"
    except CheckpointSaveError as e:
        outcomes[3] = f"CheckpointSaveError: {e}"
    finally:
        HashingCheckpointEngine.write_file = original_write_file

    write_json(out / f"outcomes_rank{rank}.json", outcomes)
    if rank == 0:
        write_json(out / "events.json", events)

    def dying_write(self: Any, state_dict: Any, folder: Path, relpath: str) -> Any:
        record = original_write_file(self, state_dict, folder, relpath)
        if rank == 1:
            (out / "killed_after.txt").write_text(relpath)
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    train_step(engine, 4)
    HashingCheckpointEngine.write_file = dying_write
    mgr.save_checkpoint(engine, step=4, rank_state={"data_step": 4})
    (out / f"survived_rank{rank}.txt").write_text("the kill did not happen")


def resume(out: Path) -> None:
    """After the crash: sweep, load latest, save again. Then a corrupted copy of the ZeRO-2 roundtrip falls back."""
    rank = dist.get_rank()
    events: list = []
    crash_dir = out / "crash"
    engine = build_engine(2, seed=99)
    mgr = make_manager(
        crash_dir / "checkpoints", events, strategy=CheckpointStrategy(save_interval=1, max_checkpoints=3)
    )
    swept = mgr.sweep_abandoned()
    loaded = mgr.load_latest_checkpoint(engine)
    dump(crash_dir, "resumed", snapshot(engine, 2))
    train_step(engine, loaded["rank_state"]["data_step"] + 1)
    saved = mgr.save_checkpoint(engine, step=2, rank_state={"data_step": 2})
    del engine

    engine_f = build_engine(2, seed=7)
    fallback_dir = out / "fallback"
    mgr_f = make_manager(fallback_dir / "checkpoints", events)
    loaded_f = mgr_f.load_latest_checkpoint(engine_f)
    dump(fallback_dir, "loaded", snapshot(engine_f, 2))
    write_json(
        out / f"resume_rank{rank}.json",
        {
            "swept": [str(p) for p in swept],
            "loaded": loaded["name"],
            "rank_state": loaded["rank_state"],
            "saved": str(saved),
            "fallback_loaded": loaded_f["name"],
            "fell_back_from": loaded_f["fell_back_from"],
        },
    )
    if rank == 0:
        write_json(out / "resume_events.json", events)


def worldsize(out: Path) -> int:
    """One rank loading the two-rank ZeRO-2 checkpoint of step 8: resharded through DeepSpeed's universal form."""
    engine = build_engine(2, seed=0)
    mgr = make_manager(out / "zero2" / "checkpoints", [])
    try:
        loaded = mgr.load_latest_checkpoint(engine)
    except IncompatibleCheckpointError as e:
        (out / "worldsize_error.txt").write_text(str(e))
        return 2
    dump(out, "worldsize_loaded", snapshot(engine, 2))
    write_json(out / "worldsize_result.json", {"name": loaded["name"], "resharded": loaded.get("resharded")})
    return 0


# ---------------------------------------------------------------------------- asynchronous saves


def async_manager(root: Path, events: list, **kwargs: Any) -> CheckpointManager:
    """A background-saving manager (collective: it creates its gloo group)."""
    return make_manager(root, events, async_save=True, **kwargs)


def agree(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (what a trainer folds into its per-step all-reduce)."""
    return dist.all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def poll_until_done(mgr: CheckpointManager, engine: Any, first_step: int) -> dict[str, Any]:
    """Train while a background save runs, polling every step, until some rank sees it finish; then the
    others wait for it (ranks learn of a finished save up to a step apart). How each rank learnt of it."""
    for i in range(1, 2000):
        train_step(engine, first_step + i)
        seen: dict[str, Any] = {}
        try:
            done = mgr.poll()
            if done:
                seen = {"via": "poll", "steps": i, "stats": done}
        except CheckpointSaveError as e:
            seen = {"via": "poll", "steps": i, "raised": str(e)}
        if agree(bool(seen)):
            if not seen:
                try:
                    seen = {"via": "wait", "steps": i, "stats": mgr.wait()}
                except CheckpointSaveError as e:
                    seen = {"via": "wait", "steps": i, "raised": str(e)}
            return seen
        time.sleep(0.01)
    raise RuntimeError("the background save never finished")


def async_train_and_resume(out: Path, stage: int) -> tuple[Any, Path, list]:
    """A: 8 steps, background saves at 2, 4, 6 and a blocking one at 8 (the final save). The save at 2 is
    slowed down (WRITE_DELAY_S before each file): training returns at once and changes every tensor before
    the writer reads its staged copy. B: fresh engines load steps 6 and 2; training 7-8 from 6 repeats A."""
    out = out / f"async_zero{stage}"
    out.mkdir(parents=True, exist_ok=True)
    root = out / "checkpoints"
    events: list = []
    rank = dist.get_rank()
    engine = build_engine(stage, seed=0)
    mgr = async_manager(root, events)
    mgr.sweep_abandoned()
    losses_a: dict[int, float] = {}
    finished: list[dict[str, Any]] = []
    timeline: dict[str, Any] = {}
    for step in range(1, 9):
        losses_a[step] = train_step(engine, step)
        finished += mgr.poll()
        if step == 1:  # after the first step (AdamW's moments exist), before the first save at 2
            mgr.prewarm(engine)  # the staging buffers of the first save, allocated in the background
        if step == 3:
            timeline["mutated_after_s"] = time.perf_counter() - timeline.pop("returned_at")
            timeline["in_flight_after_mutation"] = mgr.in_flight
        if not mgr.should_save(step):
            continue
        metrics = {"val/loss": VAL_LOSS[step], "train/loss": losses_a[step]}
        if step == 2:
            os.environ[DELAY_ENV] = str(WRITE_DELAY_S)
        elif step == 4:
            os.environ.pop(DELAY_ENV)  # the save at 2 is still writing: the save at 4 must wait for it
        start = time.perf_counter()
        path = mgr.save_checkpoint(
            engine,
            step=step,
            metrics=metrics,
            epoch=step // 4,
            rank_state={"data_step": step, "rank": rank},
            blocking=True if step == 8 else None,
        )
        timeline[f"save{step}"] = {
            "returned_s": time.perf_counter() - start,
            "in_flight": mgr.in_flight,
            "path": str(path),
        }
        if step == 2:
            timeline["returned_at"] = time.perf_counter()
        if step == 8 and rank == 0:
            timeline["final"] = {
                "latest": read_latest(root),
                "manifest": (root / checkpoint_name(8) / "manifest.json").is_file(),
            }
        dump(out, f"A{step}", snapshot(engine, stage))
    finished += mgr.wait()
    mgr.close()
    del engine

    engine_b = build_engine(stage, seed=123)
    mgr_b = async_manager(root, events)
    loaded6 = mgr_b.load_checkpoint(root / checkpoint_name(6), engine_b)
    dump(out, "B6", snapshot(engine_b, stage))
    losses_b = {step: train_step(engine_b, step) for step in (7, 8)}
    engine_c = build_engine(stage, seed=456)
    mgr_b.load_checkpoint(root / checkpoint_name(2), engine_c)
    dump(out, "B2", snapshot(engine_c, stage))
    mgr_b.close()
    del engine_c
    write_json(
        out / f"async_rank{rank}.json",
        {
            "losses_a": losses_a,
            "losses_b": losses_b,
            "finished": finished,
            "timeline": timeline,
            "loaded6": {"name": loaded6["name"], "rank_state": loaded6["rank_state"]},
        },
    )
    if rank == 0:
        write_json(out / "events.json", events)
    return engine_b, root, events


def async_failures(out: Path, engine: Any, root: Path, events: list) -> None:
    """An injected ENOSPC in rank 1's background write: raised on both ranks (on_error=raise), then logged and
    survived (on_error=warn); nothing committed, latest unchanged; the next save commits."""
    rank = dist.get_rank()
    record: dict[str, Any] = {}
    os.environ[FAULT_ENV] = "ENOSPC:optim_states@1"
    mgr = async_manager(root, events)
    before = read_latest(root)
    mgr.save_checkpoint(engine, step=10, metrics={"val/loss": 9.0}, rank_state={"data_step": 10})
    record["raise"] = poll_until_done(mgr, engine, 10)
    record["raise"]["latest_before"], record["raise"]["latest_after"] = before, read_latest(root)
    record["raise"]["listing"] = sorted(p.name for p in root.iterdir())
    mgr.close()

    mgr_w = async_manager(root, events, on_error="warn")
    mgr_w.save_checkpoint(engine, step=12, metrics={"val/loss": 9.0}, rank_state={"data_step": 12})
    record["warn"] = poll_until_done(mgr_w, engine, 12)
    record["warn"]["latest_after"] = read_latest(root)
    os.environ.pop(FAULT_ENV)
    mgr_w.save_checkpoint(engine, step=14, metrics={"val/loss": 9.0}, rank_state={"data_step": 14})
    record["warn"]["next_save"] = mgr_w.wait()
    record["warn"]["latest_next"] = read_latest(root)
    mgr_w.close()
    write_json(out / f"failures_rank{rank}.json", record)
    if rank == 0:
        write_json(out / "failure_events.json", events)


def async_exit_in_flight(out: Path, engine: Any, root: Path) -> None:
    """A background save still writing when the script ends without wait() or close(): the interpreter joins the
    writer thread, so the checkpoint is committed before the process exits."""
    mgr = async_manager(root, [])
    os.environ[DELAY_ENV] = "0.5"
    mgr.save_checkpoint(engine, step=16, metrics={"val/loss": 9.0}, rank_state={"data_step": 16})
    write_json(out / f"exit_rank{dist.get_rank()}.json", {"in_flight": mgr.in_flight, "time": time.time()})


COPY_DELAY_S = 1.5  # async_overlap: the background copy sleeps this long first


def async_overlap(out: Path, engine: Any) -> None:
    """copy_in_background: the save returns before its copy to host buffers is made (slowed down by
    COPY_DELAY_ENV); the next step's forward and backward run meanwhile and its optimizer step waits for the copy;
    the checkpoint holds the state at save time. A fresh engine loads it."""
    stage = int(engine.zero_optimization_stage())
    rank = dist.get_rank()
    root = out / "overlap"
    mgr = async_manager(root, [])
    os.environ[COPY_DELAY_ENV] = str(COPY_DELAY_S)
    try:
        start = time.perf_counter()
        mgr.save_checkpoint(engine, step=20, rank_state={"data_step": 20}, copy_in_background=True)
        returned_s = time.perf_counter() - start
        copying = mgr.copy_in_flight
        dump(out, "O20", snapshot(engine, stage))  # no optimizer step yet: the state at save time
        g = torch.Generator().manual_seed(10_000 * 21 + rank)
        data = torch.randint(VOCAB, (MB, SEQ + 1), generator=g)
        engine.train()
        engine.backward(engine(data[:, :-1], data[:, 1:]))
        before_wait = time.perf_counter() - start
        waited = mgr.wait_for_staging()
        engine.step()
    finally:
        os.environ.pop(COPY_DELAY_ENV)
    dump(out, "O21", snapshot(engine, stage))
    stats = mgr.wait()
    mgr.close()
    fresh = build_engine(stage, seed=789)
    loader = async_manager(root, [])
    loader.load_checkpoint(root / checkpoint_name(20), fresh)
    dump(out, "L20", snapshot(fresh, stage))
    loader.close()
    write_json(
        out / f"overlap_rank{rank}.json",
        {"returned_s": returned_s, "copying_at_return": copying, "forward_backward_done_s": before_wait,
         "waited_s": waited, "stats": stats},
    )  # fmt: skip


def async_mode(out: Path, stages: list[int]) -> None:
    engine = root = events = None
    for stage in stages:
        engine, root, events = async_train_and_resume(out, stage)
    async_failures(out / f"async_zero{stages[-1]}", engine, root, events)
    async_overlap(out / f"async_zero{stages[-1]}", engine)
    async_exit_in_flight(out / f"async_zero{stages[-1]}", engine, root)


def async_kill(out: Path) -> None:
    """Save 2 commits; save 3 is slowed down and still writing when the test SIGKILLs the whole job."""
    out.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    engine = build_engine(2, seed=0)
    mgr = async_manager(out / "checkpoints", [], strategy=CheckpointStrategy(save_interval=1, max_checkpoints=3))
    mgr.sweep_abandoned()
    for step in (1, 2):
        train_step(engine, step)
    mgr.save_checkpoint(engine, step=2, rank_state={"data_step": 2})
    mgr.wait()
    dump(out, "kill2", snapshot(engine, 2))
    train_step(engine, 3)
    os.environ[DELAY_ENV] = "120"
    mgr.save_checkpoint(engine, step=3, rank_state={"data_step": 3})
    (out / f"inflight_rank{rank}.txt").write_text(str(mgr.in_flight))
    deadline = time.time() + 120
    step = 4
    while time.time() < deadline:  # training goes on until the kill
        train_step(engine, step)
        step += 1
        time.sleep(0.05)
    (out / f"survived_rank{rank}.txt").write_text("the kill did not happen")


def async_resume(out: Path) -> None:
    """After the kill: sweep, load latest (step 2), train, save in the background, then a final blocking save."""
    rank = dist.get_rank()
    engine = build_engine(2, seed=99)
    mgr = async_manager(out / "checkpoints", [], strategy=CheckpointStrategy(save_interval=1, max_checkpoints=3))
    swept = mgr.sweep_abandoned()
    loaded = mgr.load_latest_checkpoint(engine)
    dump(out, "resumed", snapshot(engine, 2))
    train_step(engine, 3)
    mgr.save_checkpoint(engine, step=3, rank_state={"data_step": 3})
    train_step(engine, 4)
    final = mgr.save_checkpoint(engine, step=4, rank_state={"data_step": 4}, blocking=True)
    done = mgr.close()
    write_json(
        out / f"resume_rank{rank}.json",
        {
            "swept": [str(p) for p in swept],
            "loaded": loaded["name"],
            "final": str(final),
            "done": done,
            "staging_left": (out / "checkpoints" / staging_name(3)).exists(),
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode", choices=["roundtrip", "crash", "resume", "worldsize", "async", "async_kill", "async_resume"]
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--stages", default="1,2,3")
    args = parser.parse_args()
    dist.init_distributed()
    deepspeed.init_distributed(dist_backend="gloo")
    if args.mode == "async":  # no close(), no process-group teardown: it exits with a save in flight on purpose
        async_mode(args.out, [int(s) for s in args.stages.split(",")])
        return 0
    if args.mode in ("async_kill", "async_resume"):
        (async_kill if args.mode == "async_kill" else async_resume)(args.out)
        return 0
    try:
        if args.mode == "roundtrip":
            for stage in (int(s) for s in args.stages.split(",")):
                roundtrip(args.out, stage)
                dist.barrier()
            return 0
        if args.mode == "crash":
            crash(args.out)
            return 0
        if args.mode == "resume":
            resume(args.out)
            return 0
        return worldsize(args.out)
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
