"""`flrunner.util.processes`, the harness of the demo, the tests and the benchmarks, on real processes.

Each test runs its processes under its own folder and sweeps that folder at the end, whatever
happens, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from flrunner.util.processes import (
    Processes,
    ProcessExited,
    kill_processes_under,
    processes_under,
    stop,
    wait_for,
)

#: A process that ignores SIGTERM and starts a grandchild in its own group; both write their pid.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open("kid.pid", "w").write(str(kid.pid))
time.sleep(60)
"""

#: On SIGTERM: wait ``delay`` seconds, then append ``name`` to ``order.txt`` and exit.
POLITE = """
import signal, sys, time
name, delay = sys.argv[1], float(sys.argv[2])
def leave(*_):
    time.sleep(delay)
    with open("order.txt", "a") as f:
        f.write(name)
    sys.exit(0)
signal.signal(signal.SIGTERM, leave)
open(name + ".ready", "w").close()
time.sleep(60)
"""

#: Leaves its process group (``setsid``), as a job process does, and lives on.
RUNAWAY = """
import os, time
os.setsid()
open("runaway.ready", "w").close()
time.sleep(60)
"""


@pytest.fixture
def root(tmp: Path):
    """A folder for the test's processes; whatever runs there at the end is killed."""
    folder = tmp / "harness"
    folder.mkdir()
    yield folder
    kill_processes_under(folder)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_stop_kills_what_ignores_sigterm_and_what_it_left_in_its_group(root: Path):
    procs = Processes(root)
    p = procs.spawn(["-c", STUBBORN], "stubborn")
    kid = int(wait_for(lambda: (root / "kid.pid").exists() and (root / "kid.pid").read_text(), 10, "the grandchild"))
    t0 = time.monotonic()
    stop([p], grace=0.5)
    assert p.returncode == -9 and time.monotonic() - t0 < 5
    wait_for(lambda: gone(kid), 5, "the grandchild to be killed with the group")


def test_stop_in_turn_signals_the_next_only_once_the_previous_has_left(root: Path):
    procs = Processes(root)
    first = procs.spawn(["-c", POLITE, "A", "0.5"], "first")
    second = procs.spawn(["-c", POLITE, "B", "0"], "second")
    wait_for(lambda: (root / "A.ready").exists() and (root / "B.ready").exists(), 10, "both to be ready")
    stop([first, second], grace=10, each=5)
    assert (root / "order.txt").read_text() == "AB"  # all at once, B would have written first
    assert first.returncode == 0 and second.returncode == 0


def test_stop_all_ends_the_latest_first_and_output_is_kept(root: Path):
    procs = Processes(root)
    procs.spawn(["-c", POLITE, "A", "0"], "first")
    procs.spawn(["-c", POLITE, "B", "0.3"], "second")
    procs.spawn(["-c", "import sys; print('hello'); sys.stderr.write('oops')"], "chatty")
    wait_for(lambda: (root / "A.ready").exists() and (root / "B.ready").exists(), 10, "both to be ready")
    procs.stop_all(grace=10, each=5)
    assert (root / "order.txt").read_text() == "BA"
    assert procs.output("chatty") == "hello\noops"  # unbuffered: stdout and stderr in the order written
    assert procs.output("chatty", tail=4) == "oops"
    assert all(p.returncode is not None for p in procs.started)


def test_processes_that_left_their_group_are_found_by_cwd_and_killed(root: Path):
    procs = Processes(root)
    launcher = procs.spawn(["-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {RUNAWAY!r}])"],
                           "launcher")
    wait_for(lambda: (root / "runaway.ready").exists(), 10, "the runaway to start")
    stop([launcher], grace=1)
    left = processes_under(root)
    assert len(left) == 1 and "setsid" in " ".join(left[0].cmdline())  # stop() cannot reach it: other group
    killed = kill_processes_under(root)
    assert len(killed) == 1 and killed[0].startswith(f"{left[0].pid} ")
    wait_for(lambda: not processes_under(root), 5, "the runaway to be gone")
    assert kill_processes_under(root) == []


def test_wait_for_returns_the_value_times_out_and_sees_a_process_exit(root: Path):
    values = iter([None, 0, "", "got it"])
    assert wait_for(lambda: next(values), 5, "a value", 0.001) == "got it"
    with pytest.raises(TimeoutError, match=r"timed out after 0.1s waiting for nothing"):
        wait_for(lambda: None, 0.1, "nothing")
    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], cwd=root)
    with pytest.raises(ProcessExited, match="the parent to start: the process exited with code 3"):
        wait_for(lambda: None, 10, "the parent to start", proc=p)
