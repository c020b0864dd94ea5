"""The tests' side of the process harness (`flrunner.util.processes`): waits that fail the test,
and the search for flrunner's own processes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import psutil
import pytest

from flrunner.util import processes as harness
from flrunner.util.processes import kill_processes_under, processes_under

T = TypeVar("T")

#: What `ps` shows for flrunner's processes (DESIGN.md, "Process titles"; the warm launcher's template too).
RUNTIME_TITLES = ("flrunner-parent", "flrunner-job", "flrunner-site", "flrunner-template")


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition",
             interval: float = harness.POLL_INTERVAL) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test after ``timeout``."""
    try:
        return harness.wait_for(predicate, timeout, what, interval)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def end_leftovers(root: Path, wait: float = 5.0) -> list[str]:
    """Give the processes still under ``root`` ``wait`` seconds to exit, then kill them; what was killed.

    A process that a teardown just signalled may still be exiting; one still there after ``wait``
    has leaked.
    """
    try:
        harness.wait_for(lambda: not processes_under(root), wait, "processes to exit", 0.05)
    except TimeoutError:
        pass
    return kill_processes_under(root, sweeps=1)


def is_runtime_process(cmdline: list[str], name: str) -> bool:
    """A parent, job process, site or template: by its title, or by ``python -m child[.…]`` before it set one."""
    text = " ".join(cmdline)
    if any(title in text or name.startswith(title) for title in RUNTIME_TITLES):
        return True
    return any(a == "-m" and (b == "child" or b.startswith("child.")) for a, b in zip(cmdline, cmdline[1:]))


def runtime_processes_under(root: Path) -> list[psutil.Process]:
    """Live flrunner processes whose cwd is inside ``root``.

    The cwd is what ties a process to this session (every process a test starts runs under the
    session's base temp dir; a job process in its run dir in the workspace): processes of
    another pytest session, or an operator's parent, have theirs elsewhere and are never touched.
    """
    return processes_under(root, lambda p: is_runtime_process(p.info["cmdline"] or [], p.info["name"] or ""))


def describe_all(procs: list[psutil.Process]) -> list[str]:
    """``pid PID cwd CWD: CMDLINE`` for each process still there."""
    described = []
    for p in procs:
        try:
            described.append(f"pid {p.pid} cwd {p.cwd()}: {' '.join(p.cmdline()).strip()}")
        except psutil.Error:
            continue
    return described
