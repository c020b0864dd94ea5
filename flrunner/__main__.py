import sys

from flrunner.admin.cli import main

sys.exit(main())
