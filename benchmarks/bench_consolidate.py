"""Consolidation of a GPT-2 124M ZeRO checkpoint: seo_dist vs DeepSpeed's zero_to_fp32.

    python benchmarks/bench_consolidate.py [--stages 2,3] [--repeat 1] [--workdir DIR] [--json PATH]

1. Trains GPT-2 124M (12 layers x 768, 12 heads, GPT-2's vocabulary of 50257 tokens, fp32 AdamW with
   seo_dist's two parameter groups) for one step on 2 CPU ranks under torchrun, once per ZeRO stage, and
   saves a checkpoint the way seo_dist lays it out (DeepSpeed's files + hf_config.json + manifest.json).
2. Runs each exporter in its own process under ``/usr/bin/time -v`` (wall time, peak RSS):
   - ``python -m deepspeed.utils.zero_to_fp32 CKPTS OUT -t TAG`` (pytorch_model.bin: its
     ``--safe_serialization`` mode fails on GPT-2's tied embeddings);
   - ``seo-dist consolidate CKPT --out OUT`` (the CLI, full hash verification of the input included);
   - ``python -m seo_dist.export CKPT --out OUT`` (the same without the CLI's torch import).
   Every run reads a checkpoint already in the page cache (it was just written), the same for all.
3. Compares the two outputs tensor by tensor (``torch.equal``; the tied ``lm_head.weight`` against
   ``transformer.wte.weight``), prints a table and writes JSON (default benchmarks/out/bench_consolidate.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "out" / "bench_consolidate.json"
TIME = "/usr/bin/time"
TAG = "step_00000001"
GPT2_124M = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
SEQ_LEN = 64
HASH_ALGORITHM = "xxh3_128"


# --------------------------------------------------------------------------- worker (under torchrun)


def build_checkpoint(exp: Path, stage: int) -> None:
    """One training step of GPT-2 124M with ZeRO ``stage`` on every rank, then a committed checkpoint."""
    import deepspeed
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from seo_dist import dist
    from seo_dist.checkpoint.hashing import hash_file
    from seo_dist.checkpoint.layout import MANIFEST
    from seo_dist.checkpoint.manifest import Manifest, write_manifest
    from seo_dist.config import TrainConfig
    from seo_dist.engine.deepspeed_engine import build_optimizer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_124M))
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10_000,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, TrainConfig(lr=1e-4)), config=ds_config
    )
    ids = torch.randint(
        0, GPT2_124M["vocab_size"], (1, SEQ_LEN), generator=torch.Generator().manual_seed(dist.get_rank())
    )
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.save_checkpoint(str(exp / "checkpoints"), tag=TAG)
    if dist.is_rank_zero():
        folder = exp / "checkpoints" / TAG
        (folder / "hf_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        files = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
            size, digest = hash_file(path, HASH_ALGORITHM)
            files[path.name] = {"size": size, "hash": digest}
        write_manifest(
            folder,
            Manifest(
                step=1, hash_algorithm=HASH_ALGORITHM, files=files, world_size=dist.get_world_size(), zero_stage=stage
            ),
        )
    dist.barrier()
    engine.destroy()


def worker(args: argparse.Namespace) -> None:
    from seo_dist import dist

    dist.init_distributed()
    for stage in args.stages:
        build_checkpoint(args.workdir / f"zero{stage}", stage)
    dist.cleanup()
    os._exit(0)  # DeepSpeed's teardown costs seconds on 2 cores and checks nothing


# --------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    e.update(
        {
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO) + os.pathsep + e.get("PYTHONPATH", ""),
        }
    )
    return e


def timed(cmd: list[str], time_file: Path) -> dict[str, Any]:
    """Wall time and peak RSS of ``cmd`` from ``/usr/bin/time -v``."""
    proc = subprocess.run([TIME, "-v", "-o", str(time_file), *cmd], env=env(), capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    text = time_file.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(rss_kb / 1024, 1)}


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


def measure(workdir: Path, stage: int, repeat: int) -> dict[str, Any]:
    exp = workdir / f"zero{stage}"
    ckpt = exp / "checkpoints" / TAG
    outs = workdir / f"out{stage}"
    commands = {
        "zero_to_fp32": [
            sys.executable,
            "-m",
            "deepspeed.utils.zero_to_fp32",
            str(exp / "checkpoints"),
            str(outs / "zero_to_fp32"),
            "-t",
            TAG,
        ],
        "seo-dist consolidate": [
            sys.executable,
            "-m",
            "seo_dist.cli",
            "consolidate",
            str(ckpt),
            "--out",
            str(outs / "seo_dist"),
        ],
        "python -m seo_dist.export": [
            sys.executable,
            "-m",
            "seo_dist.export",
            str(ckpt),
            "--out",
            str(outs / "export"),
        ],
        "python -m seo_dist.export --dtype bf16": [
            sys.executable,
            "-m",
            "seo_dist.export",
            str(ckpt),
            "--out",
            str(outs / "export_bf16"),
            "--dtype",
            "bf16",
        ],
    }
    rows = {}
    for name, cmd in commands.items():
        runs = [timed(cmd, workdir / "time.txt") for _ in range(repeat)]
        rows[name] = {
            "seconds": min(r["seconds"] for r in runs),
            "peak_rss_mb": min(r["peak_rss_mb"] for r in runs),
            "runs": runs,
        }
    base = rows["zero_to_fp32"]
    for row in rows.values():
        row["time_ratio"] = round(row["seconds"] / base["seconds"], 3)
        row["rss_ratio"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 3)
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    return {
        "stage": stage,
        "checkpoint_bytes": size,
        "tools": rows,
        "equality": compare(outs / "seo_dist", outs / "zero_to_fp32"),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'stage':<7}{'tool':<42}{'time s':>8}{'x z2f':>8}{'peak RSS MB':>13}{'x z2f':>8}")
    for res in results:
        for name, row in res["tools"].items():
            print(
                f"ZeRO-{res['stage']:<2}{name:<42}{row['seconds']:>8.2f}{row['time_ratio']:>8.2f}"
                f"{row['peak_rss_mb']:>13.0f}{row['rss_ratio']:>8.2f}"
            )
        eq = res["equality"]
        print(
            f"        checkpoint {res['checkpoint_bytes'] / 1e9:.2f} GB; equal to zero_to_fp32: {eq['equal']} "
            f"({eq['tensors_compared']} tensors, tied lm_head == wte: {eq['tied_lm_head_equals_wte']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="2,3", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool (the best is reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep checkpoints here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="reuse checkpoints already in --workdir")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} not found: install GNU time (apt-get install time)")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_consolidate_")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        if not (args.reuse and all((args.workdir / f"zero{s}" / "checkpoints" / TAG).is_dir() for s in args.stages)):
            print(
                f"building GPT-2 124M ZeRO-{args.stages} checkpoints on 2 CPU ranks in {args.workdir} ...", flush=True
            )
            for s in args.stages:
                shutil.rmtree(args.workdir / f"zero{s}", ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(free_port()),
                __file__,
                "--worker",
                "--workdir",
                str(args.workdir),
                "--stages",
                ",".join(map(str, args.stages)),
            ]
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"building the checkpoints failed:\n{proc.stderr[-6000:]}")
        results = []
        for stage in args.stages:
            shutil.rmtree(args.workdir / f"out{stage}", ignore_errors=True)
            results.append(measure(args.workdir, stage, args.repeat))
            shutil.rmtree(args.workdir / f"out{stage}", ignore_errors=True)
        print_table(results)
        write_report(
            args.json,
            {
                "benchmark": "consolidate",
                "model": "gpt2-124M (12x768, vocab 50257), fp32, 2 ranks",
                "machine": machine(),
                "results": results,
            },
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
