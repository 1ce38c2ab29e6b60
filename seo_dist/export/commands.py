"""``seo-dist consolidate CKPT_DIR --out DIR``: a ZeRO checkpoint -> a Hugging Face model folder.

Exit codes: 0 exported, 1 the input is damaged (the file is named), 2 bad usage or not a checkpoint.
Module-level imports stay light: the CLI imports every subcommand module to build its parser.
"""

from __future__ import annotations

import argparse
import sys

from seo_dist.checkpoint.verify import VERIFY_MODES  # light: no torch

OUTPUT_DTYPE_CHOICES = ("fp32", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ckpt_dir",
        metavar="CKPT_DIR",
        help="a checkpoint folder (checkpoints/step_XXXXXXXX), an experiment directory or its "
        "checkpoints/ folder (then the latest checkpoint, or the best with --best)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the model folder to write (replaced atomically)")
    parser.add_argument(
        "--dtype",
        choices=OUTPUT_DTYPE_CHOICES,
        default="fp32",
        help="dtype of the floating-point weights written (default: fp32, the master weights)",
    )
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="split the weights into shards of at most SIZE (e.g. 5GB, 500MB; default 5GB)",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="the best checkpoint by the tracked metric (index.json) instead of the latest",
    )
    parser.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="full",
        help="check the input against its manifest (hashes: full, the default; sizes: quick; off); "
        "nothing is published under --out unless the check passes",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="DIR",
        default=None,
        help="copy the tokenizer from DIR (default: found next to the checkpoint)",
    )
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        default=None,
        help="check the input's signature and sign the output's manifest with the key in PATH (default: "
        "$SEO_DIST_SIGNING_KEY_FILE, else $SEO_DIST_SIGNING_KEY, else no signing)",
    )


def run(args: argparse.Namespace) -> int:
    from seo_dist.checkpoint.signing import load_signing_key
    from seo_dist.export.consolidate import consolidate_checkpoint
    from seo_dist.export.errors import CorruptCheckpointError

    try:
        result = consolidate_checkpoint(
            args.ckpt_dir,
            args.out,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            best=args.best,
            verify=args.verify,
            tokenizer_dir=args.tokenizer,
            signing_key=load_signing_key(args.key_file),
        )
    except CorruptCheckpointError as e:
        sys.stderr.write(f"seo-dist consolidate: error: {e}\n")
        return e.exit_code
    for warning in result.warnings:
        sys.stderr.write(f"seo-dist consolidate: warning: {warning}\n")
    print(result.summary())
    for what, origin in result.sources.items():
        print(f"  {what}: {origin}")
    return 0
