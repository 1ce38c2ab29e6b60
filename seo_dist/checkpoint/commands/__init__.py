"""``seo-dist`` subcommands that belong to the checkpoint component (light imports: no torch, no DeepSpeed)."""
