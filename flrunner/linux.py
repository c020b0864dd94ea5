"""The Linux specifics flrunner relies on, in one place.

- pidfds: a descriptor that becomes readable when a process exits, for any process, child or not
  (`pidfd_open`), so exits are seen by a poll loop, with no SIGCHLD handler;
- process groups: a job's processes are signalled as a group (`signal_group`), and a process is
  looked at without reaping it (`exited_unreaped`), so its pid (the group id) cannot be reused
  while the group is signalled;
- exit statuses: one decoding of a return code (`decode_exit`) for the parent, the supervisor
  and the messages users read;
- a process's state from ``/proc`` (`process_state`), read directly (a job process does not
  load psutil);
- the original environment block (`stamp_environ`): ``/proc/<pid>/environ`` shows the block a
  process was exec'ed with, which a forked job process shares with its template;
- the parent-death signal (`set_parent_death_signal`).
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass
from typing import Callable

#: ``prctl`` option that asks for a signal when the parent thread exits.
_PR_SET_PDEATHSIG = 1


def pidfd_open(pid: int) -> int:
    """A descriptor that becomes readable once process ``pid`` exits (before it is reaped).

    Raises:
        ProcessLookupError: there is no such process.
        OSError: out of descriptors, or a kernel without pidfds (Linux < 5.3).
    """
    return os.pidfd_open(pid)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone (or not ours)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def exited_unreaped(pid: int) -> bool:
    """Whether child process ``pid`` has exited, without reaping it (``waitid`` with WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass(frozen=True)
class Exit:
    """How a process ended: its exit code, or the signal that killed it, and the words for it."""

    code: int | None
    signal: int | None
    text: str


def decode_exit(returncode: int | None) -> Exit:
    """A `subprocess`-style return code (negative for a signal; None if unknown) as an `Exit`."""
    if returncode is None:
        return Exit(None, None, "exit status unknown")
    if returncode < 0:
        return Exit(None, -returncode, f"killed by {signal_name(-returncode)}")
    return Exit(returncode, None, f"exited with code {returncode}")


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number Python has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def process_state(pid: int | None) -> str | None:
    """The one-letter state of process ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie, …) from
    ``/proc/<pid>/stat``, or None if there is no such process."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The state follows the command name, which is in parentheses and may hold anything.
    end = stat.rfind(b")")
    return stat[end + 2:end + 3].decode("ascii", "replace") or None


def is_stopped(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is stopped (SIGSTOP ``T``, or a debugger ``t``)."""
    return process_state(pid) in ("T", "t")


def stamp_environ(name: str, value: str) -> bool:
    """Overwrite ``name``'s value in this process's original environment block, in place.

    ``/proc/<pid>/environ`` shows the block the process was exec'ed with; `os.environ` changes
    never reach it. The variable must already be there with a value at least as long as the new
    one (a placeholder); the rest is NUL-padded. Returns whether it was written.
    """
    try:
        libc = ctypes.CDLL(None)
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
        prefix = name.encode() + b"="
        i = 0
        while environ[i]:
            addr = environ[i]
            entry = ctypes.string_at(addr)
            if entry.startswith(prefix):
                room = len(entry) - len(prefix)
                new = value.encode()[:room]
                ctypes.memmove(addr + len(prefix), new + b"\0" * (room - len(new)), room)
                return True
            i += 1
    except (OSError, ValueError, AttributeError):  # no libc environ: the Python view still has it
        pass
    return False


def parent_death_signal_preexec(sig: int, parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for `subprocess.Popen` that makes the new process get ``sig`` when
    ``parent_pid`` (the process starting it) dies, even by SIGKILL; None where it cannot be done.
    libc is loaded here, before the fork, not in the child."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; whether it could."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False
