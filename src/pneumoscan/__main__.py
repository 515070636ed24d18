"""``python -m pneumoscan``: the same command line as the ``pneumoscan`` script, for environments
where the script is not on PATH (a venv not activated, a benchmark run with another interpreter)."""

from pneumoscan.interfaces.cli import main

raise SystemExit(main())
