"""The ``bakeoff`` command: ``main`` (argparse and dispatch), ``commands`` (what each subcommand
does, through the public API) and ``output`` (progress bars, tables and JSON)."""
