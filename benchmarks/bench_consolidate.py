"""Consolidation of checkpoints made by the trainer itself: ``seo-dist consolidate`` vs DeepSpeed's zero_to_fp32.

    python benchmarks/bench_consolidate.py [--stages 2,3] [--rounds 3] [--workdir DIR --reuse] [--json PATH]

1. Trains GPT-2 124M-shaped (12 layers x 768, 12 heads, the vocabulary of the trained tokenizer) for one step
   with ``torchrun --nproc-per-node 2 -m seo_dist.train --config configs/tiny_cpu.yaml --set train.max_steps=1
   checkpoint.save_interval=1 ...`` once per ZeRO stage: the checkpoint a user's run leaves.
2. Runs each exporter on the same folder in its own process (wall time, and the child's peak RSS from
   ``resource.getrusage(RUSAGE_CHILDREN)`` in a small wrapper process that runs only that child):
   - ``python -m deepspeed.utils.zero_to_fp32 CKPTS OUT -t TAG`` (pytorch_model.bin: its
     ``--safe_serialization`` mode fails on GPT-2's tied embeddings);
   - ``seo-dist consolidate CKPT --out OUT`` (the CLI, full hash verification of the input included);
   - ``python -m seo_dist.export CKPT --out OUT --dtype bf16`` (the same entry, bf16 output).
   Cold: every file of the checkpoints folder evicted from the page cache first (``posix_fadvise
   POSIX_FADV_DONTNEED``; the files are fsynced, so the pages are clean and go). Warm: every file read once
   first. Rounds interleave the tools (z2f, seo, seo-bf16, z2f, ...), cold then warm; the median is reported.
3. Compares the outputs tensor by tensor (``torch.equal``; the tied ``lm_head.weight`` against
   ``transformer.wte.weight``), prints a table and writes JSON (default benchmarks/out/bench_consolidate.json).
Goal: ``seo-dist consolidate`` at most 0.25x the time and 0.1x the peak RSS of zero_to_fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_JSON = REPO / "benchmarks" / "out" / "bench_consolidate.json"
TAG = "step_00000001"
RUN_CHILD = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[2:], capture_output=True, text=True)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": proc.returncode, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
           "out": proc.stdout[-2000:], "err": proc.stderr[-4000:]}, open(sys.argv[1], "w"))
"""
"""Runs one command and reports its wall time and its peak RSS (``ru_maxrss`` of the children of this process:
only that one command, so not polluted by the benchmark's own memory or earlier runs)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    e.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline", WANDB_SILENT="true")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def build_checkpoint(workdir: Path, stage: int, layers: int, width: int) -> Path:
    """The trainer's own checkpoint after one step; returns the experiment directory."""
    sets = [
        f"experiment.base_dir={workdir}", f"experiment.experiment_id=zero{stage}", "train.max_steps=1",
        "checkpoint.save_interval=1", "checkpoint.export_final=false", "train.eval_interval=0", "train.eval_batches=1",
        "train.progress_bar=false", f"deepspeed.zero_optimization.stage={stage}", f"model.config.n_layer={layers}",
        f"model.config.n_embd={width}", f"model.config.n_head={width // 64}",
    ]  # fmt: skip
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "seo_dist.train",
           "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, cwd=workdir)
    if proc.returncode != 0:
        raise SystemExit(f"building the ZeRO-{stage} checkpoint failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return workdir / f"zero{stage}"


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def evict(folder: Path) -> None:
    """Drop every file under ``folder`` from the page cache (clean pages only: the checkpoint is fsynced)."""
    for path in files_under(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(folder: Path) -> None:
    for path in files_under(folder):
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def timed(cmd: list[str], workdir: Path) -> dict[str, Any]:
    report = workdir / "child.json"
    subprocess.run([sys.executable, "-c", RUN_CHILD, str(report), *cmd], env=env(), cwd=REPO, check=True)
    result = json.loads(report.read_text())
    if result["rc"] != 0:
        raise SystemExit(f"failed ({result['rc']}): {' '.join(cmd)}\n{result['out']}\n{result['err']}")
    return {"seconds": round(result["seconds"], 3), "peak_rss_mb": round(result["peak_rss_mb"], 1)}


def commands(exp: Path, outs: Path) -> dict[str, list[str]]:
    ckpt = exp / "checkpoints" / TAG
    cli = [str(BIN / "seo-dist")] if (BIN / "seo-dist").exists() else [sys.executable, "-m", "seo_dist.cli"]
    return {
        "zero_to_fp32": [sys.executable, "-m", "deepspeed.utils.zero_to_fp32", str(exp / "checkpoints"),
                         str(outs / "zero_to_fp32"), "-t", TAG],
        "seo-dist consolidate": [*cli, "consolidate", str(ckpt), "--out", str(outs / "seo_dist")],
        "python -m seo_dist.export --dtype bf16": [sys.executable, "-m", "seo_dist.export", str(ckpt), "--out",
                                                   str(outs / "export_bf16"), "--dtype", "bf16"],
    }  # fmt: skip


def compare(ours: Path, theirs: Path) -> dict[str, Any]:
    """Tensor-by-tensor equality of our safetensors folder and zero_to_fp32's pytorch_model.bin."""
    import torch
    from safetensors import safe_open

    reference = torch.load(theirs / "pytorch_model.bin", mmap=True, weights_only=True)
    ours_files = sorted(ours.glob("*.safetensors"))
    mismatched, compared = [], 0
    names: set[str] = set()
    for path in ours_files:
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                names.add(name)
                compared += 1
                if not torch.equal(f.get_tensor(name), reference[name]):
                    mismatched.append(name)
    only_theirs = sorted(set(reference) - names)
    tied_ok = True
    if "lm_head.weight" in only_theirs:
        with safe_open(str(ours_files[0]), "pt") as f:
            tied_ok = torch.equal(reference["lm_head.weight"], f.get_tensor("transformer.wte.weight"))
        only_theirs.remove("lm_head.weight")
    return {
        "tensors_compared": compared,
        "mismatched": mismatched,
        "only_in_zero_to_fp32": only_theirs,
        "only_in_seo_dist": sorted(names - set(reference)),
        "tied_lm_head_equals_wte": tied_ok,
        "equal": not mismatched and not only_theirs and tied_ok,
    }


def measure(workdir: Path, stage: int, rounds: int) -> dict[str, Any]:
    exp = workdir / f"zero{stage}"
    outs = workdir / f"out{stage}"
    tools = commands(exp, outs)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {t: [] for t in tools} for c in ("cold", "warm")}
    for _ in range(rounds):
        for cache in ("cold", "warm"):
            for name, cmd in tools.items():
                shutil.rmtree(outs, ignore_errors=True)
                outs.mkdir(parents=True)
                (evict if cache == "cold" else warm)(exp / "checkpoints")
                runs[cache][name].append(timed(cmd, workdir))
    shutil.rmtree(outs, ignore_errors=True)
    for name, cmd in tools.items():  # the outputs to compare, once more (not timed)
        if name != "python -m seo_dist.export --dtype bf16":
            timed(cmd, workdir)
    rows: dict[str, dict[str, Any]] = {}
    for cache, by_tool in runs.items():
        for name, measured in by_tool.items():
            rows[f"{cache}: {name}"] = {
                "seconds": statistics.median(r["seconds"] for r in measured),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in measured),
                "runs": measured,
            }
        base = rows[f"{cache}: zero_to_fp32"]
        for name in by_tool:
            row = rows[f"{cache}: {name}"]
            row["time_ratio"] = round(row["seconds"] / base["seconds"], 3)
            row["rss_ratio"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 3)
    ckpt = exp / "checkpoints" / TAG
    result = {
        "stage": stage,
        "checkpoint_bytes": sum(p.stat().st_size for p in files_under(ckpt)),
        "tools": rows,
        "equality": compare(outs / "seo_dist", outs / "zero_to_fp32"),
    }
    shutil.rmtree(outs, ignore_errors=True)
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'stage':<7}{'tool':<48}{'time s':>8}{'x z2f':>8}{'peak RSS MB':>13}{'x z2f':>8}")
    for res in results:
        for name, row in res["tools"].items():
            print(
                f"ZeRO-{res['stage']:<2}{name:<48}{row['seconds']:>8.2f}{row['time_ratio']:>8.2f}"
                f"{row['peak_rss_mb']:>13.0f}{row['rss_ratio']:>8.2f}"
            )
        eq = res["equality"]
        print(
            f"        checkpoint {res['checkpoint_bytes'] / 1e9:.2f} GB; equal to zero_to_fp32: {eq['equal']} "
            f"({eq['tensors_compared']} tensors, tied lm_head == wte: {eq['tied_lm_head_equals_wte']})"
        )
    print("goal: seo-dist consolidate <= 0.25x the time and <= 0.10x the peak RSS of zero_to_fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="2,3", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cache state (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep checkpoints here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="reuse checkpoints already in --workdir")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 layers (12: 124M-shaped)")
    parser.add_argument("--width", type=int, default=768, help="GPT-2 width, a multiple of 64 (heads = width / 64)")
    args = parser.parse_args()
    load = os.getloadavg()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_consolidate_")
        args.workdir = Path(tmp.name)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for stage in args.stages:
            if not (args.reuse and (args.workdir / f"zero{stage}" / "checkpoints" / TAG).is_dir()):
                print(f"training one step of GPT-2 {args.layers}x{args.width} with ZeRO-{stage} on 2 CPU ranks in "
                      f"{args.workdir} ...", flush=True)  # fmt: skip
                shutil.rmtree(args.workdir / f"zero{stage}", ignore_errors=True)
                build_checkpoint(args.workdir, stage, args.layers, args.width)
            results.append(measure(args.workdir, stage, args.rounds))
        print_table(results)
        write_report(
            args.json,
            {
                "benchmark": "consolidate",
                "model": f"GPT-2 {args.layers}x{args.width}, vocab of the trained tokenizer, fp32, 2 ranks, by seo_dist.train",
                "rounds": args.rounds,
                "machine": machine(load),
                "results": results,
            },
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
