"""``python -m bayeslat``: the command line."""

from bayeslat.cli import main

raise SystemExit(main())
