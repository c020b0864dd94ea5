"""The flrunner supervisor: keep a flrunner parent running, stop it, report on it, and run jobs on it.

``flrunner-supervisor start`` runs ``<this python> -m flrunner parent --workspace W ...`` under a
watchdog. The watchdog restarts a parent that dies abnormally (a non-zero exit code or a signal)
after an exponential back-off, and gives up after too many crashes within a window. A parent that
exits with code 0 (an admin ``shutdown``, or a SIGTERM from someone else) is not restarted. On
SIGTERM/SIGINT the watchdog stops the parent gracefully (the parent aborts its running jobs),
SIGKILLs it and its job processes if it takes too long, and exits 0.

Modules:

- `flrunner.supervisor.watchdog`: the watchdog process (`Watchdog`, `RestartPolicy`, `kill_tree`)
  and its files in the workspace (`Files`).
- `flrunner.supervisor.commands`: the ``start``, ``stop``, ``status`` and ``run`` commands, and `main`.
- `flrunner.supervisor.errors`: the exit statuses and `SupervisorError`.

Run it as ``scripts/flrunner-supervisor`` or ``python -m flrunner.supervisor``.
"""

from __future__ import annotations

from flrunner.supervisor.commands import collect_status, main
from flrunner.supervisor.errors import EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, SupervisorError
from flrunner.supervisor.watchdog import Files, RestartPolicy, Watchdog, kill_tree, live_watchdog

__all__ = [
    "EXIT_FAILED", "EXIT_NOT_RUNNING", "EXIT_OK", "EXIT_USAGE", "Files", "RestartPolicy", "SupervisorError",
    "Watchdog", "collect_status", "kill_tree", "live_watchdog", "main",
]
