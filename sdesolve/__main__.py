"""``python -m sdesolve``: the command line (see :mod:`sdesolve.cli`)."""
from .cli import main

raise SystemExit(main())
