"""What the tests share that is not a fixture (the fixtures are in ``tests/conftest.py``).

- `FakeClock`: the one fake clock of the unit tests;
- `wait_for`: poll a condition, failing the test on timeout; `processes_under` and
  `runtime_processes_under` find what runs under a folder (the harness itself is
  `flrunner.util.processes`, which the demo and the benchmarks use too);
- `ParentHandle`, `provision_project`, `site_names`, `start_kit_site`: real parents and sites;
- `JobFolders` (behind ``make_job``) and `job_copy`: job folders;
- `call`, `receive`, `reply_to`, `raw_login`: raw ZeroMQ peers;
- `Supervisor`, `PARENT_OPTS`, `START`: ``scripts/flrunner-supervisor`` (behind ``sup``).
"""

from __future__ import annotations

from flrunner.util.processes import Processes

from .clock import FakeClock
from .jobs import JobFolders, job_copy
from .parent import ParentHandle, provision_project
from .paths import ROOT, TESTS
from .peers import call, raw_login, receive, reply_to
from .processes import processes_under, runtime_processes_under, wait_for
from .sites import site_names, start_kit_site
from .supervisor import PARENT_OPTS, START, Supervisor, alive

__all__ = [
    "PARENT_OPTS", "ROOT", "START", "TESTS", "FakeClock", "JobFolders", "ParentHandle", "Processes", "Supervisor",
    "alive", "call", "job_copy", "processes_under", "provision_project", "raw_login", "receive", "reply_to",
    "runtime_processes_under", "site_names", "start_kit_site", "wait_for",
]
