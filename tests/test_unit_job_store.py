"""Unit tests of `parent.jobs.store.JobStore` on a temporary SQLite file."""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from pathlib import Path

import pytest

from flrunner.errors import IllegalTransition, NotFound
from flrunner.status import TRANSITIONS, RunStatus, can_move
from parent.jobs.store import JobStore, QuietCheckpoints

from .support import FakeClock


def history_clock() -> FakeClock:
    """Every reading one second later than the last: history times are strictly ordered."""
    return FakeClock(1_700_000_000.0, step=1.0)


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(str(tmp_path / "jobs.db"), clock=history_clock())
    yield s
    s.close()


def _path_to(target: RunStatus) -> list[RunStatus]:
    """The shortest list of transitions from SUBMITTED to ``target`` (BFS over TRANSITIONS)."""
    prev: dict[RunStatus, RunStatus | None] = {RunStatus.SUBMITTED: None}
    q = deque([RunStatus.SUBMITTED])
    while q:
        s = q.popleft()
        for n in sorted(TRANSITIONS[s], key=lambda x: x.value):
            if n not in prev:
                prev[n] = s
                q.append(n)
    assert target in prev, f"{target} is unreachable from SUBMITTED"
    path = []
    cur: RunStatus | None = target
    while cur is not None and cur != RunStatus.SUBMITTED:
        path.append(cur)
        cur = prev[cur]
    return list(reversed(path))


_n = 0


def _add_at(store: JobStore, status: RunStatus) -> str:
    global _n
    _n += 1
    job_id = f"job-{_n}"
    store.add(job_id, "name", "/tmp/x", {"name": "name"})
    for s in _path_to(status):
        store.transition(job_id, s, f"to {s.value}")
    assert store.get(job_id).status == status
    return job_id


def _snapshot(store: JobStore, job_id: str) -> tuple:
    rec = store.get(job_id)
    rows = store.db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchall()
    hist = store.db.execute("SELECT * FROM history WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
    return rec.to_dict(with_history=True), rows, hist


ALL_PAIRS = [(a, b) for a in RunStatus for b in RunStatus]
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
DISALLOWED = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def test_transition_table_covers_every_status_and_finals_are_dead_ends():
    assert set(TRANSITIONS) == set(RunStatus)
    for s in RunStatus:
        if s.is_final:
            assert TRANSITIONS[s] == frozenset()
        for t in TRANSITIONS[s]:
            assert can_move(s, t)
            assert s not in TRANSITIONS[t]  # forward only: no move back
    assert not any(s in TRANSITIONS[s] for s in RunStatus)  # no self-loops


def test_add_is_submitted_with_one_history_entry(store):
    rec = store.add("j1", "my job", "/some/dir", {"name": "my job", "min_clients": 1}, secret_hash="h",
                    reason="submitted by test")
    assert rec.status == RunStatus.SUBMITTED
    assert rec.name == "my job"
    assert rec.meta == {"name": "my job", "min_clients": 1}
    assert rec.secret_hash == "h"
    assert rec.end_time is None
    assert len(rec.history) == 1
    h = rec.history[0]
    assert h["status"] == "SUBMITTED" and h["reason"] == "submitted by test"
    assert h["time"] == rec.submit_time


def test_add_duplicate_id_fails_and_get_unknown_is_not_found(store):
    store.add("j1", "n", "/d", {})
    with pytest.raises(sqlite3.IntegrityError):
        store.add("j1", "n", "/d", {})
    assert len(store.get("j1").history) == 1
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.transition("nope", RunStatus.DISPATCHED, "x")


@pytest.mark.parametrize("src,dst", ALLOWED, ids=[f"{a.value}->{b.value}" for a, b in ALLOWED])
def test_every_allowed_transition_works(store, src, dst):
    job_id = _add_at(store, src)
    before = store.get(job_id)
    rec = store.transition(job_id, dst, "because", exit_code=3)
    assert rec.status == dst
    assert rec.exit_code == 3
    assert len(rec.history) == len(before.history) + 1
    assert rec.history[-1]["status"] == dst.value
    assert rec.history[-1]["reason"] == "because"
    if dst.is_final:
        assert rec.end_time == rec.history[-1]["time"]
    else:
        assert rec.end_time is None


@pytest.mark.parametrize("src,dst", DISALLOWED, ids=[f"{a.value}->{b.value}" for a, b in DISALLOWED])
def test_every_disallowed_transition_raises_and_writes_nothing(store, src, dst):
    job_id = _add_at(store, src)
    before = _snapshot(store, job_id)
    with pytest.raises(IllegalTransition) as ei:
        store.transition(job_id, dst, "nope", exit_code=7, progress={"x": 1})
    assert ei.value.current == src.value and ei.value.wanted == dst.value
    assert src.value in str(ei.value) and dst.value in str(ei.value)
    assert _snapshot(store, job_id) == before
    assert not store.db.in_transaction


@pytest.mark.parametrize("final", [s for s in RunStatus if s.is_final], ids=lambda s: s.value)
def test_nothing_leaves_a_finished_status(store, final):
    job_id = _add_at(store, final)
    for s in RunStatus:
        with pytest.raises(IllegalTransition):
            store.transition(job_id, s, "again")
    assert store.get(job_id).status == final


def test_transition_refuses_unknown_columns_and_writes_nothing(store):
    job_id = _add_at(store, RunStatus.SUBMITTED)
    before = _snapshot(store, job_id)
    with pytest.raises(ValueError):
        store.transition(job_id, RunStatus.DISPATCHED, "x", end_time=1.0)
    with pytest.raises(ValueError):
        store.update(job_id, name="other")
    assert _snapshot(store, job_id) == before


def test_history_has_time_and_reason_in_order(store):
    store.add("j", "n", "/d", {})
    store.transition("j", RunStatus.DISPATCHED, "launched", pid=1234)
    store.add_history("j", "abort requested")
    store.transition("j", RunStatus.RUNNING, "hello from child")
    store.transition("j", RunStatus.FINISHED_ABORTED, "aborted by admin")
    hist = store.get("j").history
    assert [(h["status"], h["reason"]) for h in hist] == [
        ("SUBMITTED", "submitted"),
        ("DISPATCHED", "launched"),
        ("DISPATCHED", "abort requested"),
        ("RUNNING", "hello from child"),
        ("FINISHED:ABORTED", "aborted by admin"),
    ]
    times = [h["time"] for h in hist]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(isinstance(t, float) for t in times)


def test_update_changes_fields_but_not_of_a_finished_job(store):
    job_id = _add_at(store, RunStatus.RUNNING)
    store.update(job_id, progress={"round": 1}, pid=42)
    rec = store.get(job_id)
    assert rec.progress == {"round": 1} and rec.pid == 42
    store.transition(job_id, RunStatus.FINISHED_COMPLETED, "done", progress={"round": 5})
    assert store.get(job_id).progress == {"round": 5}
    store.update(job_id, progress={"round": 99}, error="late")
    rec = store.get(job_id)
    assert rec.progress == {"round": 5}
    assert rec.error is None
    store.update(job_id, progress=None)
    assert store.get(job_id).progress == {"round": 5}


def test_record_exit_works_after_final(store):
    job_id = _add_at(store, RunStatus.RUNNING)
    store.transition(job_id, RunStatus.FINISHED_ABNORMAL, "child vanished")
    store.record_exit(job_id, None, 9)
    rec = store.get(job_id)
    assert rec.status == RunStatus.FINISHED_ABNORMAL
    assert (rec.exit_code, rec.signal) == (None, 9)
    store.record_exit(job_id, 0, None)
    rec = store.get(job_id)
    assert (rec.exit_code, rec.signal) == (0, None)
    assert len(rec.history) == len(_path_to(RunStatus.RUNNING)) + 2  # record_exit adds no history


def test_list_filters_by_status_in_submit_order(store):
    a = _add_at(store, RunStatus.SUBMITTED)
    b = _add_at(store, RunStatus.RUNNING)
    c = _add_at(store, RunStatus.FINISHED_COMPLETED)
    assert [r.job_id for r in store.list()] == [a, b, c]
    assert [r.job_id for r in store.list([RunStatus.RUNNING, RunStatus.SUBMITTED])] == [a, b]
    assert store.list([]) == []


def test_data_survives_close_and_reopen(tmp_path):
    path = str(tmp_path / "jobs.db")
    s = JobStore(path, clock=history_clock())
    s.add("j1", "first", "/d1", {"name": "first", "deploy_map": {"app": ["server"]}})
    s.transition("j1", RunStatus.DISPATCHED, "launched", pid=77, pid_create_time=12.5)
    s.update("j1", progress={"round": 2, "of": 3})
    s.add("j2", "second", "/d2", {})
    s.transition("j2", RunStatus.FINISHED_CAN_NOT_SCHEDULE, "no sites")
    s.record_exit("j2", 1, None)
    before = {j: s.get(j).to_dict(with_history=True) for j in ("j1", "j2")}
    meta_before = s.get("j1").meta
    s.close()

    s2 = JobStore(path, clock=history_clock())
    try:
        after = {j: s2.get(j).to_dict(with_history=True) for j in ("j1", "j2")}
        assert after == before
        assert s2.get("j1").meta == meta_before
        assert s2.get("j1").pid_create_time == 12.5
        assert s2.get("j2").status == RunStatus.FINISHED_CAN_NOT_SCHEDULE
        # the state machine still applies after reopening
        with pytest.raises(IllegalTransition):
            s2.transition("j2", RunStatus.RUNNING, "x")
        s2.transition("j1", RunStatus.RUNNING, "resumed")
        assert len(s2.get("j1").history) == 3
    finally:
        s2.close()


def test_journal_mode_is_wal_and_synchronous_full(tmp_path):
    path = str(tmp_path / "jobs.db")
    s = JobStore(path)
    try:
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        s.close()
    # WAL is a property of the file: a plain connection sees it too.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        raw.close()
    s = JobStore(path)  # and the setting holds on a reopened store
    try:
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        s.close()


def test_add_history_on_unknown_job_is_not_found(store):
    with pytest.raises(NotFound):
        store.add_history("nope", "abort requested")


def test_checkpoint_truncates_the_wal_and_never_waits_for_another_connection(tmp_path):
    store = JobStore(str(tmp_path / "jobs.db"))
    wal = tmp_path / "jobs.db-wal"
    for i in range(5):
        store.add(f"j{i}", "n", "/x", {})
    assert wal.stat().st_size > 0
    reader = sqlite3.connect(str(tmp_path / "jobs.db"), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM jobs").fetchone()  # holds a read snapshot of the WAL
        started = time.monotonic()
        assert store.checkpoint() is False  # busy: the reader still needs the WAL
        assert time.monotonic() - started < 1.0  # not the connection's 5 s busy timeout
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert store.checkpoint() is True
    assert wal.stat().st_size == 0
    assert [r.job_id for r in store.list()] == [f"j{i}" for i in range(5)]
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # restored
    store.close()


def test_quiet_checkpoints_wait_for_a_pause_after_writes(store):
    clock = FakeClock(0.0)
    ran = []
    store.checkpoint = lambda: ran.append(clock.now) or True  # type: ignore[method-assign]
    quiet = QuietCheckpoints(store, 10.0, clock)
    clock.now = 10.0
    assert quiet.tick() and ran == [10.0]  # the first quiet period also clears a WAL left from before
    clock.now = 30.0
    assert not quiet.tick()  # nothing written since
    store.add("a", "n", "/x", {})
    for now in (31.0, 35.0, 40.9):  # written at 31 (seen at that tick); not yet 10 s of quiet
        clock.now = now
        assert not quiet.tick()
        if now == 35.0:
            store.add_history("a", "still busy")  # a later write restarts the quiet period
    clock.now = 45.0
    assert not quiet.tick()  # the write seen at 40.9 is under 10 s ago
    clock.now = 51.0
    assert quiet.tick() and ran == [10.0, 51.0]
    clock.now = 70.0
    assert not quiet.tick() and ran == [10.0, 51.0]


def test_quiet_checkpoints_retry_while_busy(store):
    clock = FakeClock(0.0)
    answers = [False, False, True]
    store.checkpoint = lambda: answers.pop(0)  # type: ignore[method-assign]
    quiet = QuietCheckpoints(store, 1.0, clock)
    store.add("a", "n", "/x", {})
    results = []
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        clock.now = now
        results.append(quiet.tick())
    assert results == [False, False, False, True, False] and answers == []
