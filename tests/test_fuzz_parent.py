"""``scripts/fuzz_parent.py --quick`` as a test: malformed traffic on every socket, well-formed
messages at the wrong time from real peers, a kill -9 restart of the parent in the middle of it,
and a shutdown with submits in flight.

The script runs with its temporary folder in the test's (TMPDIR) and under the `procs` fixture,
so whatever it starts is checked at teardown like any test's processes.
"""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "fuzz_parent.py"

#: Findings of the script that are known bugs of the product, not yet fixed: while one of them
#: shows, the test is an expected failure (and passes once none does). Any other finding fails it.
KNOWN = {
    "issue 10 item 1: a job's send_aux_request raises Unauthorized across a parent restart":
        re.compile(r"the aux loop job .*Unauthorized"),
    "an abort acknowledged just before a kill -9 of the parent is lost: nothing escalates it after the restart":
        re.compile(r"an abort acknowledged just before the kill was lost"),
}


def findings(output: str) -> list[str]:
    """The findings the script printed (the lines after ``FINDINGS:`` that start with ``  - ``)."""
    _, found, rest = output.partition("\nFINDINGS:")
    return [line[4:] for line in rest.splitlines() if line.startswith("  - ")] if found else []


@pytest.mark.timeout(300)
def test_fuzz_parent_quick_finds_nothing_unknown(procs, tmp):
    fuzz = procs.spawn([str(SCRIPT), "--quick"], "fuzz", env={"TMPDIR": str(tmp)})
    code = fuzz.wait(280)
    output = procs.output("fuzz")
    assert "FAILED:" not in output and "Traceback" not in output, output[-6000:]
    found = findings(output)
    unknown = [f for f in found if not any(pattern.search(f) for pattern in KNOWN.values())]
    assert not unknown, "\n".join(unknown)
    if found:
        pytest.xfail("known bug(s): " + "; ".join(name for name, p in KNOWN.items() if any(p.search(f) for f in found)))
    assert code == 0, output[-6000:]
    assert "OK: the parent kept serving" in output
