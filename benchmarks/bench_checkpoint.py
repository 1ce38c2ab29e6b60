"""Checkpoint cost to training: DeepSpeed's default checkpoint engine, seo_dist synchronous, seo_dist asynchronous.

Per ZeRO stage, on a GPT-2 (12 x 768 = 124M parameters by default) DeepSpeed engine:

* stall per save: how long ``save_checkpoint`` blocks the training loop (slowest rank), for DeepSpeed's own
  ``engine.save_checkpoint`` with the engine it installs by default (``torch.save`` to a path, no fsync, no
  hash), seo_dist synchronous (hash while writing, fsync, atomic commit) and seo_dist asynchronous (stage
  to host buffers; write, hash, fsync and commit in the background);
* the background writer's rate (per rank, while training goes on, and with the loop idle) against a raw
  ``write`` + ``fsync`` of the same number of bytes by every rank at once, measured in the same run;
* the step time while a background save runs against the step time without one.

    torchrun --nproc-per-node 2 benchmarks/bench_checkpoint.py [--stages 2,3] [--saves 2] [--dir DIR]
    python benchmarks/bench_checkpoint.py [...]          # re-launches itself under torchrun (--ranks 2)

On a CUDA machine (benchmarks/gpu_check.sh): ``--ranks 1 --stages 2 --fill-gpu 0.5`` sizes the model to use
about half of the GPU; staging buffers are then pinned. Prints a table and writes JSON (rank 0).
Everything it writes goes under a temporary folder (``--dir``), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "out" / "bench_checkpoint.json"
RAW_CHUNK = 8 << 20
GPT2_VOCAB = 50257
# GPT-2 shapes (n_layer, n_embd, n_head) from small to large, for --fill-gpu.
GPU_SHAPES = [(12, 768, 12), (24, 1024, 16), (24, 1536, 16), (24, 2048, 16), (32, 2560, 20), (40, 3072, 24)]
BYTES_PER_PARAM_TRAINING = 16  # bf16 weights + bf16 grads + fp32 master + 2 fp32 Adam moments
BYTES_PER_PARAM_CHECKPOINT = 14  # bf16 weights + fp32 master + 2 moments
PREWARM_STEPS = 3
"""Steps between ``prewarm`` and the first background save (the trainer's first save comes far later)."""
MAX_GPU_CHECKPOINT_BYTES = 12e9  # --fill-gpu: about 5 checkpoints are written; keep them to a few minutes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="2,3", help="ZeRO stages, comma-separated")
    p.add_argument("--saves", type=int, default=2, help="saves per method and stage")
    p.add_argument("--async-saves", type=int, default=None, help="background saves per stage (default: --saves)")
    p.add_argument("--no-prewarm", action="store_true", help="the first background save allocates its buffers")
    p.add_argument("--no-copy-in-background", action="store_true", help="copy to host buffers in the save call")
    p.add_argument(
        "--compare-previous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run background saves as before prewarm and copy_in_background (same run, before the new path)",
    )
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--base-steps", type=int, default=4, help="timed steps without a save in flight")
    p.add_argument("--fill-gpu", type=float, default=0.0, help="CUDA: size model and batch to this fraction of the GPU")
    p.add_argument(
        "--idle-write",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time one background save with the training loop idle",
    )
    p.add_argument("--ranks", type=int, default=2, help="ranks when re-launched under torchrun")
    p.add_argument("--dir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args()


# ---------------------------------------------------------------------------- model and training


def size_for_gpu(args: argparse.Namespace, workdir: Path) -> None:
    """Pick the largest GPT-2 shape whose training state takes at most a third of ``fill_gpu`` of the GPU and
    whose checkpoint fits the disk (twice), host memory (staging) and the time budget (12 GB), then a micro
    batch whose activations bring the estimate to about ``fill_gpu``. Estimates only: the run prints the
    measured peak."""
    import psutil

    gpu_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    disk_free = shutil.disk_usage(workdir).free
    host = psutil.virtual_memory().total
    budget = args.fill_gpu * gpu_bytes
    for n_layer, n_embd, n_head in GPU_SHAPES:
        params = 12 * n_layer * n_embd**2 + GPT2_VOCAB * n_embd
        ckpt = params * BYTES_PER_PARAM_CHECKPOINT
        too_big = params * BYTES_PER_PARAM_TRAINING > budget / 3 or ckpt > MAX_GPU_CHECKPOINT_BYTES
        if too_big or ckpt * 2.3 > disk_free or ckpt > 0.4 * host:
            break
        args.n_layer, args.n_embd, args.n_head = n_layer, n_embd, n_head
    params = 12 * args.n_layer * args.n_embd**2 + GPT2_VOCAB * args.n_embd
    per_sequence = args.seq * (args.n_layer * 34 * args.n_embd * 2 + GPT2_VOCAB * 12)  # activations + logits
    room = budget - params * BYTES_PER_PARAM_TRAINING
    args.micro_batch = int(max(1, min(32, room // per_sequence)))


def build_engine(args: argparse.Namespace, stage: int, device: torch.device) -> tuple[Any, Any]:
    import deepspeed
    from transformers import GPT2Config, GPT2LMHeadModel

    from seo_dist import dist

    ds = json.loads((REPO / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
    ds["bf16"] = {"enabled": device.type == "cuda" or bool(ds.get("bf16", {}).get("enabled"))}
    world = dist.get_world_size()
    ds.update(
        train_micro_batch_size_per_gpu=args.micro_batch,
        gradient_accumulation_steps=1,
        train_batch_size=args.micro_batch * world,
        steps_per_print=10**9,
        gradient_clipping=1.0,
    )
    config = GPT2Config(
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_positions=max(1024, args.seq),
        vocab_size=GPT2_VOCAB,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine, config


class Trainer:
    """Random-token GPT-2 steps, timed (and profiled with seo_dist's StepProfiler)."""

    def __init__(self, engine: Any, hf_config: Any, args: argparse.Namespace) -> None:
        from seo_dist.config import ProfilingConfig
        from seo_dist.profiling import StepProfiler, flops_per_token

        self.engine, self.args = engine, args
        self.step = 0
        self.checkpoints: Any = None
        self.last_copy_wait_s = 0.0
        self.gen = torch.Generator().manual_seed(1234)
        self.profiler = StepProfiler(
            ProfilingConfig(),
            device=engine.device,
            flops_per_token=flops_per_token(hf_config, args.seq),
            tokens_per_step_per_rank=args.micro_batch * args.seq,
            samples_per_step_per_rank=args.micro_batch,
        )

    def train_step(self) -> float:
        """One optimizer step; returns its wall time (device work included)."""
        engine, prof = self.engine, self.profiler
        x = torch.randint(GPT2_VOCAB, (self.args.micro_batch, self.args.seq), generator=self.gen).to(engine.device)
        start = time.perf_counter()
        with prof.phase("forward"):
            loss = engine(input_ids=x, labels=x).loss
        with prof.phase("backward"):
            engine.backward(loss)
        with prof.phase("optimizer"):
            if self.checkpoints is not None:  # as seo_dist's trainer: a save's copy must be done first
                self.last_copy_wait_s = self.checkpoints.wait_for_staging()
            engine.step()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        self.step += 1
        prof.step_end(self.step)
        return time.perf_counter() - start


# ---------------------------------------------------------------------------- measurements


def slowest(value: float) -> float:
    from seo_dist import dist

    return max(dist.all_gather_object(value))


def timed_save(save: Any) -> float:
    """Seconds the slowest rank spent in ``save()``, all ranks starting together."""
    from seo_dist import dist

    dist.barrier()
    start = time.perf_counter()
    save()
    return slowest(time.perf_counter() - start)


def remove(root: Path) -> None:
    """Delete one method's checkpoints before the next method runs (a GPU-sized checkpoint fills a disk fast)."""
    from seo_dist import dist

    dist.barrier()
    if dist.is_rank_zero():
        shutil.rmtree(root, ignore_errors=True)
    dist.barrier()


def settle() -> None:
    """Flush dirty pages (DeepSpeed's saves do not fsync) so that one method's writeback does not slow the next."""
    from seo_dist import dist

    os.sync()
    dist.barrier()


def deepspeed_default(engine: Any, default_engine: Any, root: Path, trainer: Trainer, saves: int) -> dict[str, Any]:
    from seo_dist import dist

    current, engine.checkpoint_engine = engine.checkpoint_engine, default_engine
    stalls = []
    try:
        for i in range(saves):
            trainer.train_step()
            stalls.append(timed_save(lambda i=i: engine.save_checkpoint(str(root), tag=f"ds_{i}", save_latest=True)))
            if dist.is_rank_zero():
                shutil.rmtree(root / f"ds_{i}", ignore_errors=True)
            settle()
    finally:
        engine.checkpoint_engine = current
    remove(root)
    return {"stall_s": stalls}


def seo_sync(engine: Any, root: Path, trainer: Trainer, saves: int) -> dict[str, Any]:
    from seo_dist.checkpoint import CheckpointManager, CheckpointStrategy

    mgr = CheckpointManager(root, CheckpointStrategy(save_interval=1, max_checkpoints=2), async_save=False)
    stalls, stats = [], []
    for i in range(saves):
        trainer.train_step()
        stalls.append(timed_save(lambda i=i: mgr.save_checkpoint(engine, step=100 + i, rank_state={"i": i})))
        stats += mgr.poll()
        settle()
    mgr.close()
    remove(root)
    return {"stall_s": stalls, "stats": stats}


def agree(flag: bool) -> bool:
    from seo_dist import dist

    return dist.all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def seo_async(
    engine: Any, root: Path, trainer: Trainer, saves: int, *, idle_write: bool, prewarm: bool, copy_later: bool
) -> dict[str, Any]:
    """Background saves while training goes on (step times recorded), then one with the loop idle.

    ``prewarm``: as the trainer does, the staging buffers are planned after a step and allocated in the background
    while ``PREWARM_STEPS`` more steps run (their times recorded), before the first save. ``copy_later``: as the
    trainer does, the copy to host buffers runs on a thread during the next step's forward and backward, and its
    optimizer step waits for it; that wait (slowest rank) is part of the save's stall here."""
    from seo_dist.checkpoint import CheckpointManager, CheckpointStrategy

    mgr = CheckpointManager(root, CheckpointStrategy(save_interval=1, max_checkpoints=2), async_save=True)
    trainer.checkpoints = mgr
    stalls, stats, busy_steps, copy_waits = [], [], [], []
    prewarm_s, prewarm_steps = None, []
    if prewarm:
        prewarm_s = timed_save(lambda: mgr.prewarm(engine))  # the training thread's share: the dry run
        prewarm_steps = [trainer.train_step() for _ in range(PREWARM_STEPS)]
    for i in range(saves):
        trainer.train_step()
        call = timed_save(
            lambda i=i: mgr.save_checkpoint(engine, step=200 + i, rank_state={"i": i}, copy_in_background=copy_later)
        )
        busy_steps.append(trainer.train_step())  # its optimizer step waits for the copy, if still running
        copy_waits.append(slowest(trainer.last_copy_wait_s))
        stalls.append(call + copy_waits[-1])
        while True:  # train until some rank sees the save finished; the others then wait for it (a step at most)
            done = mgr.poll()
            if agree(bool(done)):
                stats += done or mgr.wait()
                break
            busy_steps.append(trainer.train_step())
        settle()
    idle: list[dict[str, Any]] = []
    if idle_write:
        trainer.train_step()
        mgr.save_checkpoint(engine, step=300, rank_state={"idle": True})
        idle = mgr.wait()
        settle()
    trainer.checkpoints = None
    mgr.close()
    remove(root)
    return {"stall_s": stalls, "copy_wait_s": copy_waits, "stats": stats, "busy_step_s": busy_steps,
            "idle_stats": idle, "prewarm_s": prewarm_s, "prewarm_step_s": prewarm_steps}  # fmt: skip


def raw_write(folder: Path, nbytes: int) -> float:
    """Every rank writes ``nbytes`` from memory with plain ``os.write`` (8 MB at a time) + fsync, all at the same
    time, as the background writers do; this rank's GB/s. The bytes come from a buffer as large as the
    staged state (not a small hot block), so memory bandwidth counts as it does for the real writer."""
    from seo_dist import dist

    source = memoryview(torch.ones(nbytes, dtype=torch.uint8).numpy())
    path = folder / f"raw_rank{dist.get_rank()}.bin"
    dist.barrier()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < nbytes:
            written += os.write(fd, source[written : written + RAW_CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    dist.barrier()
    return nbytes / 1e9 / seconds


def gather_stats(stats: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` of every save on every rank."""
    from seo_dist import dist

    return [v for per_rank in dist.all_gather_object([s[key] for s in stats]) for v in per_rank]


def run_stage(args: argparse.Namespace, stage: int, workdir: Path, device: torch.device) -> dict[str, Any]:
    from seo_dist import dist
    from seo_dist.model import count_parameters

    engine, hf_config = build_engine(args, stage, device)
    default_engine = engine.checkpoint_engine
    trainer = Trainer(engine, hf_config, args)
    for _ in range(2):
        trainer.train_step()  # warm-up
    trainer.profiler.collect(trainer.step)
    base = [trainer.train_step() for _ in range(args.base_steps)]
    profile = trainer.profiler.collect(trainer.step)
    folder = workdir / f"zero{stage}"
    folder.mkdir(parents=True, exist_ok=True)
    ds = deepspeed_default(engine, default_engine, folder / "deepspeed", trainer, args.saves)
    sync = seo_sync(engine, folder / "seo_sync", trainer, args.saves)
    saves = args.async_saves or args.saves
    previous = (  # the path before prewarm and copy_in_background, for the record
        seo_async(engine, folder / "seo_prev", trainer, saves, idle_write=False, prewarm=False, copy_later=False)
        if args.compare_previous
        else None
    )
    asy = seo_async(engine, folder / "seo_async", trainer, saves, idle_write=args.idle_write,
                    prewarm=not args.no_prewarm, copy_later=not args.no_copy_in_background)  # fmt: skip
    rank_bytes = max(s["rank_bytes"] for s in asy["stats"])
    raw_gbps = raw_write(folder, rank_bytes)
    if dist.is_rank_zero():
        shutil.rmtree(folder, ignore_errors=True)
    base_step = statistics.median(dist.all_gather_object(statistics.median(base)))
    busy_step = statistics.median(v for per_rank in dist.all_gather_object(asy["busy_step_s"]) for v in per_rank)
    ds_stall = statistics.median(ds["stall_s"])
    first_stall = asy["stall_s"][0]  # allocates the staging buffers, unless prewarmed
    steady_stall = statistics.median(asy["stall_s"][1:]) if len(asy["stall_s"]) > 1 else first_stall
    write_gbps = statistics.median(gather_stats(asy["stats"], "write_gbps"))
    idle_gbps = statistics.median(gather_stats(asy["idle_stats"], "write_gbps")) if asy["idle_stats"] else None
    raw = statistics.median(dist.all_gather_object(raw_gbps))
    result = {
        "stage": stage,
        "params": count_parameters(engine.module),
        "checkpoint_bytes": asy["stats"][0]["bytes"],
        "rank_bytes": rank_bytes,
        "deepspeed_default_stall_s": ds["stall_s"],
        "seo_sync_stall_s": sync["stall_s"],
        "seo_async_stall_s": asy["stall_s"],
        "seo_async_stage_s": gather_stats(asy["stats"], "stage_s"),
        "seo_async_write_s": gather_stats(asy["stats"], "write_s"),
        "seo_sync_write_gbps": statistics.median(gather_stats(sync["stats"], "write_gbps")),
        "background_write_gbps_training": write_gbps,
        "background_write_gbps_idle": idle_gbps,
        "raw_write_fsync_gbps": raw,
        "seo_async_first_stall_s": first_stall,
        "seo_async_steady_stall_s": steady_stall,
        "async_stall_vs_deepspeed": steady_stall / ds_stall,
        "async_first_stall_vs_deepspeed": first_stall / ds_stall,
        "background_vs_raw": write_gbps / raw,
        "background_idle_vs_raw": idle_gbps / raw if idle_gbps is not None else None,
        "base_step_s": base_step,
        "step_s_during_background_save": busy_step,
        "slowdown_pct": 100 * (busy_step - base_step) / base_step,
        "steps_during_background_saves": len(asy["busy_step_s"]),
        "copy_in_background": not args.no_copy_in_background,
        "seo_async_copy_wait_s": asy["copy_wait_s"],
        "previous_async_stall_s": previous["stall_s"] if previous else None,
        "previous_first_stall_vs_deepspeed": previous["stall_s"][0] / ds_stall if previous else None,
        "previous_steady_stall_vs_deepspeed": statistics.median(previous["stall_s"][1:]) / ds_stall
        if previous and len(previous["stall_s"]) > 1
        else None,
        "prewarm": asy["prewarm_s"] is not None,
        "prewarm_call_s": asy["prewarm_s"],
        "step_s_while_prewarming": statistics.median(
            v for per_rank in dist.all_gather_object(asy["prewarm_step_s"]) for v in per_rank
        )
        if asy["prewarm_step_s"]
        else None,
        "first_save_allocated_bytes": max(dist.all_gather_object(asy["stats"][0].get("staging_allocated_bytes", 0))),
        "staging_buffer_bytes": asy["stats"][0].get("staging_buffer_bytes"),
        "staging_pinned_bytes": asy["stats"][0].get("staging_pinned_bytes"),
        "profile": profile,
    }
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        result["gpu_total_gb"] = total / 2**30
        result["gpu_peak_allocated_fraction"] = profile.get("mem/device_max_allocated_gb", 0.0) * 2**30 / total
    del trainer, engine
    return result


# ---------------------------------------------------------------------------- report


def print_table(results: list[dict[str, Any]], header: str) -> None:
    print(header)
    print(f"{'ZeRO':<5} {'method':<22} {'stall/save (s)':>15} {'write GB/s/rank':>16}  notes")
    for r in results:
        gb = r["checkpoint_bytes"] / 1e9
        med = statistics.median
        print(
            f"{r['stage']:<5} {'DeepSpeed default':<22} {med(r['deepspeed_default_stall_s']):>15.3f} {'-':>16}  "
            f"torch.save, no fsync, no hash; {gb:.2f} GB checkpoint"
        )
        print(
            f"{r['stage']:<5} {'seo_dist sync':<22} {med(r['seo_sync_stall_s']):>15.3f} "
            f"{r['seo_sync_write_gbps']:>16.2f}  hash + fsync + atomic commit"
        )
        print(
            f"{r['stage']:<5} {'seo_dist async':<22} {r['seo_async_steady_stall_s']:>15.3f} "
            f"{r['background_write_gbps_training']:>16.2f}  stall = {r['async_stall_vs_deepspeed']:.3f} x DeepSpeed "
            f"(goal <= 0.1); saves after the first; "
            + (
                f"copy in background, optimizer step waited {[round(x, 3) for x in r['seo_async_copy_wait_s']]} s"
                if r["copy_in_background"]
                else "copy in the save call"
            )
        )
        first_note = (
            f"prewarmed ({r['first_save_allocated_bytes']} bytes left to allocate; dry run {r['prewarm_call_s']:.3f} s, "
            f"steps meanwhile {r['step_s_while_prewarming']:.3f} s)"
            if r["prewarm"]
            else "allocates and first-touches the staging buffers (--no-prewarm)"
        )
        print(
            f"{r['stage']:<5} {'  first async save':<22} {r['seo_async_first_stall_s']:>15.3f} {'':>16}  "
            f"{r['async_first_stall_vs_deepspeed']:.3f} x DeepSpeed: {first_note}"
        )
        if r["previous_async_stall_s"]:
            prev = r["previous_async_stall_s"]
            print(
                f"{r['stage']:<5} {'  before (same run)':<22} {statistics.median(prev[1:] or prev):>15.3f} {'':>16}  "
                f"{r['previous_steady_stall_vs_deepspeed'] or 0:.3f} x DeepSpeed after the first, first save "
                f"{prev[0]:.3f} s = {r['previous_first_stall_vs_deepspeed']:.3f} x (no prewarm, copy in the save call)"
            )
        if r["background_write_gbps_idle"] is not None:
            print(
                f"{r['stage']:<5} {'  background, idle loop':<22} {'':>15} {r['background_write_gbps_idle']:>16.2f}  "
                f"{r['background_idle_vs_raw']:.0%} of raw"
            )
        print(
            f"{r['stage']:<5} {'raw write+fsync':<22} {'':>15} {r['raw_write_fsync_gbps']:>16.2f}  "
            f"same bytes, all ranks at once; background while training = {r['background_vs_raw']:.0%} (goal >= 80%)"
        )
        print(
            f"{r['stage']:<5} {'step time':<22} {'':>15} {'':>16}  {r['base_step_s']:.3f} s alone, "
            f"{r['step_s_during_background_save']:.3f} s during a background save ({r['slowdown_pct']:+.0f}%, "
            f"{r['steps_during_background_saves']} steps)"
        )
    for r in results:
        prof = {
            k: round(v, 3)
            for k, v in r["profile"].items()
            if k.startswith(("perf/step_time", "perf/tokens", "perf/mfu", "perf/tflops", "mem/", "gpu/"))
        }
        print(f"ZeRO {r['stage']} profiler (StepProfiler.collect over the timed steps): {prof}")
        print(
            f"ZeRO {r['stage']} staging buffers: {r['staging_buffer_bytes'] / 1e9:.2f} GB on rank 0, "
            f"{r['staging_pinned_bytes'] / 1e9:.2f} GB of them pinned; stall per save "
            f"{[round(x, 3) for x in r['seo_async_stall_s']]}, staging {[round(x, 3) for x in r['seo_async_stage_s']]} "
            f"(first save {'prewarmed' if r['prewarm'] else 'allocates the buffers'})"
        )
        if "gpu_total_gb" in r:
            print(
                f"ZeRO {r['stage']} GPU memory: peak allocated {r['gpu_peak_allocated_fraction']:.0%} of "
                f"{r['gpu_total_gb']:.0f} GiB"
            )


def main() -> int:
    args = parse_args()
    from seo_dist import dist

    if dist.get_dist_info().launcher == "none" and args.ranks > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--nproc-per-node", str(args.ranks), "--master-port", str(_free_port()), *sys.argv]
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    import deepspeed

    from seo_dist.train import _quiet_libraries

    _quiet_libraries()
    info = dist.init_distributed()
    device = dist.get_device()
    dist.ensure_process_group()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_checkpoint_") as tmp:
        workdir = Path(dist.broadcast_object(tmp))
        if args.fill_gpu and device.type == "cuda":
            size_for_gpu(args, workdir)
        results = [run_stage(args, int(s), workdir, device) for s in args.stages.split(",")]
        dist.barrier()
    if info.is_rank_zero:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        model = f"GPT-2 {args.n_layer} x {args.n_embd}, micro batch {args.micro_batch} x {args.seq} tokens"
        print_table(
            results,
            f"{model}; {dist.get_world_size()} rank(s) on {device_name}; "
            f"{args.saves} saves per method; load average {load_before[0]:.2f}",
        )
        write_report(
            args.out,
            {
                "benchmark": "bench_checkpoint",
                "model": model,
                "args": {k: str(v) for k, v in vars(args).items()},
                "machine": machine(load_before, device=device_name, world_size=dist.get_world_size()),
                "results": results,
            },
        )
    dist.barrier()
    dist.cleanup()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
