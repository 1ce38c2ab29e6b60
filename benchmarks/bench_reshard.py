"""Resume at another world size (ZeRO state resharded) vs a same-size resume of the same checkpoint.

    python benchmarks/bench_reshard.py [--layers 12 --embd 768 --heads 12 --vocab 50257] [--stage 2]
                                       [--workdir DIR] [--json PATH]

1. Trains the model (default GPT-2 124M: 12 layers x 768, 12 heads, GPT-2's vocabulary of 50257 tokens, fp32)
   for one step on 2 CPU ranks with the trainer's CLI (``torchrun -m seo_dist.train``, ZeRO ``--stage``), which
   saves a checkpoint of step 1 the way any run does.
2. Resumes copies of that experiment for one more step, each under torchrun:
   - ``same size``: 2 ranks (DeepSpeed's own load);
   - ``2 -> 1, first``: 1 rank with train.grad_accum=2 (the same global batch): converts the checkpoint to
     DeepSpeed's universal form next to it, then loads that;
   - ``2 -> 1, reused``: the same again on the copy that now holds the universal folder (verified, reused).
   For each: wall time from launch to the first step logged (metrics.jsonl), the ``checkpoint_loaded`` and
   ``resharded`` events' seconds, and the peak RSS of each rank (psutil samples of the workers every 0.1 s).
3. Starts the same model fresh on 1 rank (no checkpoint) for the memory baseline: a rank that trains already
   holds its share of the state (fp32 weights + two Adam moments, 12 bytes per parameter, over the world size),
   so what the reshard may add on top is the largest single parameter's state (it loads one parameter at a
   time; DeepSpeed #1111 was every rank loading all of it).
4. Prints a table (time ratio vs the same-size resume, RSS above the fresh start vs the largest parameter's
   state) and writes JSON (default benchmarks/out/bench_reshard.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "out" / "bench_reshard.json"
BIN = Path(sys.executable).parent
STATE_BYTES_PER_PARAM = 12  # fp32 master weight + exp_avg + exp_avg_sq


def port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update({"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"})
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    return out


def model_sets(args: argparse.Namespace) -> list[str]:
    return [
        f"model.config.n_layer={args.layers}", f"model.config.n_embd={args.embd}", f"model.config.n_head={args.heads}",
        f"model.config.vocab_size={args.vocab}", "model.config.n_positions=1024", f"train.seq_len={args.seq_len}",
        "train.micro_batch_size=1", "train.eval_interval=0", "train.eval_batches=1", "train.log_interval=1",
        "train.warmup_steps=0", "train.progress_bar=false", f"deepspeed.zero_optimization.stage={args.stage}",
        "checkpoint.async_save=false", "checkpoint.export_final=false", "checkpoint.keep_last=4",
        "experiment.code_snapshot=false", "experiment.wandb=disabled", "experiment.console=false",
        "experiment.tensorboard=false",
    ]  # fmt: skip


class RssSampler:
    """Peak RSS per rank of a torchrun's workers (RANK from each worker's environment), sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ranks: dict[int, int] = {}
        while not self._stop.is_set():
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                break
            for p in children:
                try:
                    if p.pid not in ranks:
                        rank = p.environ().get("RANK")
                        if rank is None or p.name() not in ("python", "python3") and "python" not in p.name():
                            continue
                        ranks[p.pid] = int(rank)
                    rss = p.memory_info().rss
                except (psutil.Error, OSError, ValueError):
                    continue
                r = ranks[p.pid]
                self.peak[r] = max(self.peak.get(r, 0), rss)
            time.sleep(self.interval)

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        return dict(sorted(self.peak.items()))


def first_step_row(exp: Path, step: int) -> bool:
    path = exp / "metrics" / "metrics.jsonl"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step") == step and "train/loss" in row:
            return True
    return False


def run(cmd: list[str], cwd: Path, log: Path, exp: Path, wait_step: int | None) -> dict[str, Any]:
    """Run ``cmd``; wall time to the row of ``wait_step`` in metrics.jsonl and to the end, peak RSS per rank."""
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = RssSampler(proc.pid)
    to_step = None
    while proc.poll() is None:
        if to_step is None and wait_step is not None and first_step_row(exp, wait_step):
            to_step = time.perf_counter() - start
        time.sleep(0.1)
    peak = sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:8])} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    if to_step is None and wait_step is not None and first_step_row(exp, wait_step):
        to_step = time.perf_counter() - start
    return {"wall_s": time.perf_counter() - start, "to_first_step_s": to_step, "peak_rss_by_rank": peak}


def event_seconds(exp: Path, name: str) -> float | None:
    rows = [json.loads(line) for line in (exp / "logs" / "events.jsonl").read_text().splitlines() if line.strip()]
    found = [r for r in rows if r.get("event") == name]
    return float(found[-1]["seconds"]) if found and found[-1].get("seconds") is not None else None


def state_bound(ckpt: Path, new_world: int) -> dict[str, int]:
    """One rank's share of the saved fp32 + Adam state at ``new_world`` ranks, plus the largest parameter's."""
    import torch

    model_file = next(p for p in ckpt.glob("*model_states.pt"))
    shapes = torch.load(model_file, map_location="cpu", weights_only=False)["param_shapes"]
    numels = [int(torch.Size(s).numel()) for group in shapes for s in group.values()]
    share = sum(numels) * STATE_BYTES_PER_PARAM // new_world
    largest = max(numels) * STATE_BYTES_PER_PARAM
    return {"params": sum(numels), "share_bytes": share, "largest_param_bytes": largest, "bound_bytes": share + largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_reshard_"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "experiments"
    torchrun = [str(BIN / "torchrun"), "--master-port"]
    try:
        sets = [f"experiment.base_dir={base}", "experiment.experiment_id=saved", "train.max_steps=1", *model_sets(args)]
        cmd = [*torchrun, str(port()), "--nproc-per-node", "2", "-m", "seo_dist.train",
               "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--set", *sets]  # fmt: skip
        saved = run(cmd, work, work / "saved.log", base / "saved", None)
        ckpt = base / "saved" / "checkpoints" / "step_00000001"
        print(f"checkpoint of step 1 saved in {saved['wall_s']:.1f} s ({ckpt})")
        cases = [("same size (2 ranks)", "same", 2, []), ("2 -> 1, first (converts)", "change", 1, ["train.grad_accum=2"]),
                 ("2 -> 1, reused", "reuse", 1, ["train.grad_accum=2"])]  # fmt: skip
        results = []
        for label, copy, nproc, extra in cases:
            exp = base / copy
            shutil.copytree(base / "saved", exp)
            if copy == "reuse":  # the universal folder the previous case made, as a second resume finds it
                made = base / "change" / "checkpoints" / "step_00000001.universal"
                shutil.copytree(made, exp / "checkpoints" / made.name)
            cmd = [*torchrun, str(port()), "--nproc-per-node", str(nproc), "-m", "seo_dist.train", "--resume",
                   str(exp / "checkpoints" / "step_00000001"), "--set", "train.max_steps=2", *extra]  # fmt: skip
            res = run(cmd, work, work / f"{copy}_{len(results)}.log", exp, 2)
            res.update(case=label, ranks=nproc, loaded_s=event_seconds(exp, "checkpoint_loaded"),
                       resharded_s=event_seconds(exp, "resharded") if nproc == 1 else None)  # fmt: skip
            results.append(res)
        fresh_sets = [f"experiment.base_dir={base}", "experiment.experiment_id=fresh1", "train.max_steps=1",
                      "train.grad_accum=2", *model_sets(args)]  # fmt: skip
        cmd = [*torchrun, str(port()), "--nproc-per-node", "1", "-m", "seo_dist.train",
               "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--set", *fresh_sets]  # fmt: skip
        fresh = run(cmd, work, work / "fresh1.log", base / "fresh1", 1)
        fresh_rss = max(fresh["peak_rss_by_rank"].values())
        bound = state_bound(ckpt, 1)
        print(f"\n{bound['params'] / 1e6:.1f}M parameters, ZeRO-{args.stage}, load average {os.getloadavg()[0]:.1f}")
        print("| case | to first step (s) | load (s) | reshard (s) | peak RSS per rank (MB) |\n|---|---|---|---|---|")
        for r in results:
            rss = ", ".join(f"{v / 1e6:.0f}" for v in r["peak_rss_by_rank"].values())
            reshard = f"{r['resharded_s']:.1f}" if r["resharded_s"] is not None else "-"
            print(f"| {r['case']} | {r['to_first_step_s']:.1f} | {r['loaded_s']:.1f} | {reshard} | {rss} |")
        print(f"| 1 rank, fresh start (baseline, no load) | {fresh['to_first_step_s']:.1f} | - | - | "
              f"{fresh_rss / 1e6:.0f} |")  # fmt: skip
        for r in results[1:]:
            extra_rss = max(r["peak_rss_by_rank"].values()) - fresh_rss
            r["rss_above_fresh_1_rank_bytes"] = extra_rss
            r["time_ratio_vs_same_size"] = r["to_first_step_s"] / results[0]["to_first_step_s"]
            print(f"{r['case']}: {r['time_ratio_vs_same_size']:.2f}x the same-size time to first step (promise: <= 2x); "
                  f"peak RSS {max(r['peak_rss_by_rank'].values()) / 1e6:.0f} MB, {extra_rss / 1e6:.0f} MB above a fresh "
                  f"1-rank start, which already holds the 1-rank share of the state ({bound['share_bytes'] / 1e6:.0f} MB); "
                  f"promise: extra <= the largest parameter's state ({bound['largest_param_bytes'] / 1e6:.0f} MB)")  # fmt: skip
        write_report(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "bound": bound,
                                 "results": results, "fresh_1_rank": fresh, "saved": saved,
                                 "machine": machine(load_before)})  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
