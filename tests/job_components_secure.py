"""Workflow and site executor for the secure aux tests (tests/test_secure_aux.py).

Copied into each test job's ``custom/`` folders and loaded as ``job_components_secure.<Class>``,
so it uses only the NVFlare-style API a third-party job has. Payloads carry a marker string
(and a binary value made of it, large enough to travel as its own frame), so a test can look for
the marker in whatever the parent saw.
"""

import time

from flrunner import Controller, FLComponent, Shareable

try:  # in a job: next to job_components.py in its custom/ folder
    from job_components import _write
except ImportError:  # imported by the tests as part of the tests package
    from .job_components import _write

#: A binary value at least this large travels as its own frame (flrunner.payload.INLINE_LIMIT).
BLOB_BYTES = 80 * 1024


def marker_payload(marker):
    """The request of a call: the marker as text and as a large binary value."""
    blob = (marker.encode() * (BLOB_BYTES // len(marker) + 1))[:BLOB_BYTES]
    return Shareable({"marker": marker, "blob": blob})


class SecureCalls(Controller):
    """Waits until ``wait_sites`` are known, then makes ``calls`` in turn and writes what came back.

    Each call is ``{"marker", "secure", "targets" (None: the job's sites), "topic", "timeout"}``.
    Each result holds, per site, the return code, the reason header and the reply's data.
    """

    def __init__(self, calls, wait_sites=(), out="secure.json", wait_limit=15.0):
        super().__init__()
        self.calls = calls
        self.wait_sites = set(wait_sites)
        self.out = out
        self.wait_limit = wait_limit

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        deadline = time.monotonic() + self.wait_limit
        while not self.wait_sites <= {c.name for c in engine.get_clients()}:
            if time.monotonic() > deadline or abort_signal.triggered:
                raise RuntimeError(f"gave up waiting for sites {sorted(self.wait_sites)}")
            abort_signal.wait(0.05)
        results = []
        for call in self.calls:
            replies = engine.send_aux_request(call.get("targets"), call.get("topic", "seen"),
                                              marker_payload(call["marker"]), call.get("timeout", 10.0), fl_ctx,
                                              secure=call.get("secure", True))
            results.append({site: {"rc": r.get_return_code(), "reason": r.get_header("reason"),
                                   "data": {k: v for k, v in r.items() if k != "__headers__"}}
                            for site, r in replies.items()})
        _write(fl_ctx, self.out, results)


class SeenBySite(FLComponent):
    """Site executor of task ``seen``: writes what it was sent to ``seen-<marker>.json`` in the
    site's run dir, and answers with the marker, the site and the blob's length and head."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        site = fl_ctx.get_identity_name()
        marker, blob = shareable.get("marker"), shareable.get("blob")
        _write(fl_ctx, f"seen-{marker}.json", {"site": site, "marker": marker, "blob_len": len(blob)})
        head = blob[:len(marker)].decode()
        return Shareable({"site": site, "marker": marker, "blob_len": len(blob), "blob_head": head})
