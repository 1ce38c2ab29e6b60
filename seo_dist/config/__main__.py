"""``python -m seo_dist.config``: print the config reference table that README.md quotes."""

from seo_dist.config.reference import reference_markdown

print(reference_markdown())
