"""``python -m engine`` is the ``bakeoff`` command."""

from engine.cli import main

raise SystemExit(main())
