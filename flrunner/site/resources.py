"""A site's resources and the reservations jobs hold on them.

A reservation made by `check` expires after its TTL unless `consume` turns it into the
resources of a running job; `release_job` gives them back when the job ends here.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from flrunner.job import RESOURCE_KEYS


@dataclass
class Reservation:
    token: str
    job_id: str
    spec: dict
    expires: float | None  # None once consumed by a running job


class ResourceManager:
    """What this site has and what is promised. Thread-safe.

    Args:
        capacity: ``{"num_cpus": …, "mem_gb": …, "num_gpus": …}``.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, capacity: dict, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = {k: float(capacity.get(k, 0)) for k in RESOURCE_KEYS}
        self.clock = clock
        self._held: dict[str, Reservation] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, r in self._held.items() if r.expires is not None and r.expires <= now]:
            del self._held[token]

    def free(self) -> dict[str, float]:
        with self._lock:
            self._expire()
            return self._free()

    def _free(self) -> dict[str, float]:
        used = {k: 0.0 for k in RESOURCE_KEYS}
        for r in self._held.values():
            for k, v in r.spec.items():
                used[k] = used.get(k, 0.0) + float(v)
        return {k: self.capacity[k] - used[k] for k in RESOURCE_KEYS}

    def check(self, job_id: str, spec: dict, ttl: float) -> tuple[bool, str | None, str]:
        """(fits, reservation token, reason). A fitting spec is reserved for ``ttl`` seconds."""
        unknown = sorted(set(spec) - RESOURCE_KEYS)
        if unknown:
            return False, None, f"unknown resource(s) {', '.join(unknown)}"
        for key, amount in spec.items():
            if (not isinstance(amount, (int, float)) or isinstance(amount, bool) or not math.isfinite(amount)
                    or amount < 0):
                return False, None, f"{key}: the amount must be a non-negative number, got {amount!r}"
        with self._lock:
            self._expire()
            free = self._free()
            short = [f"{k}: wants {float(v):g}, {max(free[k], 0):g} free of {self.capacity[k]:g}"
                     for k, v in sorted(spec.items()) if float(v) > free[k] + 1e-9]
            if short:
                return False, None, "not enough " + "; ".join(short)
            token = secrets.token_urlsafe(16)
            self._held[token] = Reservation(token, job_id, dict(spec), self.clock() + ttl)
            return True, token, "reserved"

    def cancel(self, token: str) -> bool:
        with self._lock:
            return self._held.pop(token, None) is not None

    def consume(self, token: str | None, job_id: str) -> bool:
        """Turn a reservation into a running job's resources; False if it expired or is unknown."""
        with self._lock:
            self._expire()
            r = self._held.get(token or "")
            if r is None or r.job_id != job_id:
                return False
            r.expires = None
            return True

    def release_job(self, job_id: str) -> None:
        with self._lock:
            for token in [t for t, r in self._held.items() if r.job_id == job_id]:
                del self._held[token]
