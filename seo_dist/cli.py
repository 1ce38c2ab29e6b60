"""The ``seo-dist`` command: a thin dispatcher; each subcommand lives with the component it serves.

Every subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A
:class:`~seo_dist.errors.UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from seo_dist.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("seo_dist.train", "train a model from a YAML config (same as python -m seo_dist.train)"),
    "prepare-data": ("seo_dist.data.commands", "tokenize JSONL/text once into memory-mapped token shards"),
    "verify": ("seo_dist.checkpoint.commands.verify", "re-hash a checkpoint folder; exit 0 valid, 1 invalid"),
    "ls": ("seo_dist.checkpoint.commands.ls", "list an experiment's committed checkpoints"),
    "consolidate": ("seo_dist.export.commands", "ZeRO shards -> a Hugging Face model folder"),
    "runs": ("seo_dist.tracking.commands.runs", "table of the experiments under a base directory"),
    "report": ("seo_dist.tracking.commands.report", "plots and a summary of one experiment"),
    "compare": ("seo_dist.tracking.commands.compare", "overlay loss curves and list differing config keys"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too; keep it short)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (others may pull in torch)."""
    parser = _Parser(prog="seo-dist", description="seo_dist: distributed training for the SEO engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                p.set_defaults(_missing=module_name)
                continue
            raise
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith(("--local_rank", "--local-rank")) for a in argv):  # appended by the deepspeed launcher
        from seo_dist import dist  # imports torch: only when needed

        argv = dist.strip_local_rank_arg(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command if command in COMMANDS else None).parse_args(argv)
    if getattr(args, "_missing", None):
        sys.stderr.write(f"seo-dist {args.command}: not available in this build ({args._missing} missing)\n")
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        sys.stderr.write(f"seo-dist {args.command}: error: {e}\n")
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
