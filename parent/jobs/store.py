"""The job store: every job and its status history in SQLite (WAL) in the workspace.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` makes every commit fsync the WAL, so a
status that was committed survives a ``kill -9`` of the parent and a crash of the machine. The
parent acknowledges a status change only after `transition` returned, i.e. after the commit.

Monotonicity: `transition` checks the state machine of `flrunner.status` inside the same
transaction that writes, so nothing ever leaves a ``FINISHED:*`` status.

Failure: a write the file system refuses (a full disk, a read-only or failing file system)
raises `StoreUnavailable` and writes nothing (the transaction is rolled back); the parent keeps
what it could not store and writes it later (`parent.jobs.held_writes`). Every write takes the time
of the event it records (``when``), so a write made late still tells when things happened.

WAL size: every commit appends to ``jobs.db-wal``; SQLite's automatic checkpoints reuse the file
but never shrink it, so after a burst it would keep the size of the busiest moment.
`QuietCheckpoints` folds it into the database and truncates it once writes have paused.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from flrunner.errors import IllegalTransition, JobStoreError, NotFound, StoreUnavailable
from flrunner.status import RunStatus, can_move

log = logging.getLogger(__name__)

#: Bumped, with a step in `JobStore._migrate`, whenever the tables change.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_time REAL NOT NULL,
    job_dir TEXT NOT NULL,
    meta TEXT NOT NULL,
    secret_hash TEXT,
    pid INTEGER,
    pid_create_time REAL,
    exit_code INTEGER,
    signal INTEGER,
    progress TEXT,
    error TEXT,
    end_time REAL
);
CREATE TABLE IF NOT EXISTS history (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    time REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

_COLUMNS = ("job_id", "name", "status", "submit_time", "job_dir", "meta", "secret_hash", "pid",
            "pid_create_time", "exit_code", "signal", "progress", "error", "end_time", "sites", "abort_reason",
            "abort_hung")
_UPDATABLE = frozenset({"pid", "pid_create_time", "exit_code", "signal", "progress", "error", "secret_hash", "sites",
                        "abort_reason", "abort_hung"})


@dataclass
class JobRecord:
    """One job as stored."""

    job_id: str
    name: str
    status: RunStatus
    submit_time: float
    job_dir: str
    meta: dict
    secret_hash: str | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    progress: Any = None
    error: str | None = None
    end_time: float | None = None
    sites: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    #: Why part of what this record shows is not stored yet (None: all of it is durable).
    store_error: str | None = None
    #: An abort requested (and acknowledged) while the job ran, and whether it was for a hang.
    abort_reason: str | None = None
    abort_hung: bool = False

    def to_dict(self, with_history: bool = False) -> dict:
        d = {
            "job_id": self.job_id, "name": self.name, "status": self.status.value,
            "submit_time": self.submit_time, "end_time": self.end_time, "job_dir": self.job_dir,
            "pid": self.pid, "exit_code": self.exit_code, "signal": self.signal,
            "progress": self.progress, "error": self.error, "sites": list(self.sites),
            "store_error": self.store_error,
        }
        if with_history:
            d["history"] = list(self.history)
        return d


class JobStore:
    """SQLite-backed jobs and history.

    Args:
        path: the database file.
        clock: epoch seconds for history times (injected for tests).
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self.error(exc) from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # Damaged pages would otherwise surface mid-flight, at the first query that reads
            # them; this check reads every page but skips the costly index cross-checks (65 ms
            # for a 40 MB store).
            (verdict,) = self.db.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                found = "; ".join(line for line in verdict.splitlines() if not line.startswith("***"))
                raise JobStoreError(f"job store {path} is corrupt ({found}); move it aside to start with an empty "
                                    f"store")
            self._migrate()
        except sqlite3.Error as exc:
            self.db.close()
            raise self.error(exc) from None
        except BaseException:
            self.db.close()
            raise

    def error(self, exc: sqlite3.Error) -> JobStoreError:
        """A one-line `JobStoreError` naming the store's file and what SQLite found wrong with it."""
        what = str(exc)
        problem = {"file is not a database": "is not a SQLite database",
                   "database disk image is malformed": "is corrupt"}.get(what)
        if problem is not None:
            return JobStoreError(f"job store {self.path} {problem} ({what}); move it aside to start with an empty "
                                 f"store")
        if "readonly" in what or "unable to open" in what:
            return JobStoreError(f"job store {self.path} cannot be opened for writing ({what}); check that the "
                                 f"workspace is writable by this user")
        return JobStoreError(f"job store {self.path}: {what}")

    def _migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION` (``PRAGMA user_version``), one step per version."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JobStoreError(f"job store {self.path} has schema version {version}; this flrunner knows up to "
                                f"{SCHEMA_VERSION} (a newer flrunner wrote it)")
        if version < 1:
            self.db.executescript(_SCHEMA)
        if version < 2:  # v2: the sites a job's site app was started on (re-adoption needs them)
            self.db.execute("ALTER TABLE jobs ADD COLUMN sites TEXT")
        if version < 3:  # v3: an acknowledged abort request survives a parent restart
            self.db.execute("ALTER TABLE jobs ADD COLUMN abort_reason TEXT")
            self.db.execute("ALTER TABLE jobs ADD COLUMN abort_hung INTEGER")
        if version < SCHEMA_VERSION:
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction; a write the file system refuses raises `StoreUnavailable`."""
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                yield
        except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error, locked
            raise StoreUnavailable(f"the job store {self.path} cannot be written: {exc}") from None

    @property
    def changes(self) -> int:
        """Rows written through this store since it was opened: tells whether anything was written since."""
        return self.db.total_changes

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it to 0 bytes (``PRAGMA wal_checkpoint(TRUNCATE)``).

        Never waits: if another connection (an operator's ``sqlite3`` shell) is reading or writing,
        it returns False at once and the caller tries again later.

        Raises:
            sqlite3.Error: the checkpoint failed (e.g. the disk is full).
        """
        # The connection's busy handler would wait up to 5 s for another connection's reader: far
        # too long for the parent's loop. Only the loop thread uses the store, so the brief change
        # cannot surprise a concurrent write.
        (patience,) = self.db.execute("PRAGMA busy_timeout").fetchone()
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            self.db.execute(f"PRAGMA busy_timeout={int(patience)}")
        return busy == 0

    def _row(self, row: tuple) -> JobRecord:
        d = dict(zip(_COLUMNS, row))
        d["status"] = RunStatus(d["status"])
        d["meta"] = json.loads(d["meta"])
        d["progress"] = json.loads(d["progress"]) if d["progress"] is not None else None
        d["sites"] = json.loads(d["sites"]) if d["sites"] else []
        d["abort_hung"] = bool(d["abort_hung"])
        return JobRecord(**d)

    def add(self, job_id: str, name: str, job_dir: str, meta: dict, secret_hash: str | None = None,
            reason: str = "submitted") -> JobRecord:
        now = self.clock()
        with self._writing():
            self.db.execute(
                "INSERT INTO jobs (job_id, name, status, submit_time, job_dir, meta, secret_hash) VALUES (?,?,?,?,?,?,?)",
                (job_id, name, RunStatus.SUBMITTED.value, now, job_dir, json.dumps(meta), secret_hash))
            self.db.execute("INSERT INTO history VALUES (?,?,?,?,?)", (job_id, 1, RunStatus.SUBMITTED.value, now, reason))
        return self.get(job_id)

    def get(self, job_id: str, with_history: bool = True) -> JobRecord:
        row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job with id '{job_id}'")
        rec = self._row(row)
        if with_history:
            rec.history = [{"status": s, "time": t, "reason": r} for s, t, r in self.db.execute(
                "SELECT status, time, reason FROM history WHERE job_id=? ORDER BY seq", (job_id,))]
        return rec

    def list(self, statuses: Iterable[RunStatus] | None = None) -> list[JobRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        args: tuple = ()
        if statuses is not None:
            wanted = [s.value for s in statuses]
            sql += f" WHERE status IN ({','.join('?' * len(wanted))})"
            args = tuple(wanted)
        return [self._row(r) for r in self.db.execute(sql + " ORDER BY submit_time, rowid", args)]

    def transition(self, job_id: str, status: RunStatus, reason: str, when: float | None = None,
                   **fields: Any) -> JobRecord:
        """Move a job to ``status`` and record why (and ``when``, default now), durably, in one
        transaction.

        Raises:
            IllegalTransition: the state machine does not allow the move (nothing is written).
            NotFound: no such job.
            StoreUnavailable: the write was refused (nothing is written).
        """
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update column(s) {sorted(bad)}")
        now = self.clock() if when is None else when
        with self._writing():
            current = self._status_of(job_id)
            if not can_move(current, status):
                raise IllegalTransition(job_id, current.value, status.value)
            sets = {"status": status.value, **self._encode(fields)}
            if status.is_final:
                sets["end_time"] = now
            self.db.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in sets)} WHERE job_id=?",
                            (*sets.values(), job_id))
            self._append_history(job_id, status, now, reason)
        return self.get(job_id)

    def update(self, job_id: str, **fields: Any) -> None:
        """Change non-status fields (progress, pid, …) durably; a finished job keeps its fields."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update column(s) {sorted(bad)}")
        enc = self._encode(fields)
        if not enc:
            return
        with self._writing():
            self.db.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in enc)} WHERE job_id=? AND status NOT LIKE 'FINISHED:%'",
                            (*enc.values(), job_id))

    def add_history(self, job_id: str, reason: str, when: float | None = None, **fields: Any) -> None:
        """A history entry that does not change the status (e.g. an abort request), with the
        ``fields`` it sets (e.g. ``abort_reason``) in the same transaction."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update column(s) {sorted(bad)}")
        now = self.clock() if when is None else when
        enc = self._encode(fields)
        with self._writing():
            self._append_history(job_id, self._status_of(job_id), now, reason)
            if enc:
                self.db.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in enc)} WHERE job_id=?",
                                (*enc.values(), job_id))

    def _status_of(self, job_id: str) -> RunStatus:
        row = self.db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job with id '{job_id}'")
        return RunStatus(row[0])

    def _append_history(self, job_id: str, status: RunStatus, now: float, reason: str) -> None:
        seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM history WHERE job_id=?", (job_id,)).fetchone()[0]
        self.db.execute("INSERT INTO history VALUES (?,?,?,?,?)", (job_id, seq, status.value, now, reason))

    @staticmethod
    def _encode(fields: dict) -> dict:
        out = dict(fields)
        for key in ("progress", "sites"):
            if key in out:
                out[key] = json.dumps(out[key]) if out[key] is not None else None
        return out

    def record_exit(self, job_id: str, exit_code: int | None, signal: int | None) -> None:
        """Record how a job's process exited, also after the job reached its final status."""
        with self._writing():
            self.db.execute("UPDATE jobs SET exit_code=?, signal=? WHERE job_id=?", (exit_code, signal, job_id))


class QuietCheckpoints:
    """Checkpoints a store's WAL once it was written and then left alone for ``quiet`` seconds.

    `tick` is cheap (a counter compare) and meant for the parent's housekeeping. Writes are noticed
    at the ticks, so the quiet period is counted from the first tick that saw no new write. The
    first quiet period after start also truncates a WAL a previous parent left behind.

    Args:
        store: the job store.
        quiet: seconds without a write before checkpointing.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, store: JobStore, quiet: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.quiet = quiet
        self.clock = clock
        self._seen = store.changes
        self._last_write = clock()
        self._checkpointed: int | None = None  # the store's write count at the last checkpoint
        self._failing = False

    def tick(self) -> bool:
        """Checkpoint if due; True if a checkpoint ran to completion."""
        changes, now = self.store.changes, self.clock()
        if changes != self._seen:
            self._seen, self._last_write = changes, now
            return False
        if changes == self._checkpointed or now - self._last_write < self.quiet:
            return False
        try:
            done = self.store.checkpoint()
        except sqlite3.Error as exc:
            if not self._failing:
                log.warning("job store %s: WAL checkpoint failed (%s); trying again at the next quiet moment",
                            self.store.path, exc)
            self._failing = True
            return False
        self._failing = False
        if done:
            self._checkpointed = changes
        return done
