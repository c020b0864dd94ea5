"""``python -m child.template``: a warm process that forks job processes.

It imports the job runtime once, freezes its objects out of the garbage collector (so a forked
job keeps sharing those pages instead of copying them at its first collection), and then forks a
new job process per request from the parent. It never creates a ZeroMQ context: each job
process makes its own after the fork. It talks to the parent over an inherited Unix socket
(SOCK_SEQPACKET, one msgpack map per packet) — the bootstrap, secret included, never touches
argv or the environment:

- parent -> template: ``{"op": "launch", "id", "bootstrap", "log_path", "run_dir", "env"}``
- template -> parent: ``{"op": "launched", "id", "pid"}`` or ``{"op": "failed", "id", "reason"}``,
  and ``{"op": "exit", "pid", "returncode"}`` when a job process it forked has exited.

It reaps its children in its main loop (not in a SIGCHLD handler, which forked children would
inherit), after killing what is left of the job's process group. When the parent goes away the
template exits; job processes it forked run on (they have their own link to the parent).
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket
import sys

import msgpack
import zmq  # noqa: F401,E402  (imported for the forks; never a context in the template)

# Everything a job process needs, imported once here and shared by every fork.
import child.main as child_main  # noqa: E402
import flrunner  # noqa: F401,E402  (imported for the forks, not used here)
import flrunner.security.sealed  # noqa: F401,E402  (imported on first use in a cold job process)
from flrunner.linux import pidfd_open, signal_group, stamp_environ  # noqa: E402

log = logging.getLogger("child.template")

#: The environment variable holding the inherited socket's fd number.
FD_ENV = "FLRUNNER_TEMPLATE_FD"
MAX_PACKET = 1 << 20


def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(msgpack.packb(msg, use_bin_type=True))


def _run_forked_job(request: dict, keep_closed: list[int]) -> None:
    """In the forked child: become the job process, run the job, and leave."""
    code = 1
    try:
        for fd in keep_closed:
            try:
                os.close(fd)
            except OSError:
                pass
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        out = os.open(request["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["run_dir"])
        boot = request["bootstrap"]
        # /proc/<pid>/environ shows the template's block, which this fork shares: the template was
        # started with a placeholder as long as any job id (`parent.launchers.base.job_environment`).
        stamp_environ("FLRUNNER_JOB_ID", boot["job_id"])
        os.environ.update({k: v for k, v in (request.get("env") or {}).items() if isinstance(v, str)})
        os.environ["FLRUNNER_JOB_ID"] = boot["job_id"]
        code = child_main.run_job(boot)
    except BaseException as exc:  # the job process must never return into the template's loop
        try:
            print(f"flrunner job process (forked): {type(exc).__name__}: {exc}", file=sys.stderr)
        except Exception:
            pass
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(sock: socket.socket) -> None:
    """The template's loop: fork on request, reap and report exits, stop when the parent goes."""
    children: dict[int, int] = {}  # pidfd -> pid
    gc.freeze()
    while True:
        waiting: list[socket.socket | int] = [sock, *children]
        readable, _, _ = select.select(waiting, [], [])
        for fd in readable:
            if isinstance(fd, socket.socket):
                packet = sock.recv(MAX_PACKET)
                if not packet:
                    return  # the parent closed its end: it is gone or stopping
                request = msgpack.unpackb(packet, raw=False)
                if request.get("op") != "launch":
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(sock, {"op": "failed", "id": request.get("id"), "reason": f"fork failed: {exc}"})
                    continue
                if pid == 0:
                    _run_forked_job(request, [sock.fileno(), *children])
                children[pidfd_open(pid)] = pid
                _send(sock, {"op": "launched", "id": request.get("id"), "pid": pid})
            else:  # a pidfd: that job process has exited
                pid = children.pop(fd)
                os.close(fd)
                signal_group(pid, signal.SIGKILL)  # what the job left in its group; pid not yet reaped
                _, status = os.waitpid(pid, 0)
                _send(sock, {"op": "exit", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


def main() -> int:
    fd = int(os.environ.pop(FD_ENV))
    sock = socket.socket(fileno=fd)
    import setproctitle

    setproctitle.setproctitle(f"flrunner-template: {os.environ.get('FLRUNNER_WORKSPACE', '')}".rstrip(": "))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the template stops
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
