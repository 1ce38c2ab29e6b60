"""``seo-dist prepare-data INPUT... --out DIR``: tokenize once into a prepared dataset folder.

Train on it with ``data.dataset: DIR``. Inputs: JSONL of SEO records or with a ``text`` field, and
``.txt`` files (documents separated by blank lines), gzipped or not (see :mod:`seo_dist.data.sources`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help=".jsonl, .jsonl.gz, .txt, .txt.gz")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to create")
    parser.add_argument("--tokenizer", type=Path, help="a local tokenizer folder (default: train a byte-level BPE)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained tokenizer")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (by id hash)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="tokenizer threads (default: all cores)"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) lines that are not JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (atomically)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="close a shard at this many MB of ids")


def run(args: argparse.Namespace) -> int:
    from seo_dist.errors import UserError

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.val_fraction < 0.5:
        raise UserError(f"--val-fraction must be in [0, 0.5), got {args.val_fraction}")
    if not 256 < args.vocab_size <= 1_000_000:
        raise UserError(f"--vocab-size must be in (256, 1000000], got {args.vocab_size}")
    if args.shard_mb <= 0:
        raise UserError(f"--shard-mb must be positive, got {args.shard_mb}")
    # The tokenizer's thread pool is sized when it is first used in this process.
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.workers > 1 else "false"
    from seo_dist.data.prepare import PrepareOptions, prepare

    start = time.perf_counter()
    opts = PrepareOptions(inputs=tuple(args.inputs), out=args.out, tokenizer=args.tokenizer,
                          vocab_size=args.vocab_size, val_fraction=args.val_fraction, skip_bad=args.skip_bad,
                          overwrite=args.overwrite, shard_mb=args.shard_mb)  # fmt: skip
    manifest = prepare(opts)
    took = time.perf_counter() - start
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    skipped = f", {manifest['skipped_lines']} bad line(s) skipped" if manifest["skipped_lines"] else ""
    sys.stdout.write(
        f"prepared {args.out}: {manifest['documents']} documents -> {train['tokens']} train / {val['tokens']} val "
        f"tokens ({manifest['dtype']}, {len(train['shards'])}+{len(val['shards'])} shards) in {took:.1f}s{skipped}\n"
    )
    return 0
