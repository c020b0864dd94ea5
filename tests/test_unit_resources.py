"""Unit tests of `flrunner.site.resources.ResourceManager` on a fake clock: what fits, what a
refusal says, reservation expiry, cancel, consume and release."""

from __future__ import annotations

import math
import threading

import pytest

from flrunner.job import RESOURCE_KEYS
from flrunner.site.resources import ResourceManager

from .support import FakeClock


CAPACITY = {"num_cpus": 8, "mem_gb": 16, "num_gpus": 2}


def make(capacity: dict | None = None) -> tuple[ResourceManager, FakeClock]:
    clock = FakeClock(500.0)
    return ResourceManager(dict(CAPACITY if capacity is None else capacity), clock=clock), clock


# --- fits and reserves ---------------------------------------------------------------------------

def test_capacity_is_every_known_key_and_missing_keys_are_zero():
    rm, _ = make({"num_cpus": 4})
    assert set(rm.capacity) == set(RESOURCE_KEYS)
    assert rm.free() == {"num_cpus": 4.0, "mem_gb": 0.0, "num_gpus": 0.0}


def test_a_spec_that_fits_is_reserved_under_a_fresh_token():
    rm, _ = make()
    ok, token, reason = rm.check("job-1", {"num_cpus": 2, "mem_gb": 4, "num_gpus": 1}, ttl=30)
    assert ok and reason == "reserved"
    assert isinstance(token, str) and len(token) >= 16
    assert rm.free() == {"num_cpus": 6.0, "mem_gb": 12.0, "num_gpus": 1.0}
    ok2, token2, _ = rm.check("job-1", {"num_gpus": 1}, ttl=30)
    assert ok2 and token2 != token
    assert rm.free()["num_gpus"] == 0.0


def test_an_empty_spec_fits_and_exact_capacity_fits():
    rm, _ = make()
    assert rm.check("job-1", {}, ttl=30)[0]
    ok, _, _ = rm.check("job-2", dict(CAPACITY), ttl=30)
    assert ok
    assert rm.free() == {k: 0.0 for k in RESOURCE_KEYS}


def test_fractional_amounts_add_up():
    rm, _ = make({"mem_gb": 1.0})
    for _ in range(10):
        assert rm.check("job", {"mem_gb": 0.1}, ttl=30)[0]
    ok, _, reason = rm.check("job", {"mem_gb": 0.1}, ttl=30)
    assert not ok, reason


# --- refusals --------------------------------------------------------------------------------------

def test_refusal_names_the_resource_and_the_numbers_and_reserves_nothing():
    rm, _ = make()
    assert rm.check("job-1", {"num_gpus": 1}, ttl=30)[0]
    ok, token, reason = rm.check("job-2", {"num_cpus": 1, "num_gpus": 2}, ttl=30)
    assert not ok and token is None
    assert reason == "not enough num_gpus: wants 2, 1 free of 2"
    # num_cpus fitted, but a refused spec reserves none of it.
    assert rm.free()["num_cpus"] == 8.0


def test_refusal_lists_every_short_resource():
    rm, _ = make()
    ok, _, reason = rm.check("job-1", {"num_cpus": 9, "mem_gb": 32.5, "num_gpus": 1}, ttl=30)
    assert not ok
    assert "num_cpus: wants 9, 8 free of 8" in reason
    assert "mem_gb: wants 32.5, 16 free of 16" in reason
    assert "num_gpus" not in reason


def test_unknown_resource_keys_are_refused_by_name():
    rm, _ = make()
    ok, token, reason = rm.check("job-1", {"num_tpus": 1, "gpus": 1, "num_cpus": 1}, ttl=30)
    assert not ok and token is None
    assert "unknown resource(s)" in reason and "gpus" in reason and "num_tpus" in reason
    assert rm.free()["num_cpus"] == 8.0


@pytest.mark.parametrize("amount", [-1, -0.5, math.nan, "two", "1", None, True, [1]], ids=repr)
def test_an_amount_that_is_not_a_non_negative_number_is_refused(amount):
    # A negative amount would raise the free capacity, NaN would make every later spec fit, and a
    # string would raise on the site's I/O thread: the engine's check_client_resources passes a
    # workflow's resource_reqs to the sites unvalidated.
    rm, _ = make()
    ok, token, reason = rm.check("job-1", {"num_gpus": amount}, ttl=30)
    assert not ok and token is None
    assert "num_gpus" in reason
    assert rm.free() == {k: float(v) for k, v in CAPACITY.items()}
    assert rm.check("job-2", {"num_gpus": 3}, ttl=30)[0] is False


def test_an_infinite_amount_is_refused():
    rm, _ = make()
    ok, token, reason = rm.check("job-1", {"num_gpus": math.inf}, ttl=30)
    assert not ok and token is None and "num_gpus" in reason
    assert rm.free() == {k: float(v) for k, v in CAPACITY.items()}


# --- expiry, cancel, consume, release ---------------------------------------------------------------

def test_a_reservation_expires_after_its_ttl_and_frees_capacity():
    rm, clock = make()
    ok, token, _ = rm.check("job-1", {"num_gpus": 2}, ttl=10)
    assert ok
    clock.advance(9.9)
    assert rm.free()["num_gpus"] == 0.0
    assert not rm.check("job-2", {"num_gpus": 1}, ttl=10)[0]
    clock.advance(0.1)  # at the TTL: gone
    assert rm.free()["num_gpus"] == 2.0
    assert rm.check("job-2", {"num_gpus": 2}, ttl=10)[0]
    # The expired token is dead: cancel says so, consume fails.
    assert rm.cancel(token) is False
    assert rm.consume(token, "job-1") is False


def test_each_reservation_has_its_own_ttl():
    rm, clock = make()
    rm.check("short", {"num_gpus": 1}, ttl=5)
    rm.check("long", {"num_gpus": 1}, ttl=50)
    clock.advance(6)
    assert rm.free()["num_gpus"] == 1.0
    clock.advance(50)
    assert rm.free()["num_gpus"] == 2.0


def test_cancel_frees_at_once_and_only_once():
    rm, _ = make()
    _, token, _ = rm.check("job-1", {"num_gpus": 2, "mem_gb": 8}, ttl=30)
    assert rm.free()["num_gpus"] == 0.0
    assert rm.cancel(token) is True
    assert rm.free() == {k: float(v) for k, v in CAPACITY.items()}
    assert rm.cancel(token) is False
    assert rm.cancel("no-such-token") is False


def test_consume_keeps_the_reservation_past_its_ttl_until_release_job():
    rm, clock = make()
    ok, token, _ = rm.check("job-1", {"num_gpus": 2}, ttl=10)
    assert ok and rm.consume(token, "job-1") is True
    clock.advance(10_000)
    assert rm.free()["num_gpus"] == 0.0
    assert not rm.check("job-2", {"num_gpus": 1}, ttl=10)[0]
    rm.release_job("job-1")
    assert rm.free()["num_gpus"] == 2.0
    assert rm.check("job-2", {"num_gpus": 2}, ttl=10)[0]


def test_consume_of_an_expired_unknown_or_other_jobs_token_fails():
    rm, clock = make()
    _, token, _ = rm.check("job-1", {"num_gpus": 1}, ttl=10)
    assert rm.consume(token, "job-2") is False  # another job's reservation
    assert rm.consume("no-such-token", "job-1") is False
    assert rm.consume(None, "job-1") is False
    assert rm.consume("", "job-1") is False
    # The failed attempts left the reservation as it was: still expiring.
    clock.advance(10)
    assert rm.consume(token, "job-1") is False
    assert rm.free()["num_gpus"] == 2.0


def test_consume_twice_is_harmless_and_cancel_after_consume_frees():
    rm, clock = make()
    _, token, _ = rm.check("job-1", {"num_gpus": 1}, ttl=10)
    assert rm.consume(token, "job-1") and rm.consume(token, "job-1")
    clock.advance(100)
    assert rm.free()["num_gpus"] == 1.0
    assert rm.cancel(token) is True
    assert rm.free()["num_gpus"] == 2.0


def test_release_job_frees_every_reservation_of_that_job_only():
    rm, _ = make()
    _, t1, _ = rm.check("job-1", {"num_gpus": 1}, ttl=30)
    rm.check("job-1", {"num_cpus": 4}, ttl=30)  # reserved, never consumed
    _, t3, _ = rm.check("job-2", {"num_gpus": 1}, ttl=30)
    rm.consume(t1, "job-1")
    rm.consume(t3, "job-2")
    rm.release_job("job-1")
    assert rm.free() == {"num_cpus": 8.0, "mem_gb": 16.0, "num_gpus": 1.0}
    assert rm.consume(t1, "job-1") is False
    rm.release_job("job-1")  # again: nothing left, no error
    rm.release_job("never-seen")
    assert rm.free()["num_gpus"] == 1.0


# --- threads --------------------------------------------------------------------------------------

def test_concurrent_checks_never_promise_more_than_the_capacity():
    rm, _ = make({"num_gpus": 4})
    threads = 16
    for _ in range(30):
        barrier = threading.Barrier(threads)
        won: list[str] = []
        lock = threading.Lock()

        def grab() -> None:
            barrier.wait()
            ok, token, _ = rm.check("job", {"num_gpus": 1}, ttl=60)
            if ok:
                with lock:
                    won.append(token)

        workers = [threading.Thread(target=grab) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        assert len(won) == 4 and len(set(won)) == 4
        assert rm.free()["num_gpus"] == 0.0
        for token in won:
            assert rm.cancel(token)
        assert rm.free()["num_gpus"] == 4.0


def test_mixed_concurrent_operations_keep_the_books_balanced():
    rm, clock = make({"num_cpus": 8, "num_gpus": 3})
    errors: list[BaseException] = []
    held: dict[str, str] = {}  # token -> job id, for tokens the workers keep
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(300):
                job = f"job-{n}-{i}"
                ok, token, _ = rm.check(job, {"num_gpus": 1, "num_cpus": 1}, ttl=1e9)
                if not ok:
                    continue
                step = i % 3
                if step == 0:
                    assert rm.cancel(token)
                elif step == 1:
                    assert rm.consume(token, job)
                    rm.release_job(job)
                else:
                    assert rm.consume(token, job)
                    give_back = None
                    with lock:
                        held[token] = job
                        if len(held) > 1:  # give one back now and then, so others can fit
                            give_back = held.popitem()[1]
                    if give_back is not None:
                        rm.release_job(give_back)
                rm.free()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors, errors
    free = rm.free()
    assert free["num_gpus"] == 3.0 - len(held) and free["num_cpus"] == 8.0 - len(held)
    for jid in held.values():
        rm.release_job(jid)
    clock.advance(1e10)
    assert rm.free() == {"num_cpus": 8.0, "mem_gb": 0.0, "num_gpus": 3.0}
