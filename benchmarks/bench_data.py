"""Prepared data at scale: start-up and memory vs dataset size, prepare throughput, loader speed.

(a) start-up: for prepared datasets of ``--sizes`` MB of token ids (uint16), time from launching
    ``torchrun --nproc-per-node N -m seo_dist.train`` (``data.dataset=DIR``) to its first training step, and
    each rank's peak own memory (``RssAnon`` of /proc: page cache and mapped file pages excluded) and peak RSS.
    The input corpus is generated (``seo_dist.data.make_corpus``) once and given to ``prepare-data`` as often
    as needed to reach the size.
(b) prepare: ``seo-dist prepare-data`` throughput with a given tokenizer vs the tokenizer's own
    ``encode_batch_fast`` on the same in-memory documents and threads, and today's path before prepared data
    (``load_corpus`` + ``pack_blocks``), on a ``--prepare-mb`` MB corpus.
(d) today's command on a big JSONL corpus (``data.corpus=FILE``, ``--corpus-records`` generated records, 5
    steps) against the shipped corpus: wall time and peak memory per rank, first start (prepares into the
    cache) and second start (reuses it).
(c) loader: samples/s of :class:`~seo_dist.data.loader.ShardedLoader` alone over the smallest dataset
    (GPT-2 124M shapes: seq_len 1024, micro batch 8).

    python benchmarks/bench_data.py --sizes 10,100,1000 --prepare-mb 200 --out benchmarks/results/data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
TOKENS_PER_RECORD = 92  # of the generated SEO records with the default 4096-token BPE (measured)


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SEO_DIST_CACHE": str(cache), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return {**env, **extra}


def make_input(work: Path, records: int, gz: bool = True) -> Path:
    from seo_dist.data import make_corpus

    path = work / f"corpus_{records}.jsonl{'.gz' if gz else ''}"
    if not path.exists():
        recs = make_corpus.generate(records, seed=99)
        if gz:
            make_corpus.write(recs, path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def prepare(inputs: list[Path], out: Path, cache: Path, *extra: str) -> float:
    cmd = [PYTHON, "-m", "seo_dist.cli", "prepare-data", *map(str, inputs), "--out", str(out), "--overwrite", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(cache), capture_output=True, text=True)
    return time.perf_counter() - start


class _Peaks:
    """Polls the process tree of ``pid``: peak RssAnon and VmRSS (kB) per process."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peaks, self._stop = pid, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                procs = root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    status = Path(f"/proc/{p.pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                anon = int(fields.get("RssAnon", "0 kB").split()[0])
                rss = int(fields.get("VmRSS", "0 kB").split()[0])
                old = self.peaks.get(p.pid, (0, 0))
                self.peaks[p.pid] = (max(old[0], anon), max(old[1], rss))
            time.sleep(0.1)

    def stop(self) -> list[tuple[int, int]]:
        self._stop.set()
        self._thread.join()
        return sorted(self.peaks.values(), reverse=True)


def startup_row(data: str, work: Path, cache: Path, nproc: int, steps: int) -> dict:
    """One training run with ``data`` (a ``--set`` such as ``data.dataset=DIR``): launch to first step, wall
    time, and each rank's peak own memory and RSS."""
    base = work / "experiments"
    sets = [data, f"experiment.base_dir={base}", f"train.max_steps={steps}", "train.log_interval=1",
            "train.eval_interval=0", "train.eval_batches=1", "train.progress_bar=false", "checkpoint.save_interval=0",
            "experiment.checkpoint_enabled=false", "experiment.code_snapshot=false", "experiment.wandb=disabled",
            "experiment.tensorboard=false", "experiment.console=false"]  # fmt: skip
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "-m", "seo_dist.train",
           "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--set", *sets]  # fmt: skip
    launched = time.time()
    proc = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = _Peaks(proc.pid)
    out, _ = proc.communicate()
    wall = time.time() - launched
    ranks = peaks.stop()[:nproc]  # the workers are the largest processes of the tree
    if proc.returncode != 0:
        raise RuntimeError(out[-3000:])
    exp = max(base.iterdir(), key=lambda p: p.stat().st_mtime)
    rows = [json.loads(x) for x in (exp / "metrics" / "metrics.jsonl").read_text().splitlines()]
    first = min(r["time"] for r in rows if r.get("step") == 1 and "train/loss" in r)
    return {
        "to_first_step_s": round(first - launched, 2),
        "wall_s": round(wall, 2),
        "peak_own_mb_per_rank": [round(a / 1024, 1) for a, _ in ranks],
        "peak_rss_mb_per_rank": [round(r / 1024, 1) for _, r in ranks],
    }


RAW = """
import json, os, sys, time
from seo_dist.data.corpus import REQUIRED_FIELDS, record_text
from seo_dist.data.tokenizer import load_tokenizer
import gzip
tok = load_tokenizer(sys.argv[2]).backend_tokenizer
texts = [record_text(json.loads(l)) for l in open(sys.argv[1])]
start = time.perf_counter(); n = 0
for i in range(0, len(texts), 10000):
    n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 10000], add_special_tokens=False))
print(json.dumps({"tokens": n, "s": time.perf_counter() - start}))
"""

TODAY = """
import json, resource, sys, time
start = time.perf_counter()
from seo_dist.data import get_tokenizer, load_corpus, pack_blocks, split_records
c = load_corpus(sys.argv[1]); tok = get_tokenizer(c, 4096, sys.argv[2])
tr, va = split_records(c.records, 0.05)
n = pack_blocks(tr, tok, 128).numel() + pack_blocks(va, tok, 128).numel()
print(json.dumps({"tokens": n, "s": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prepare_rows(work: Path, cache: Path, mb: float, workers: int) -> dict:
    records = max(1000, int(mb * (1 << 20) / 330))  # ~330 bytes of JSON per record
    plain = make_input(work, records, gz=False)
    tok_ds = work / "tok_ds"
    prepare([make_input(work, 4000)], tok_ds, cache)  # a 4096-token BPE to share
    tokenizer = tok_ds / "tokenizer"
    env = _env(cache, RAYON_NUM_THREADS=str(workers), TOKENIZERS_PARALLELISM="true")
    raw = json.loads(subprocess.run([PYTHON, "-c", RAW, str(plain), str(tokenizer)], env=env, check=True,
                                    capture_output=True, text=True).stdout)  # fmt: skip
    took = prepare([plain], work / "prep_ds", cache, "--tokenizer", str(tokenizer), "--workers", str(workers))
    manifest = json.loads((work / "prep_ds" / "manifest.json").read_text())
    tokens = manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
    took_trained = prepare([plain], work / "prep_ds2", cache, "--workers", str(workers))
    today = json.loads(subprocess.run([PYTHON, "-c", TODAY, str(plain), str(tokenizer)], env=env, check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    return {
        "input_mb": round(plain.stat().st_size / 2**20, 1),
        "workers": workers,
        "encode_batch_tok_s": round(raw["tokens"] / raw["s"]),
        "prepare_tok_s": round(tokens / took),
        "prepare_vs_encode_batch": round((tokens / took) / (raw["tokens"] / raw["s"]), 3),
        "prepare_with_bpe_training_s": round(took_trained, 1),
        "prepare_s": round(took, 1),
        "today_s": round(today["s"], 1),
        "today_tok_s": round(today["tokens"] / today["s"]),
        "today_peak_rss_mb": round(today["peak_rss_mb"]),
    }


def corpus_rows(work: Path, cache: Path, records: int, nproc: int, steps: int) -> list[dict]:
    """Today's command on a big JSONL corpus (``data.corpus=FILE``) against the shipped corpus, each started
    twice: the first start prepares it into the cache, the second reuses it (the row that matters)."""
    big = make_input(work, records, gz=False)
    rows = []
    for name, data in (("shipped corpus", "data.corpus=null"), (f"{big.name}", f"data.corpus={big}")):
        for start in ("first", "second"):
            row = {"corpus": name, "mb": round(big.stat().st_size / 2**20) if "null" not in data else None,
                   "start": start, **startup_row(data, work, cache, nproc, steps)}  # fmt: skip
            rows.append(row)
            print(f"{name:>24} {start:>6} start: wall {row['wall_s']:>6.1f}s  own {row['peak_own_mb_per_rank']} MB  "
                  f"rss {row['peak_rss_mb_per_rank']} MB", flush=True)  # fmt: skip
    return rows


def loader_row(dataset: Path, seconds: float = 3.0) -> dict:
    from seo_dist.data.dataset import open_dataset
    from seo_dist.data.loader import ShardedLoader

    windows = open_dataset(dataset).windows("train", 1024)
    loader = ShardedLoader(windows, 8, rank=0, world_size=1, seed=0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loader.next_batch()
        n += 8
    rate = n / (time.perf_counter() - start)
    return {"samples": len(windows), "seq_len": 1024, "micro_batch": 8, "samples_per_s": round(rate),
            "tokens_per_s": round(rate * 1024)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="MB of token ids per prepared dataset")
    parser.add_argument("--prepare-mb", type=float, default=200.0, help="JSONL MB for the prepare throughput row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--corpus-records", type=int, default=200_000,
                        help="records of the big JSONL corpus run as data.corpus (0: skip that row)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data.json")
    args = parser.parse_args()
    load = os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_data_"))
    cache = work / "cache"
    sizes = [float(s) for s in args.sizes.split(",")]
    unit_mb = min(min(sizes), 10.0)  # the generated input is a list in memory: keep it small, repeat it
    unit_records = max(1000, int(unit_mb * (1 << 19) / TOKENS_PER_RECORD))  # records per unit_mb MB of tokens
    unit = make_input(work, unit_records)
    startup = []
    for mb in sizes:
        dataset = work / f"ds_{mb:g}mb"
        copies = max(1, round(mb / unit_mb))
        took = prepare([unit] * copies, dataset, cache, "--workers", str(args.workers))
        tokens = json.loads((dataset / "manifest.json").read_text())["splits"]["train"]["tokens"]
        row = {"size_mb": mb, "train_tokens": tokens, "prepare_s": round(took, 1),
               **startup_row(f"data.dataset={dataset}", work, cache, args.nproc, args.steps)}  # fmt: skip
        startup.append(row)
        print(f"{mb:>8g} MB  {tokens:>12,} tok  first step {row['to_first_step_s']:>6.1f}s  own "
              f"{row['peak_own_mb_per_rank']} MB  rss {row['peak_rss_mb_per_rank']} MB", flush=True)  # fmt: skip
    corpus = corpus_rows(work, cache, args.corpus_records, args.nproc, 5) if args.corpus_records else []
    prep = prepare_rows(work, cache, args.prepare_mb, args.workers)
    print(f"prepare: {prep['prepare_tok_s']:,} tok/s = {prep['prepare_vs_encode_batch']:.2f}x encode_batch "
          f"({prep['encode_batch_tok_s']:,} tok/s); today's path {prep['today_tok_s']:,} tok/s, "
          f"{prep['today_peak_rss_mb']} MB peak", flush=True)  # fmt: skip
    loader = loader_row(work / f"ds_{sizes[0]:g}mb")
    print(f"loader: {loader['samples_per_s']:,} samples/s of 1024 tokens", flush=True)
    write_report(args.out, {"startup": startup, "corpus": corpus, "prepare": prep, "loader": loader,
                            "machine": machine(load, workers=args.workers, nproc=args.nproc)})  # fmt: skip


if __name__ == "__main__":
    main()
