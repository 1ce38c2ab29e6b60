"""Which hash for checkpoint manifests? Raw speed of each algorithm, and what hashing while writing
costs on top of a write+fsync of the same bytes (the one-pass design of seo_dist.checkpoint.hashing).
Also what a signing key adds: the HMAC-SHA256 over a manifest (signing it, and checking it on load) and, for
comparison, blake3 in keyed mode (seo_dist signs the manifest and hashes files with plain blake3 instead).

    python benchmarks/bench_hash.py [--size-mb 512] [--repeat 3] [--dir DIR] [--out benchmarks/out/bench_hash.json]

Prints a table and writes JSON. Numbers depend on the machine and on what else runs on it: the JSON
records the CPU count and the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine, write_report  # benchmarks/ is on sys.path: these run as scripts

from seo_dist.checkpoint.hashing import ALGORITHMS, HashingWriter, new_hasher
from seo_dist.checkpoint.signing import SigningKey, check_signature, sign

CHUNK = 4 << 20  # what torch.save hands the writer for a large tensor is one call; 4 MB keeps memory flat


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hash_in_memory(data: memoryview, algorithm: str) -> None:
    h = new_hasher(algorithm)
    for i in range(0, len(data), CHUNK):
        h.update(data[i : i + CHUNK])
    h.hexdigest()


def blake3_threaded(data: memoryview) -> None:
    from blake3 import blake3

    h = blake3(max_threads=blake3.AUTO)
    for i in range(0, len(data), 64 << 20):
        h.update(data[i : i + (64 << 20)])
    h.hexdigest()


def blake3_keyed(data: memoryview) -> None:
    from blake3 import blake3

    h = blake3(key=bytes(32))
    for i in range(0, len(data), CHUNK):
        h.update(data[i : i + CHUNK])
    h.hexdigest()


def manifest_like(n_files: int) -> dict:
    """A manifest's shape: ZeRO shards with sizes and hashes, plus a job config of a few hundred keys."""
    files = {
        f"zero_pp_rank_{i}_mp_rank_00_optim_states.pt": {"size": 10**9 + i, "hash": "ab" * 32} for i in range(n_files)
    }
    config = {f"section{i}": {f"key{j}": j * 0.5 for j in range(20)} for i in range(15)}
    return {
        "format": "seo_dist.checkpoint/1",
        "step": 1000,
        "hash_algorithm": "blake3",
        "files": files,
        "config": config,
    }


def signing_cost(repeat: int, n_files: int) -> dict[str, float]:
    """Microseconds to sign a manifest of ``n_files`` files and to check its signature."""
    key = SigningKey(bytes(range(32)), "benchmark")
    data = manifest_like(n_files)
    rounds = 200
    sign_s = best_of(repeat, lambda: [sign(data, key) for _ in range(rounds)]) / rounds
    signed = {**data, "signature": sign(data, key)}
    check_s = best_of(repeat, lambda: [check_signature(signed, key) for _ in range(rounds)]) / rounds
    return {"n_files": n_files, "sign_us": sign_s * 1e6, "check_us": check_s * 1e6}


def plain_write(path: Path, data: memoryview) -> None:
    with open(path, "wb", buffering=0) as f:
        for i in range(0, len(data), CHUNK):
            f.write(data[i : i + CHUNK])
        os.fsync(f.fileno())
    path.unlink()


def hashing_write(path: Path, data: memoryview, algorithm: str) -> None:
    w = HashingWriter(path, path.name, algorithm)
    for i in range(0, len(data), CHUNK):
        w.write(data[i : i + CHUNK])
    w.close()
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "bench_hash.json")
    args = parser.parse_args()

    size = args.size_mb << 20
    data = memoryview(os.urandom(size))
    gb = size / 1e9
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        target = Path(tmp) / "bench.bin"
        write_s = best_of(args.repeat, lambda: plain_write(target, data))
        for algorithm in ALGORITHMS:
            hash_s = best_of(args.repeat, lambda a=algorithm: hash_in_memory(data, a))
            both_s = best_of(args.repeat, lambda a=algorithm: hashing_write(target, data, a))
            rows.append(
                {
                    "algorithm": algorithm,
                    "hash_gbps": gb / hash_s,
                    "write_fsync_gbps": gb / write_s,
                    "hashing_write_fsync_gbps": gb / both_s,
                    "overhead_pct": 100 * (both_s / write_s - 1),
                }
            )
    threaded = gb / best_of(args.repeat, lambda: blake3_threaded(data))
    keyed = gb / best_of(args.repeat, lambda: blake3_keyed(data))
    signing = [signing_cost(args.repeat, n) for n in (2, 64, 512)]

    print(
        f"{args.size_mb} MB, best of {args.repeat}; write+fsync alone: {rows[0]['write_fsync_gbps']:.2f} GB/s; "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f}"
    )
    print(f"{'algorithm':<10} {'hash GB/s':>10} {'write+hash+fsync GB/s':>22} {'cost vs plain write':>20}")
    for r in rows:
        print(
            f"{r['algorithm']:<10} {r['hash_gbps']:>10.2f} {r['hashing_write_fsync_gbps']:>22.2f} "
            f"{r['overhead_pct']:>19.1f}%"
        )
    print(f"blake3 with its own threads (max_threads=AUTO): {threaded:.2f} GB/s; blake3 keyed mode: {keyed:.2f} GB/s")
    for row in signing:
        print(
            f"HMAC-SHA256 manifest signature, {row['n_files']} files: sign {row['sign_us']:.0f} us, "
            f"check {row['check_us']:.0f} us"
        )
    write_report(
        args.out,
        {
            "benchmark": "bench_hash",
            "size_mb": args.size_mb,
            "repeat": args.repeat,
            "chunk_bytes": CHUNK,
            "machine": machine(load_before),
            "results": rows,
            "blake3_threaded_gbps": threaded,
            "blake3_keyed_gbps": keyed,
            "signing": signing,
        },
    )


if __name__ == "__main__":
    main()
