"""`FLRunner`: drive flrunner from Python, in-process or attached to a running parent.

::

    from flrunner import FLRunner

    with FLRunner.start("/srv/fl/ws", sites_endpoint="tcp://127.0.0.1:8002") as runner:
        runner.on_status(lambda job: print(job["job_id"], job["status"]))
        job_id = runner.submit("jobs/hello")
        final = runner.wait(job_id, timeout=60)

`start` runs a parent on a background thread of this process (no signal handlers, no process
title change); `attach` talks to a parent already running on a workspace. Both use the same admin
socket, so they behave the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Sequence

from flrunner import plugins
from flrunner.admin.client import AdminClient, StatusFeed, admin_credentials, find_parent
from flrunner.errors import FlrunnerError, ParentUnavailable
from flrunner.plugins import EmbeddedParent
from flrunner.status import is_final, status_rank

log = logging.getLogger(__name__)


def follow_jobs(runner: FLRunner, feed: StatusFeed, job_ids: Sequence[str],
                on_update: Callable[[dict], None] | None = None, timeout: float | None = None, *,
                resync_every: float = 2.0,
                on_unavailable: Callable[[ParentUnavailable], None] | None = None) -> dict[str, dict]:
    """Report each new state of several jobs to ``on_update`` until all have ended; return their final records.

    ``feed`` must have been opened before the jobs' current statuses are read (best: before they
    are submitted), so no change is missed; changes older than what was already reported are
    skipped. Pushed changes drive the reports; every ``resync_every`` seconds the jobs that have
    not ended are also read directly, in case a push was lost (the parent drops pushes to a slow
    reader, and a restarted parent has forgotten the feed's subscription).

    Args:
        runner: the handle on the parent that runs the jobs.
        feed: a status feed of that parent, opened before this call.
        job_ids: the jobs to follow.
        on_update: called with each job's current record, then with each of its later states.
        timeout: seconds to wait for all jobs to end; None waits for ever.
        resync_every: seconds between direct reads of the jobs that have not ended.
        on_unavailable: called when a direct read finds the parent not answering (following goes
            on); by default a warning is logged.

    Returns:
        Each job's final record (with history), keyed by the id given in ``job_ids``.

    Raises:
        TimeoutError: some job had not ended within ``timeout`` seconds; the message names each.
    """
    if isinstance(job_ids, str):
        raise TypeError(f"job_ids must be a sequence of job ids, not the string {job_ids!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    full_ids: dict[str, str] = {}  # id as given -> id as the parent names the job
    known: dict[str, dict] = {}  # the last state reported, by the parent's job id
    for job_id in job_ids:
        job = runner.status(job_id)
        full_ids[job_id] = job["job_id"]
        known[job["job_id"]] = job
        if on_update is not None:
            on_update(job)
    resync_at = time.monotonic() + resync_every
    while not all(is_final(j["status"]) for j in known.values()):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            pending = ", ".join(f"job {j['job_id']} is still {j['status']}"
                                for j in known.values() if not is_final(j["status"]))
            raise TimeoutError(f"{pending} after {timeout}s")
        updates = []
        event = feed.next((resync_at if deadline is None else min(resync_at, deadline)) - now)
        if event is not None and event["job_id"] in known:
            updates.append(event)
        if time.monotonic() >= resync_at:
            resync_at = time.monotonic() + resync_every
            try:
                updates += [runner.status(i) for i, j in known.items() if not is_final(j["status"])]
            except ParentUnavailable as exc:
                if on_unavailable is None:
                    log.warning("%s; still waiting", exc)
                else:
                    on_unavailable(exc)
        for job in updates:
            if _is_news(job, known[job["job_id"]]):
                known[job["job_id"]] = job
                if on_update is not None:
                    on_update(job)
    return {job_id: runner.status(full_id) for job_id, full_id in full_ids.items()}


def follow_job(runner: FLRunner, feed: StatusFeed, job_id: str, on_update: Callable[[dict], None] | None = None,
               timeout: float | None = None) -> dict:
    """Report each new state of a job to ``on_update`` until it ends; return the final record.

    One job's `follow_jobs`: ``feed`` must have been opened before the job's current status is
    read, so no change is missed.

    Raises:
        TimeoutError: the job did not end within ``timeout`` seconds.
    """
    final, = follow_jobs(runner, feed, [job_id], on_update, timeout).values()
    return final


def _is_news(event: dict, known: dict) -> bool:
    """Whether a pushed state is later than (or, at the same status, different from) the known one."""
    new, old = status_rank(event["status"]), status_rank(known["status"])
    if new != old:
        return new > old
    return (event["status"], event.get("progress")) != (known["status"], known.get("progress"))


class FLRunner:
    """A handle on one parent. Thread-safe."""

    def __init__(self, admin_endpoint: str, embedded: EmbeddedParent | None = None, timeout: float = 10.0,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.admin_endpoint = admin_endpoint
        self.timeout = timeout
        self._embedded = embedded
        self._curve = curve
        self._client = AdminClient(admin_endpoint, timeout, curve)
        self._lock = threading.Lock()
        self._watchers: list[_Watcher] = []

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def start(cls, workspace: str | os.PathLike, **options: Any) -> FLRunner:
        """Start a parent on a background thread; options are `parent.ParentConfig` fields.

        Raises:
            WorkspaceBusy: another parent runs on the workspace.
            WorkspaceError: the workspace cannot be used (not a directory, read-only, a path too long).
            JobStoreError: its job store cannot be opened (not a SQLite database, corrupt).
            EndpointError: an endpoint cannot be bound (e.g. the sites port is taken).
        """
        # The parent plugs itself in (`flrunner.plugins`): flrunner does not import it.
        embedded = plugins.load(plugins.EMBEDDING, "parent")(workspace, **options)
        return cls(embedded.admin_endpoint, embedded)

    @classmethod
    def attach(cls, workspace: str | os.PathLike, timeout: float = 10.0) -> FLRunner:
        """Talk to the parent already running on ``workspace``."""
        return cls(find_parent(workspace)["admin"], timeout=timeout)

    @classmethod
    def connect(cls, kit_dir: str | os.PathLike, endpoint: str | None = None, timeout: float = 10.0) -> FLRunner:
        """Talk to a remote parent's admin socket as a provisioned admin (CURVE; jobs are uploaded).

        Args:
            kit_dir: the admin's start-up kit (``flrunner provision --admin NAME``).
            endpoint: the parent's remote admin endpoint (default: the kit's).
        """
        kit_endpoint, curve = admin_credentials(kit_dir)
        return cls(endpoint or kit_endpoint, timeout=timeout, curve=curve)

    @property
    def sites_endpoint(self) -> str | None:
        """Where sites connect (only known for a parent started by this process)."""
        return self._embedded.sites_endpoint if self._embedded is not None else None

    # --- requests ------------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def submit(self, job_dir: str | os.PathLike) -> str:
        """Validate and queue a job folder; returns its job id (raises `JobFolderError`-coded errors)."""
        return self._call(self._client.submit, job_dir)

    def status(self, job_id: str) -> dict:
        """One job with its history: ``job_id, name, status, history, pid, exit_code, signal, …``."""
        return self._call(self._client.status, job_id)

    def jobs(self) -> list[dict]:
        return self._call(self._client.jobs)

    def abort(self, job_id: str, reason: str | None = None) -> dict:
        return self._call(self._client.abort, job_id, reason)

    def clients(self) -> list[dict]:
        return self._call(self._client.clients)

    def ps(self) -> dict:
        return self._call(self._client.ps)

    def events(self) -> StatusFeed:
        """An iterator of every status change from now on (close it when done)."""
        return StatusFeed(self.admin_endpoint, self.timeout, self._curve)

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job ends; return its final record (with history).

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
        """
        with self.events() as feed:  # subscribe before reading, so no change slips between
            return follow_job(self, feed, job_id, timeout=timeout)

    def on_status(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``callback(job)`` on a background thread for every status change; returns a cancel function."""
        watcher = _Watcher(self.events(), callback)
        self._watchers.append(watcher)
        return watcher.cancel

    # --- shutdown -------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 60.0) -> None:
        """Stop watchers; stop the parent if this process started it (running jobs are aborted)."""
        for w in self._watchers:
            w.cancel()
        self._watchers.clear()
        if self._embedded is not None:
            self._embedded.stop("stopped by the embedding program")
            if not self._embedded.join(timeout):
                raise FlrunnerError(f"the parent did not stop within {timeout}s")
        self._client.close()

    def __enter__(self) -> FLRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Watcher:
    def __init__(self, feed: StatusFeed, callback: Callable[[dict], None]) -> None:
        self.feed = feed
        self.callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flrunner-status-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                job = self.feed.next(0.2)
                if job is not None:
                    try:
                        self.callback(job)
                    except Exception:
                        log.exception("status callback failed")
        finally:
            self.feed.close()

    def cancel(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
