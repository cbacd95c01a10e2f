"""engine.cli.main."""
