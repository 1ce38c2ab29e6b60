"""``python -m seo_dist.export CKPT_DIR --out DIR``: the consolidate command without the rest of the CLI.

``seo-dist`` builds the parser of every subcommand (importing torch on the way); this entry point imports
neither torch nor DeepSpeed, which keeps a consolidation to a few tens of MB of memory.
"""

from __future__ import annotations

import argparse
import sys

from seo_dist.errors import UserError
from seo_dist.export import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seo_dist.export", description="ZeRO shards -> a Hugging Face model folder"
    )
    commands.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return commands.run(args)
    except UserError as e:
        sys.stderr.write(f"seo-dist consolidate: error: {e}\n")
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
