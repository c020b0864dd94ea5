"""Sample jobs shipped with flrunner (used by ``flrunner demo`` and the tests)."""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent


def example_job(name: str) -> Path:
    return EXAMPLES_DIR / name
