"""``python -m flrunner.supervisor``: the same command line as ``scripts/flrunner-supervisor``."""

import sys

from .commands import main

sys.exit(main())
