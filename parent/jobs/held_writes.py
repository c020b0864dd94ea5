"""The job store as the parent uses it: a write the disk refuses is held, not lost.

The parent cannot always write its store: the disk fills up (one job's output can do it), the
file system turns read-only, an I/O error strikes. A job's end must not vanish then — its
process is gone, and if its final status were dropped the store would say ``RUNNING`` for ever
and ``submit --wait`` would never return. So `HeldWrites` sits in front of the `JobStore`:

- a status transition, history entry or exit record that cannot be stored is held in memory, in
  order, with the time it happened and its real reason, and written by a retry on the loop's
  timers (1 s, doubling up to 10 s) until the store takes it; later writes of the same job queue
  behind it, so the history keeps its order;
- reads (`get`, `list`) show what is held on top of what is stored, each held history entry
  marked and the record's ``store_error`` saying why it is not stored yet — no job is shown
  ``RUNNING`` once its end is known;
- nothing held is announced: each held transition or exit record is announced once it is durable
  (`Events.writes_stored`), as the parent announces every change (after the commit);
- what was never acknowledged is refused instead of held: a submission (`add`), and a status
  update a job process sends (``hold=False``), which it sends again.

A crash of the parent loses what is held (it was never acknowledged); a restarted parent ends
such a job ``FINISHED:ABNORMAL`` as for any job it finds without a process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from flrunner.errors import IllegalTransition, StoreUnavailable
from flrunner.status import RunStatus, can_move
from flrunner.util.logthrottle import LogThrottle
from parent.events import Events
from parent.jobs.store import JobRecord, JobStore
from parent.loop.timers import Timer, Timers

log = logging.getLogger(__name__)
_failures = LogThrottle(log, "", 1)  # one line a second while the disk refuses writes

#: Seconds before the first retry of held writes; doubled after each failed one, up to RETRY_MAX.
RETRY = 1.0
RETRY_MAX = 10.0


@dataclass
class Held:
    """One write the store refused, waiting for its retry."""

    job_id: str
    #: ``transition``, ``history`` or ``exit``.
    kind: str
    when: float
    reason: str = ""
    status: RunStatus | None = None
    fields: dict = field(default_factory=dict)


class HeldWrites:
    """`JobStore` reads and writes, with refused writes held and retried (see the module doc).

    Args:
        store: the job store.
        timers: the loop's timers (retries run on the loop).
        events: told (`Events.writes_stored`, with the job's record) each time a job's held
            transitions and exit records are all stored.
        wall: epoch seconds, for the time of each held event.
    """

    def __init__(self, store: JobStore, timers: Timers, events: Events,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.timers = timers
        self.events = events
        self.wall = wall
        self._held: list[Held] = []
        self._retry: Timer | None = None
        self._delay = RETRY
        #: The last refusal while writes are held (None: everything is stored).
        self.error: str | None = None

    @property
    def path(self) -> str:
        return self.store.path

    def holding(self, job_id: str | None = None) -> bool:
        """Whether writes (of ``job_id``, or of any job) are held."""
        return any(h.job_id == job_id for h in self._held) if job_id is not None else bool(self._held)

    # --- reads -----------------------------------------------------------------------------------
    def get(self, job_id: str, with_history: bool = True) -> JobRecord:
        rec = self.store.get(job_id, with_history or self.holding(job_id))
        return self._overlay(rec) if self.holding(job_id) else rec

    def list(self, statuses: Iterable[RunStatus] | None = None) -> list[JobRecord]:
        if not self._held:
            return self.store.list(statuses)
        held = {h.job_id for h in self._held}
        recs = [self._overlay(self.store.get(r.job_id)) if r.job_id in held else r for r in self.store.list()]
        wanted = set(statuses) if statuses is not None else None
        return [r for r in recs if wanted is None or r.status in wanted]

    def _overlay(self, rec: JobRecord) -> JobRecord:
        """``rec`` as it is once its held writes are stored."""
        rec = replace(rec, history=list(rec.history), store_error=self.error)
        note = f" (not stored yet: {self.error})"
        for h in self._held:
            if h.job_id != rec.job_id:
                continue
            if h.kind == "transition":
                assert h.status is not None
                rec.status = h.status
                if h.status.is_final:
                    rec.end_time = h.when
                for key, value in h.fields.items():
                    setattr(rec, key, value)
            elif h.kind == "exit":
                rec.exit_code, rec.signal = h.fields["exit_code"], h.fields["signal"]
            else:
                for key, value in h.fields.items():
                    setattr(rec, key, value)
            if h.kind in ("transition", "history"):
                rec.history.append({"status": rec.status.value, "time": h.when, "reason": h.reason + note})
        return rec

    # --- writes ----------------------------------------------------------------------------------
    def add(self, job_id: str, name: str, job_dir: str, meta: dict) -> JobRecord:
        """Record a new job. Never held: a refused submission is answered with the error.

        Raises:
            StoreUnavailable: the store cannot be written now.
        """
        return self.store.add(job_id, name, job_dir, meta)

    def transition(self, job_id: str, status: RunStatus, reason: str, hold: bool = True,
                   **fields: Any) -> JobRecord:
        """Move a job to ``status``; its record, with ``store_error`` set if the move is held.

        Raises:
            IllegalTransition: the state machine does not allow the move (nothing is written or held).
            StoreUnavailable: ``hold`` is False and the store cannot be written now.
        """
        if self.holding(job_id):
            current = self.get(job_id, with_history=False).status
            if not can_move(current, status):
                raise IllegalTransition(job_id, current.value, status.value)
            if not hold:
                raise StoreUnavailable(f"the job store {self.path} cannot be written: {self.error}")
            return self._hold(Held(job_id, "transition", self.wall(), reason, status, fields))
        when = self.wall()
        try:
            return self.store.transition(job_id, status, reason, when=when, **fields)
        except StoreUnavailable as exc:
            if not hold:
                self._refused(exc)
                raise
            return self._hold(Held(job_id, "transition", when, reason, status, fields), exc)

    def add_history(self, job_id: str, reason: str, **fields: Any) -> None:
        """A history entry that does not change the status (and the ``fields`` it sets); held if
        the store refuses it."""
        held = Held(job_id, "history", self.wall(), reason, fields=fields)
        if self.holding(job_id):
            self._hold(held)
            return
        try:
            self.store.add_history(job_id, reason, when=held.when, **fields)
        except StoreUnavailable as exc:
            self._hold(held, exc)

    def record_exit(self, job_id: str, exit_code: int | None, signal: int | None) -> JobRecord:
        """How a job's process exited; its record (``store_error`` set if held)."""
        held = Held(job_id, "exit", self.wall(), fields={"exit_code": exit_code, "signal": signal})
        if self.holding(job_id):
            return self._hold(held)
        try:
            self.store.record_exit(job_id, exit_code, signal)
        except StoreUnavailable as exc:
            return self._hold(held, exc)
        return self.store.get(job_id, with_history=False)

    def update(self, job_id: str, **fields: Any) -> None:
        """Change non-status fields (progress, pid, …). Not held: the caller decides.

        Raises:
            StoreUnavailable: the store cannot be written now (or writes of this job are held).
        """
        if self.holding(job_id):
            raise StoreUnavailable(f"the job store {self.path} cannot be written: {self.error}")
        try:
            self.store.update(job_id, **fields)
        except StoreUnavailable as exc:
            self._refused(exc)
            raise

    # --- holding and retrying ------------------------------------------------------------------------
    def _refused(self, exc: StoreUnavailable) -> None:
        _failures.log(logging.ERROR, "%s", exc)

    def _hold(self, held: Held, exc: StoreUnavailable | None = None) -> JobRecord:
        if exc is not None:
            self.error = str(exc).rsplit(": ", 1)[-1]
            log.error("%s; holding the write (job %s: %s) and retrying until it is stored", exc, held.job_id,
                      held.reason or held.kind)
        self._held.append(held)
        if self._retry is None:
            self._delay = RETRY
            self._retry = self.timers.call_later(self._delay, self._flush)
        return self.get(held.job_id, with_history=False)

    def _flush(self) -> None:
        """Write what is held, oldest first, until the store refuses again."""
        self._retry = None
        while self._held:
            h = self._held[0]
            try:
                if h.kind == "transition":
                    assert h.status is not None
                    self.store.transition(h.job_id, h.status, h.reason, when=h.when, **h.fields)
                elif h.kind == "history":
                    self.store.add_history(h.job_id, h.reason, when=h.when, **h.fields)
                else:
                    self.store.record_exit(h.job_id, h.fields["exit_code"], h.fields["signal"])
            except StoreUnavailable as exc:
                self.error = str(exc).rsplit(": ", 1)[-1]
                _failures.log(logging.ERROR, "%s; %d write(s) held, retrying in %.0fs", exc, len(self._held), self._delay)
                self._delay = min(self._delay * 2, RETRY_MAX)
                self._retry = self.timers.call_later(self._delay, self._flush)
                return
            except IllegalTransition as exc:  # cannot happen (checked when held); never block the rest
                log.error("dropping a held write that the store refuses: %s", exc)
            self._held.pop(0)
            if h.kind != "history" and not self.holding(h.job_id):
                self.events.writes_stored(self.store.get(h.job_id, with_history=False))
        log.warning("the job store %s takes writes again; every held write is stored", self.path)
        self.error = None
