"""Starting, waiting on and ending the processes a driver starts: the demo, the tests, the benchmarks.

Each process runs ``sys.executable`` in a session (so a process group) of its own, with its
output appended to a file, so that it can be ended as a group: SIGTERM to each group, a grace
to leave cleanly, then SIGKILL to every group, whether or not its leader left. What a process
started outside its group (a job process in its run dir) is found by its cwd
(`processes_under`), which is how a driver checks that nothing outlived it.

- `spawn` starts one process; `Processes` starts several under one folder and ends them;
- `stop` ends a list of processes (all at once, or in turn);
- `processes_under` and `kill_processes_under` find and end what is left by cwd;
- `wait_for` polls a condition, optionally giving up when a process it depends on exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping, Sequence, TypeVar, Union

import psutil

from flrunner.errors import FlrunnerError
from flrunner.linux import signal_group

T = TypeVar("T")

#: What `subprocess.Popen` accepts for a standard stream.
Stream = Union[int, IO[Any], None]

#: How often `wait_for` looks at its condition, by default (seconds).
POLL_INTERVAL = 0.02


class ProcessExited(FlrunnerError):
    """A process that `wait_for` was told to watch exited before the condition held."""


def spawn(args: Sequence[str], log_path: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
          stdin: Stream = subprocess.DEVNULL, stdout: Stream = None) -> subprocess.Popen:
    """Start ``sys.executable *args`` in a process group of its own.

    Args:
        args: the interpreter's arguments (``["-m", "flrunner", "parent", ...]``, a script, ...).
        log_path: the file its stderr, and its stdout unless ``stdout`` is given, are appended to.
        cwd: its working directory (None: this process's).
        env: variables set on top of this process's environment; ``PYTHONUNBUFFERED=1`` is always
            set, so the log is complete up to the moment the process is killed.
        stdin: its standard input (default: none).
        stdout: its standard output, if not the log (e.g. ``subprocess.PIPE`` to read from it).

    Returns:
        The started process; its pid is also its process group id.
    """
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, *args], stdin=stdin, stdout=log if stdout is None else stdout,
                                stderr=log, cwd=cwd, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    finally:
        log.close()  # the child holds its own copy


def stop(procs: Iterable[subprocess.Popen], grace: float = 10.0, *, each: float | None = None) -> None:
    """End processes started by `spawn`: SIGTERM to each group, up to ``grace`` to exit, then SIGKILL.

    Every group is SIGKILLed at the end, also when its leader exited on time: what the leader
    left in its group goes with it. Every process is reaped and its pipes to us are closed.

    Args:
        procs: the processes, in the order to end them.
        grace: how long, in all, they get to exit after their SIGTERM.
        each: if given, they are ended in turn rather than all at once, each getting at most this
            long (within ``grace``) before the next one is signalled: a site leaves before the parent
            it would log out from.
    """
    procs = list(procs)
    deadline = time.monotonic() + grace
    if each is None:
        for p in procs:
            if p.poll() is None:
                signal_group(p.pid, signal.SIGTERM)
    for p in procs:
        if each is not None and p.poll() is None:
            signal_group(p.pid, signal.SIGTERM)
        left = deadline - time.monotonic()
        try:
            p.wait(max(0.05, left if each is None else min(each, left)))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        signal_group(p.pid, signal.SIGKILL)
        p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Processes:
    """The processes one driver starts under ``root``: their cwd, and their output files, are there.

    Args:
        root: the folder the processes run in; ``root/NAME.out`` holds the output of the one
            started as NAME.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen] = []

    def spawn(self, args: Sequence[str], name: str, *, env: Mapping[str, str] | None = None,
              stdin: Stream = subprocess.DEVNULL, stdout: Stream = None) -> subprocess.Popen:
        """`spawn` ``sys.executable *args`` with its cwd in ``root`` and its output in ``root/name.out``."""
        p = spawn(args, self.output_path(name), cwd=self.root, env=env, stdin=stdin, stdout=stdout)
        self.started.append(p)
        return p

    def output_path(self, name: str) -> Path:
        """The file that the process started as ``name`` writes to."""
        return self.root / f"{name}.out"

    def output(self, name: str, tail: int | None = None) -> str:
        """What the process started as ``name`` has written; only the last ``tail`` characters if given.

        Raises:
            OSError: it wrote nothing yet (or was never started).
        """
        text = self.output_path(name).read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def stop(self, procs: Iterable[subprocess.Popen], grace: float = 10.0, *, each: float | None = None) -> None:
        """`stop` some of the processes (the module function, for symmetry with `stop_all`)."""
        stop(procs, grace, each=each)

    def stop_all(self, grace: float = 15.0, *, each: float | None = 5.0) -> None:
        """End every process started here, the latest first (sites before the parent they talk to)."""
        stop(list(reversed(self.started)), grace, each=each)


def processes_under(root: Path, where: Callable[[psutil.Process], bool] | None = None) -> list[psutil.Process]:
    """Live processes, other than this one, whose cwd is ``root`` or inside it.

    Args:
        root: the folder (compared resolved: psutil reports a resolved cwd, and /tmp may be a link).
        where: if given, only the processes it accepts; they come with ``info`` holding pid, name,
            cmdline, cwd and status.
    """
    me, prefix, found = os.getpid(), os.path.realpath(root), []
    # Every process's cwd is read; its command line only when a filter may look at it.
    attrs = ["pid", "cwd", "status"] + (["name", "cmdline"] if where is not None else [])
    for p in psutil.process_iter(attrs):
        try:
            cwd = p.info["cwd"]
            if p.pid == me or not cwd or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (cwd == prefix or cwd.startswith(prefix + os.sep)) and (where is None or where(p)):
                found.append(p)
        except psutil.Error:
            continue
    return found


def describe(proc: psutil.Process, width: int = 80) -> str:
    """``"PID COMMAND LINE"`` (cut at ``width``), or the pid alone once the process is gone."""
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:width]}"
    except psutil.Error:
        return str(proc.pid)


def kill_processes_under(root: Path, sweeps: int = 3, interval: float = 0.2) -> list[str]:
    """SIGKILL every process with its cwd under ``root``, and its group; return what was killed.

    Args:
        root: the folder.
        sweeps: how many times (``interval`` apart) to look, for processes forked while sweeping.
        interval: the pause between sweeps (seconds).

    Returns:
        One `describe` line for each process killed (empty when none was left).
    """
    killed: list[str] = []
    for i in range(sweeps):
        left = processes_under(root)
        if not left:
            break
        for proc in left:
            killed.append(describe(proc))
            signal_group(proc.pid, signal.SIGKILL)  # a group leader takes its group; otherwise a no-op
            try:
                proc.kill()
            except psutil.Error:
                pass
        if i + 1 < sweeps:
            time.sleep(interval)
    return killed


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str = "condition",
             interval: float = POLL_INTERVAL, *, proc: subprocess.Popen | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Args:
        predicate: the condition; called at least once.
        timeout: how long to wait (seconds).
        what: what is waited for, for the error.
        interval: the pause between two polls (seconds).
        proc: a process the condition depends on; its exit ends the wait.

    Raises:
        TimeoutError: ``timed out after 5s waiting for <what>``.
        ProcessExited: ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what}: the process exited with code {proc.returncode}")
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
