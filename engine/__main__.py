"""``python -m engine`` is the ``bakeoff`` command."""

from engine.cli.main import main

raise SystemExit(main())
