"""Throughput of ``seo-dist verify`` (full re-hash with a thread pool, and quick) against the raw speed of
the hash on this machine, on a synthetic checkpoint folder written through the real writer + manifest.

    python benchmarks/bench_verify.py [--files 8] [--file-mb 128] [--threads 1,2] [--out benchmarks/out/bench_verify.json]

"warm": the files are in the page cache (just written). "cold": each file's cached pages are dropped
first with posix_fadvise(DONTNEED), so the bytes come from the disk. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

from seo_dist.checkpoint.hashing import ALGORITHMS, HashingWriter, new_hasher
from seo_dist.checkpoint.manifest import Manifest, records_to_files, write_manifest
from seo_dist.checkpoint.signing import SigningKey
from seo_dist.checkpoint.verify import verify_checkpoint

CHUNK = 8 << 20


def write_checkpoint(
    folder: Path, n_files: int, file_bytes: int, algorithm: str, block: memoryview, key: SigningKey | None = None
) -> None:
    folder.mkdir(parents=True)
    records = []
    for i in range(n_files):
        w = HashingWriter(folder / f"shard_{i:03d}.pt", f"shard_{i:03d}.pt", algorithm)
        for off in range(0, file_bytes, len(block)):
            w.write(block[: min(len(block), file_bytes - off)])
        records.append(w.close())
    write_manifest(folder, Manifest(step=1, hash_algorithm=algorithm, files=records_to_files(records)), key)


def drop_cache(folder: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def raw_hash_gbps(algorithm: str, block: memoryview, total: int) -> float:
    h = new_hasher(algorithm)
    start = time.perf_counter()
    done = 0
    while done < total:
        h.update(block)
        done += len(block)
    h.hexdigest()
    return done / 1e9 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mb", type=int, default=128)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts for full verify")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument(
        "--signed",
        action="store_true",
        help="sign each manifest (HMAC-SHA256, a random key) and check the signature in every verify; "
        "xxh3_128 is skipped (a signed manifest never lists it)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_verify.json")
    args = parser.parse_args()

    file_bytes = args.file_mb << 20
    total = file_bytes * args.files
    block = memoryview(os.urandom(CHUNK))
    threads = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()
    rows = []
    key = SigningKey(os.urandom(32), "benchmark") if args.signed else None
    algorithms = [a for a in args.algorithms.split(",") if not (args.signed and a == "xxh3_128")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for algorithm in algorithms:
            folder = Path(tmp) / algorithm
            write_checkpoint(folder, args.files, file_bytes, algorithm, block, key)
            raw = raw_hash_gbps(algorithm, block, min(total, 1 << 30))
            runs = [("quick", "warm", 1)]
            runs += [("full", cache, n) for cache in ("warm", "cold") for n in threads]
            for mode, cache, n in runs:
                if cache == "cold" and not drop_cache(folder):
                    continue
                if cache == "warm":  # prime the page cache
                    verify_checkpoint(folder, "full", threads=1, key=key) if mode == "full" else None
                report = verify_checkpoint(folder, mode, threads=n, key=key)
                if not report.ok:
                    raise SystemExit(f"benchmark checkpoint failed verification: {report.summary()}")
                gbps = total / 1e9 / report.seconds
                rows.append(
                    {
                        "algorithm": algorithm,
                        "signed": key is not None,
                        "mode": mode,
                        "cache": cache,
                        "threads": n,
                        "seconds": report.seconds,
                        "gbps": gbps,
                        "raw_hash_gbps_1thread": raw,
                        "vs_raw_hash": gbps / raw if mode == "full" else None,
                    }
                )

    print(
        f"{args.files} files x {args.file_mb} MB = {total / 1e9:.2f} GB; {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.2f}; manifests {'signed, signature checked' if key else 'unsigned'}"
    )
    print(
        f"{'algorithm':<10} {'mode':<6} {'cache':<5} {'threads':>7} {'seconds':>8} {'GB/s':>7} "
        f"{'raw hash GB/s (1 thread)':>25} {'verify / raw':>13}"
    )
    for r in rows:
        ratio = f"{r['vs_raw_hash']:.2f}x" if r["vs_raw_hash"] is not None else "-"
        print(
            f"{r['algorithm']:<10} {r['mode']:<6} {r['cache']:<5} {r['threads']:>7} {r['seconds']:>8.3f} "
            f"{r['gbps']:>7.2f} {r['raw_hash_gbps_1thread']:>25.2f} {ratio:>13}"
        )
    write_report(
        args.out,
        {
            "benchmark": "bench_verify",
            "files": args.files,
            "file_mb": args.file_mb,
            "machine": machine(load_before),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
