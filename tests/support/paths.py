"""Where the tests and the repository are."""

from __future__ import annotations

from pathlib import Path

#: The ``tests/`` folder (the ``job_components*.py`` modules that test jobs load are there).
TESTS = Path(__file__).resolve().parent.parent
#: The repository's root.
ROOT = TESTS.parent
