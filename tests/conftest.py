"""Fixtures that start real parents, sites and job processes, and always end them.

Every process a test starts runs in its own process group and has its cwd under the test's
temporary folder; teardown SIGTERMs then SIGKILLs those groups, and an autouse check fails the
test if any process with its cwd under that folder is still alive afterwards (job processes run
in their run dir inside the workspace, so a leaked job is caught too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
import pytest

from flrunner.admin.client import AdminClient, StatusFeed, find_parent
from flrunner.errors import ParentUnavailable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def provision_project(tmp: Path, sites: Sequence[str] = (), admins: Sequence[str] = ()) -> Path:
    """``flrunner provision`` of ``tmp/project`` with kits for ``sites`` and ``admins``; returns its folder."""
    out = tmp / "project"
    args = [a for name in sites for a in ("--site", name)] + [a for name in admins for a in ("--admin", name)]
    subprocess.run([sys.executable, "-m", "flrunner", "provision", "--out", str(out), *args], check=True,
                   capture_output=True)
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Procs:
    """Processes started by one test; all of them end at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen] = []

    def spawn(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "ab")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        p = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.root, env=full_env, start_new_session=True)
        log.close()
        self.started.append(p)
        return p

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop_all(self) -> None:
        # Latest first (sites before the parent they talk to), each given a moment to leave
        # cleanly; then whatever is left of every group is killed.
        deadline = time.monotonic() + 15
        for p in reversed(self.started):
            if p.poll() is None:
                _kill_group(p.pid, signal.SIGTERM)
                try:
                    p.wait(max(0.1, min(5.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
        for p in reversed(self.started):
            _kill_group(p.pid, signal.SIGKILL)
            p.wait()


def processes_under(root: Path) -> list[psutil.Process]:
    """Live processes whose cwd is inside ``root`` (our parents, sites and job processes)."""
    me = os.getpid()
    found = []
    prefix = str(root)
    for p in psutil.process_iter(["pid", "cwd", "status"]):
        try:
            cwd = p.info["cwd"]
            if p.pid != me and cwd and (cwd == prefix or cwd.startswith(prefix + os.sep)) \
                    and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def mount_tmpfs(tmp: Path):
    """``mount_tmpfs(name="disk", size="8m")`` -> a small tmpfs mounted at ``tmp/name``: a disk that
    fills up. Tests run as root in CI; where the mount is refused the test is skipped with the
    reason. Request this fixture before ``start_parent``/``procs``, so the processes are ended
    before it is unmounted."""
    mounted: list[Path] = []

    def mount(name: str = "disk", size: str = "8m") -> Path:
        mnt = tmp / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs for a full disk ({r.stderr.strip() or r.returncode}): needs root")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # still busy: detach it now


@pytest.fixture
def procs(tmp: Path):
    """Start processes for a test; end them at teardown and fail if any process outlives it."""
    tracker = Procs(tmp)
    yield tracker
    tracker.stop_all()
    deadline = time.monotonic() + 5
    left = processes_under(tmp)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_under(tmp)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left if p.is_running()]}"


class ParentHandle:
    """A real parent process started by a test."""

    def __init__(self, procs: Procs, workspace: Path, name: str, args: list[str]) -> None:
        self.procs = procs
        self.workspace = workspace
        self.name = name
        self.proc = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(workspace),
                                 "--sites", "tcp://127.0.0.1:*", *args], name)
        self.info = wait_for(self._info, 20, f"parent {name} to publish parent.json")
        self.admin = AdminClient(self.info["admin"], timeout=10)

    def _info(self) -> dict | None:
        if self.proc.poll() is not None:
            pytest.fail(f"parent exited with {self.proc.returncode}:\n{self.procs.output(self.name)}")
        try:
            info = find_parent(self.workspace)
        except ParentUnavailable:
            return None
        return info if info.get("pid") == self.proc.pid else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def sites_endpoint(self) -> str:
        return self.info["sites"]

    def feed(self) -> StatusFeed:
        return StatusFeed(self.info["admin"])

    def wait_status(self, job_id: str, predicate: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        """Wait, on pushed status changes, until ``predicate(job)`` holds; return the job with history."""
        with self.feed() as feed:
            deadline = time.monotonic() + timeout
            job = self.admin.status(job_id)
            while not predicate(job):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"job {job_id} never matched; last: {json.dumps(self.admin.status(job_id), indent=1)}")
                event = feed.next(min(left, 0.5))
                job = self.admin.status(job_id) if event is None or event["job_id"] == job_id else job
            return self.admin.status(job_id)

    def wait_final(self, job_id: str, timeout: float = 20.0) -> dict:
        return self.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:"), timeout)

    def stop(self, timeout: float = 30.0) -> int:
        self.admin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.admin.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start_parent(procs: Procs, tmp: Path):
    """``start_parent(*extra_cli_args, workspace=None, name="parent")`` -> `ParentHandle`."""
    handles: list[ParentHandle] = []

    def start(*args: str, workspace: Path | None = None, name: str = "parent") -> ParentHandle:
        h = ParentHandle(procs, workspace or tmp / "ws", name, list(args))
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.admin.close()


@pytest.fixture
def parent(start_parent) -> ParentHandle:
    """A parent with short graces so abort and shutdown tests run fast."""
    return start_parent("--abort-grace", "1", "--term-grace", "1", "--site-timeout", "5")


@pytest.fixture
def start_site(procs: Procs):
    """``start_site(parent, name)`` -> the site's Popen; it is logged in when this returns."""

    def start(parent: ParentHandle, name: str, wait: bool = True) -> subprocess.Popen:
        p = procs.spawn(["-m", "flrunner", "site", "--name", name, "--server", parent.sites_endpoint], f"site-{name}")
        if wait:
            wait_for(lambda: any(c["name"] == name for c in parent.admin.clients()), 15, f"site {name} to log in")
        return p

    return start


@pytest.fixture
def make_job(tmp: Path):
    """``make_job(workflows, components=(), name="test-job", site_app=None, sites=None, **meta)`` -> a job folder.

    ``workflows`` and ``components`` are lists of ``(id, class, args)``; a class is a name in
    ``tests/job_components.py`` or ``module.Class`` for any ``tests/job_components*.py`` module (all
    of them are copied into the job's ``custom/`` folders).
    ``site_app``, if given, is ``{"components": [...], "executors": [(tasks, class name, args), ...]}``
    and is deployed to ``sites`` (a list of names, default ``["@ALL"]``-style: every site).
    Extra keyword arguments go into ``meta.json``.
    """
    counter = [0]

    def path(cls: str) -> str:
        return cls if "." in cls else f"job_components.{cls}"

    def entries(items):
        return [{"id": i, "path": path(cls), "args": args} for i, cls, args in items]

    def app(folder: Path, configs: dict[str, dict]) -> None:
        (folder / "config").mkdir(parents=True)
        (folder / "custom").mkdir()
        for module in HERE.glob("job_components*.py"):
            shutil.copy(module, folder / "custom" / module.name)
        for config_name, config in configs.items():
            (folder / "config" / config_name).write_text(json.dumps(config))

    def make(workflows: list, components: list = (), name: str = "test-job", site_app: dict | None = None,
             sites: list | None = None, **meta: Any) -> Path:
        counter[0] += 1
        folder = tmp / f"job{counter[0]}"
        server = {"format_version": 2, "workflows": entries(workflows), "components": entries(components)}
        if site_app is None:
            app(folder / "app_server", {"config_fed_server.json": server})
            deploy_map = {"app_server": ["server"]}
        else:
            client = {"format_version": 2, "components": entries(site_app.get("components", [])),
                      "executors": [{"tasks": list(tasks), "executor": {"path": path(cls), "args": args}}
                                    for tasks, cls, args in site_app.get("executors", [])]}
            if sites:  # the server's app and the sites' app apart
                app(folder / "app_server", {"config_fed_server.json": server})
                app(folder / "app_site", {"config_fed_client.json": client})
                deploy_map = {"app_server": ["server"], "app_site": list(sites)}
            else:  # one app for the server and every site
                app(folder / "app", {"config_fed_server.json": server, "config_fed_client.json": client})
                deploy_map = {"app": ["@ALL"]}
        (folder / "meta.json").write_text(json.dumps({"name": name, "deploy_map": deploy_map, **meta}))
        return folder

    return make


# --- session-wide: no runtime process outlives the test session ----------------------------------------

#: What `ps` shows for flrunner's processes (DESIGN.md, "Process titles"; the warm launcher's template too).
RUNTIME_TITLES = ("flrunner-parent", "flrunner-job", "flrunner-site", "flrunner-template")


def _is_runtime_process(cmdline: list[str], name: str) -> bool:
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
    prefix = os.path.realpath(root)
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "cwd", "status"]):
        try:
            cwd = p.info["cwd"]
            if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE or not cwd:
                continue
            if (cwd == prefix or cwd.startswith(prefix + os.sep)) and \
                    _is_runtime_process(p.info["cmdline"] or [], p.info["name"] or ""):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_runtime_process_outlives_the_session(tmp_path_factory):
    """At the end of the session, fail the run if a parent, job process or site started by it is still
    alive: list them, kill them, then fail (as an error in this fixture's teardown)."""
    base = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 3  # processes the last teardown signalled may still be exiting
    left = runtime_processes_under(base)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = runtime_processes_under(base)
    if not left:
        return
    described = []
    for p in left:
        try:
            described.append(f"pid {p.pid} cwd {p.cwd()}: {' '.join(p.cmdline()).strip()}")
            p.kill()
        except psutil.Error:
            continue
    pytest.fail(f"{len(left)} flrunner process(es) outlived the test session (now killed):\n  "
                + "\n  ".join(described), pytrace=False)
