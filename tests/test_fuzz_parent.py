"""``scripts/fuzz_parent.py --quick`` as a test: malformed traffic on every socket, well-formed
messages at the wrong time from real peers, a kill -9 restart of the parent in the middle of it,
and a shutdown with submits in flight.

The script runs with its temporary folder in the test's (TMPDIR) and under the `procs` fixture,
so whatever it starts is checked at teardown like any test's processes.
"""

from __future__ import annotations

import pytest

from .support import ROOT

SCRIPT = ROOT / "scripts" / "fuzz_parent.py"

def findings(output: str) -> list[str]:
    """The findings the script printed (the lines after ``FINDINGS:`` that start with ``  - ``)."""
    _, found, rest = output.partition("\nFINDINGS:")
    return [line[4:] for line in rest.splitlines() if line.startswith("  - ")] if found else []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzz_parent_quick_finds_nothing(procs, tmp):
    fuzz = procs.spawn([str(SCRIPT), "--quick"], "fuzz", env={"TMPDIR": str(tmp)})
    code = fuzz.wait(280)
    output = procs.output("fuzz")
    assert "FAILED:" not in output and "Traceback" not in output, output[-6000:]
    assert not findings(output), "\n".join(findings(output))
    assert code == 0, output[-6000:]
    assert "OK: the parent kept serving" in output
