"""``seo-dist runs|report|compare``: run analysis subcommands (each: ``add_arguments`` + ``run``)."""
