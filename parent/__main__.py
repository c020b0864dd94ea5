"""``python -m parent``: the same as ``flrunner parent``."""

import sys

from flrunner.admin.cli import main

if __name__ == "__main__":
    sys.exit(main(["parent", *sys.argv[1:]]))
