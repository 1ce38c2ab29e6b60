"""``python -m seo_dist`` is the ``seo-dist`` command."""

from seo_dist.cli import main

raise SystemExit(main())
