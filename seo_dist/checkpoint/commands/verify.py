"""``seo-dist verify CKPT_DIR [--quick] [--key-file PATH]``: exit 0 valid, 1 invalid (one line per bad file, a
``signature mismatch`` or an ``unsigned`` manifest when a key is given), 2 usage error. A folder written by
``seo-dist prepare-data`` is verified against its own manifest the same way (every shard re-hashed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seo_dist.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ckpt_dir",
        metavar="CKPT_DIR",
        help="one checkpoint folder, e.g. EXP/checkpoints/step_00000100, or a prepared dataset folder",
    )
    parser.add_argument("--quick", action="store_true", help="check presence and sizes only (no re-hash)")
    parser.add_argument(
        "--threads", type=int, default=None, help="files hashed in parallel (default: CPU count, max 8)"
    )
    parser.add_argument(
        "--key-file",
        default=None,
        metavar="PATH",
        help="check the manifest's signature with the key in PATH (default: $SEO_DIST_SIGNING_KEY_FILE, "
        "else $SEO_DIST_SIGNING_KEY, else the signature is not checked)",
    )


def _looks_like_checkpoint(path: Path) -> bool:
    from seo_dist.checkpoint.layout import MANIFEST, STAGING_SUFFIX, parse_step

    name = path.name.removesuffix(STAGING_SUFFIX)
    return (path / MANIFEST).exists() or parse_step(name) is not None or any(path.glob("*.pt"))


def check_target(path: Path) -> None:
    """Usage errors: a missing path, a file, or a folder that is not one checkpoint (with a hint)."""
    from seo_dist.checkpoint.layout import resolve_checkpoints_root, step_dirs

    if not path.exists():
        raise UserError(f"{path} does not exist; give a checkpoint folder such as EXP/checkpoints/step_00000100")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give a checkpoint folder such as EXP/checkpoints/step_00000100")
    if _looks_like_checkpoint(path):
        return
    inside = step_dirs(resolve_checkpoints_root(path))
    if inside:
        raise UserError(
            f"{path} holds checkpoints but is not one; verify one folder, e.g. seo-dist verify {inside[-1]}"
        )
    raise UserError(f"{path} is not a checkpoint folder (no manifest.json, no checkpoint files)")


def _is_dataset(path: Path) -> bool:
    """A folder whose manifest is a prepared dataset's (the data package, which imports torch, only then)."""
    try:
        form = json.loads((path / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    from seo_dist.checkpoint.manifest import FORMAT as CHECKPOINT_FORMAT

    if form is None or form == CHECKPOINT_FORMAT:
        return False
    from seo_dist.data.dataset import FORMAT

    return bool(form == FORMAT)


def verify_dataset(path: Path, quick: bool) -> int:
    """A prepared dataset: every file's size, and unless ``quick`` its hash, against the dataset's manifest."""
    from seo_dist.data.dataset import file_problems, read_manifest

    manifest = read_manifest(path)
    problems = list(file_problems(path, manifest, "sizes" if quick else "full"))
    if not problems:
        files = manifest["files"]
        print(
            f"{path.name}: OK (dataset, {len(files)} files, {sum(f['size'] for f in files.values())} bytes, "
            f"{'sizes' if quick else manifest['hash_algorithm']} checked)"
        )
        return 0
    for problem in problems:
        print(f"BAD {problem}")
    print(f"{path.name}: INVALID dataset ({len(problems)} bad file(s))", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from seo_dist.checkpoint.signing import load_signing_key
    from seo_dist.checkpoint.verify import verify_checkpoint

    path = Path(args.ckpt_dir)
    if _is_dataset(path):
        return verify_dataset(path, args.quick)
    check_target(path)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    key = load_signing_key(args.key_file)
    report = verify_checkpoint(path, "quick" if args.quick else "full", threads=args.threads, key=key)
    if report.ok:
        print(report.summary())
        return 0
    for problem in report.problems:
        print(f"BAD {path / problem.path}: {problem.detail}")
    print(f"{path.name}: INVALID ({len(report.problems)} bad file(s))", file=sys.stderr)
    return 1
