"""``python -m bayeslat.cli``: the command line."""

from bayeslat.cli import main

raise SystemExit(main())
