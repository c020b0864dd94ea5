"""``python -m flrunner.supervisor``: the same command line as ``scripts/flrunner-supervisor``."""

import sys

from flrunner.supervisor.commands import main

sys.exit(main())
