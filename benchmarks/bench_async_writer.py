"""Thread or process for the background checkpoint writer? Step-time slowdown of a training loop while a
background writer saves staged tensors (``torch.save`` through the hashing writer, fsync), and the writer's
rate, for: no writer, a writer thread in the training process, a writer process.

One training process with one torch thread (as each rank under ``OMP_NUM_THREADS=1``) runs GPT-2 steps
(AdamW) while a ``--gb`` payload of tensors is written over and over, for ``--window-s`` seconds per
condition; conditions alternate (``--rounds``) so that load from elsewhere on the machine hits all of them
alike. Two workloads: ``gpt2`` (4 x 256, batch 8 x 128: compute-bound, like a real step) and ``tiny``
(2 x 32, batch 1 x 16: a step of a few milliseconds, bound by Python and op dispatch, so it is the one
that would show a writer thread holding the GIL). The writer process is forked with the payload already in
memory, which is what a process-based writer reading shared-memory staging buffers would cost.

    python benchmarks/bench_async_writer.py [--gb 1.0] [--window-s 4] [--rounds 5] [--workloads gpt2,tiny]

Prints a table and writes benchmarks/out/bench_async_writer.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

from seo_dist.checkpoint.hashing import write_torch_file

MODES = ("none", "thread", "process")
WORKLOADS = {  # name: (n_layer, n_embd, batch, seq); "python": no model, a pure-Python loop per step
    "gpt2": (4, 256, 8, 128),
    "tiny": (2, 32, 1, 16),
    "python": (0, 0, 0, 0),
}
PYTHON_STEP_ITERATIONS = 200_000


def make_payload(gb: float) -> dict[str, torch.Tensor]:
    """Tensors of a rank's shard: a few large fp32 partitions plus many small ones."""
    total = int(gb * 1e9) // 4
    big = [torch.randn(total // 8) for _ in range(6)]
    small = [torch.randn((total - sum(t.numel() for t in big)) // 200) for _ in range(200)]
    return {f"t{i}": t for i, t in enumerate(big + small)}


def write_loop(payload: dict[str, torch.Tensor], folder: str, stop: Any, counter: Any) -> None:
    """Write the payload again and again until ``stop`` is set; ``counter`` accumulates bytes written."""
    torch.set_num_threads(1)
    i = 0
    while not stop.is_set():
        rec = write_torch_file(payload, Path(folder), f"shard_{os.getpid()}_{i % 2}.pt", "xxh3_128")
        with counter.get_lock():
            counter.value += rec.size
        i += 1


class Workload:
    """A GPT-2 model, its optimizer and its batch shape; or, for ``python``, nothing (the step is a loop)."""

    def __init__(self, name: str) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        self.name = name
        n_layer, n_embd, self.batch, self.seq = WORKLOADS[name]
        if not n_layer:
            return
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=4096, n_positions=128, bos_token_id=0, eos_token_id=0
        )
        self.model = GPT2LMHeadModel(config)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)


def train_for(work: Workload, seconds: float) -> list[float]:
    """Step times of as many steps as fit in ``seconds`` (at least 3)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    if work.name == "python":  # holds the GIL all the time: slows down exactly as much as a writer thread holds it
        while time.perf_counter() < end or len(times) < 3:
            start = time.perf_counter()
            total = 0
            for i in range(PYTHON_STEP_ITERATIONS):
                total += i
            times.append(time.perf_counter() - start)
        return times
    model, opt = work.model, work.opt
    while time.perf_counter() < end or len(times) < 3:
        x = torch.randint(4096, (work.batch, work.seq))
        start = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def run_condition(mode: str, work: Workload, payload: dict, folder: str, seconds: float) -> dict[str, Any]:
    counter = mp.Value("d", 0.0)
    if mode == "none":
        times = train_for(work, seconds)
        return {"workload": work.name, "mode": mode, "step_s": statistics.median(times), "writer_gbps": None}
    if mode == "thread":
        stop: Any = threading.Event()
        worker: Any = threading.Thread(target=write_loop, args=(payload, folder, stop, counter), daemon=True)
    else:
        ctx = mp.get_context("fork")
        stop = ctx.Event()
        worker = ctx.Process(target=write_loop, args=(payload, folder, stop, counter), daemon=True)
    worker.start()
    time.sleep(0.5)  # let the writer get going
    start, before = time.perf_counter(), counter.value
    times = train_for(work, seconds)
    elapsed, written = time.perf_counter() - start, counter.value - before
    stop.set()
    worker.join()
    return {
        "workload": work.name,
        "mode": mode,
        "step_s": statistics.median(times),
        "writer_gbps": written / 1e9 / elapsed,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload and writer: median step time, slowdown against no writer, median writer rate."""
    rows = []
    for name in dict.fromkeys(r["workload"] for r in runs):
        mine = [r for r in runs if r["workload"] == name]
        base = statistics.median(r["step_s"] for r in mine if r["mode"] == "none")
        for mode in MODES:
            cond = [r for r in mine if r["mode"] == mode]
            step = statistics.median(r["step_s"] for r in cond)
            rates = [r["writer_gbps"] for r in cond if r["writer_gbps"] is not None]
            rows.append(
                {
                    "workload": name,
                    "mode": mode,
                    "step_s": step,
                    "slowdown_pct": 100 * (step - base) / base,
                    "slowdown_pct_per_round": [
                        100 * (r["step_s"] - n["step_s"]) / n["step_s"]
                        for r, n in zip(cond, [r for r in mine if r["mode"] == "none"])
                    ],
                    "writer_gbps": statistics.median(rates) if rates else None,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_async_writer.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = make_payload(args.gb)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for name in args.workloads.split(","):
            work = Workload(name)
            train_for(work, 1.0)  # warm-up
            for _ in range(args.rounds):
                for mode in MODES:
                    runs.append(run_condition(mode, work, payload, folder, args.window_s))
    rows = summarize(runs)
    print(
        f"payload {args.gb:.2f} GB, {args.window_s:.0f} s x {args.rounds} rounds per writer and workload; "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    print(
        f"{'workload':<9} {'writer':<8} {'median step (s)':>16} {'slowdown':>9} {'per round':>28} {'writer GB/s':>12}"
    )
    for r in rows:
        rate = f"{r['writer_gbps']:.2f}" if r["writer_gbps"] is not None else "-"
        rounds = " ".join(f"{x:+.0f}" for x in r["slowdown_pct_per_round"]) if r["mode"] != "none" else "-"
        print(
            f"{r['workload']:<9} {r['mode']:<8} {r['step_s']:>16.4f} {r['slowdown_pct']:>8.1f}% {rounds:>28} {rate:>12}"
        )
    write_report(
        args.out,
        {
            "benchmark": "bench_async_writer",
            "gb": args.gb,
            "window_s": args.window_s,
            "rounds": args.rounds,
            "machine": machine(load_before),
            "rows": rows,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
