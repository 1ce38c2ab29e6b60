"""Checkpoint test job: a tiny tied-embedding LM on real DeepSpeed ZeRO (CPU, gloo), run under torchrun
by tests/test_checkpoint_deepspeed.py. Each mode writes its evidence (state snapshots per rank, losses,
events, errors) under OUT for the test to check.

    torchrun --nproc-per-node 2 tests/ckpt_job.py roundtrip OUT --stages 1,2,3
    torchrun --nproc-per-node 2 tests/ckpt_job.py crash OUT
    torchrun --nproc-per-node 2 tests/ckpt_job.py resume OUT
    torchrun --nproc-per-node 1 tests/ckpt_job.py worldsize OUT

Fault injection (crash mode) wraps library functions from here, so the library has no test hooks.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.nn.functional as F

from seo_dist import dist
from seo_dist.checkpoint import CheckpointManager, CheckpointStrategy
from seo_dist.checkpoint import commit as commit_module
from seo_dist.checkpoint.deepspeed_engine import HashingCheckpointEngine
from seo_dist.checkpoint.errors import CheckpointSaveError, IncompatibleCheckpointError

VOCAB, DIM, HIDDEN, MB, SEQ = 64, 32, 64, 2, 8
VAL_LOSS = {2: 1.0, 4: 3.0, 6: 2.5, 8: 2.0}  # step 2 is the best; retention keep_last=2 must still keep it


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
    """One rank loading the two-rank ZeRO-2 checkpoint: a clear error, nothing loaded."""
    engine = build_engine(2, seed=0)
    mgr = make_manager(out / "zero2" / "checkpoints", [])
    try:
        mgr.load_latest_checkpoint(engine)
    except IncompatibleCheckpointError as e:
        (out / "worldsize_error.txt").write_text(str(e))
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["roundtrip", "crash", "resume", "worldsize"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--stages", default="1,2,3")
    args = parser.parse_args()
    dist.init_distributed()
    deepspeed.init_distributed(dist_backend="gloo")
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
