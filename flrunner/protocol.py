"""The operations of the flrunner protocol: their names, their body fields and validation.

This layer knows nothing of sockets (see `flrunner.transport.wire`) and nothing of jobs' internals; it says
what each operation carries and checks that a received body has exactly that shape. Handlers on
each side look operations up here by name, so an unknown op or a wrong field is refused the same
way everywhere, with a reason that names the op and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from flrunner.errors import BadRequest


class Rc:
    """Reply codes on the wire."""

    OK = "OK"
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    TIMEOUT = "TIMEOUT"
    NOT_READY = "NOT_READY"
    UNAVAILABLE = "UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    ERROR = "ERROR"


_NUMBER = (int, float)

#: Deepest nesting accepted inside one field's value. A receiver stores and later echoes values
#: (site resources in the registry listing, progress in status replies) wrapped in a few more
#: levels, which must still encode.
MAX_FIELD_DEPTH = 64
_SCALARS = frozenset((type(None), bool, int, float, str, bytes))


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/maps in ``value`` nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        if _SCALARS.issuperset(map(type, children)):  # runs in C: cheap for long lists of numbers
            continue
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


@dataclass(frozen=True)
class Field:
    """One body field: its accepted Python types and whether it must be present.

    ``values``, for a map field, is the field every value of the map must pass (its keys must be
    strings): a map of site names to keys is checked entry by entry, not just as "a dict".
    """

    types: tuple
    required: bool = True
    max_len: int | None = None
    max_depth: int = MAX_FIELD_DEPTH
    values: Field | None = None

    def check(self, op: str, name: str, value: Any) -> None:
        if isinstance(value, bool) and bool not in self.types:
            raise BadRequest(f"op '{op}': field '{name}' must be {self._names()}, got bool")
        if not isinstance(value, self.types):
            raise BadRequest(f"op '{op}': field '{name}' must be {self._names()}, got {type(value).__name__}")
        if self.max_len is not None and hasattr(value, "__len__") and len(value) > self.max_len:
            raise BadRequest(f"op '{op}': field '{name}' is longer than {self.max_len}")
        if isinstance(value, (dict, list)) and deeper_than(value, self.max_depth):
            raise BadRequest(f"op '{op}': field '{name}' is nested deeper than {self.max_depth} levels")
        if self.values is not None and isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise BadRequest(f"op '{op}': field '{name}' must have string keys, got {type(key).__name__}")
                self.values.check(op, f"{name}.{key[:60]}", item)

    def _names(self) -> str:
        return " or ".join(sorted({"null" if t is type(None) else t.__name__ for t in self.types}))


def req(*types: type, max_len: int | None = None, values: Field | None = None) -> Field:
    return Field(types, True, max_len, values=values)


def opt(*types: type, max_len: int | None = None, values: Field | None = None) -> Field:
    return Field(types + (type(None),), False, max_len, values=values)


@dataclass(frozen=True)
class Op:
    """An operation: its name, the channel it belongs to, and its request body's fields."""

    name: str
    doc: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    needs_auth: bool = True

    def validate(self, body: Mapping[str, Any]) -> dict:
        """Check ``body`` against the fields; return a dict with absent optional fields as None."""
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name not in body or body[name] is None:
                if spec.required:
                    raise BadRequest(f"op '{self.name}': missing field '{name}'")
                out[name] = None
                continue
            spec.check(self.name, name, body[name])
            out[name] = body[name]
        # Keys may be str or bytes (msgpack bin): sort by text, and list only a few.
        unknown = sorted((str(k)[:60] for k in body if k not in self.fields))
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise BadRequest(f"op '{self.name}': unknown field(s) {', '.join(unknown[:10])}{more}")
        return out


class OpTable:
    """The operations one socket serves."""

    def __init__(self, channel: str, *ops: Op) -> None:
        self.channel = channel
        self._ops = {op.name: op for op in ops}

    def get(self, name: str) -> Op:
        try:
            return self._ops[name]
        except KeyError:
            known = ", ".join(sorted(self._ops))
            raise BadRequest(f"unknown op '{name[:60]}' on the {self.channel} socket (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._ops

    def __iter__(self):
        return iter(self._ops.values())


_ID = 128  # longest job id / site name / token on the wire
_KEY = 128  # longest key of a sealed aux payload (public keys are 32 bytes, sealed keys 72)

# --- child -> parent (jobs socket) -------------------------------------------------------------
HELLO = Op("hello", "A job process authenticates with its job id and per-job secret, and gives the public key "
           "its sites seal their secure aux requests to ('sealing_key', 32 bytes; the parent passes it on).",
           {"job_id": req(str, max_len=_ID), "secret": req(str, max_len=256), "pid": req(int),
            "sealing_key": opt(bytes, max_len=_KEY)}, needs_auth=False)
SYNC_CLIENTS = Op("sync_clients", "The site list: all of it, or the changes since registry revision 'since'.",
                  {"since": opt(int)})
RUN_STATUS = Op("run_status", "The engine's run status; acknowledged once durable in the job store.",
                {"status": opt(str, max_len=64), "progress": opt(str, dict), "error": opt(str)})
JOB_HEARTBEAT = Op("heartbeat", "A job process is alive.", {})
AUX = Op("aux", "An aux request (payload in raw frames) for sites of this job; the parent answers once per "
         "target with the site's reply or the reason there is none. With 'fire_and_forget' nothing is answered. "
         "A secure request's payload is one ciphertext frame (flrunner.security.sealed) with 'sealed' "
         "({site: the payload's key sealed for that site}) and 'sender_key' (the job's public key); a target "
         "with no sealed key is not sent it.",
         {"targets": opt(list, max_len=100_000), "topic": req(str, max_len=256), "timeout": req(int, float),
          "fire_and_forget": opt(bool), "sealed": opt(dict, max_len=100_000, values=req(bytes, max_len=_KEY)),
          "sender_key": opt(bytes, max_len=_KEY)})
CHECK_RESOURCES = Op("check_resources", "Ask sites whether resources fit and reserve them: "
                     "{results: {site: [is_enough, token, reason]}}.",
                     {"resource_reqs": req(dict), "timeout": opt(int, float)})
CANCEL_RESOURCES = Op("cancel_resources", "Release reservations: {tokens: {site: token}}.", {"tokens": req(dict)})
START_CLIENT_JOB = Op("start_client_job", "Start this job's site app on sites (consuming reservations): "
                      "{results: {site: [started, reason]}}.",
                      {"sites": req(list), "tokens": opt(dict), "timeout": opt(int, float)})
JOB_OPS = OpTable("jobs", HELLO, SYNC_CLIENTS, RUN_STATUS, JOB_HEARTBEAT, AUX, CHECK_RESOURCES, CANCEL_RESOURCES,
                  START_CLIENT_JOB)

# --- parent -> child pushes --------------------------------------------------------------------
ABORT = Op("abort", "Stop the job: workflows see abort_signal.triggered.", {"reason": opt(str)})
CLIENTS_CHANGED = Op("clients_changed", "The site registry changed; the body is the delta.",
                     {"revision": req(int), "changes": req(list), "base": req(int)})
CHILD_AUX = Op("aux", "A site's aux request to this job's engine (payload in raw frames); answer it. A secure one "
               "carries one ciphertext frame and its key sealed by the site for the job's key ('sealed_key'); the "
               "reply is then sealed to the site's key.",
               {"site": req(str), "topic": req(str), "timeout": req(int, float), "fire_and_forget": opt(bool),
                "sealed_key": opt(bytes, max_len=_KEY)})
CHILD_PUSHES = OpTable("child", ABORT, CLIENTS_CHANGED, CHILD_AUX)

# --- site <-> parent (sites socket) ------------------------------------------------------------
LOGIN = Op("login", "A site logs in with its name (and, later, credentials) and gets a token; it lists the "
           "jobs it runs, and is told which of them to stop (jobs this parent does not run) and the public keys "
           "of the others' job processes ('job_keys'). 'instance' is the agent process's random id: the same "
           "instance logging in again resumes its session (same token); another agent, or one that sends no "
           "instance, is refused (CONFLICT) while the name's session is alive.",
           {"name": req(str, max_len=_ID), "resources": opt(dict), "pid": opt(int), "jobs": opt(list, max_len=10_000),
            "instance": opt(str, max_len=64)},
           needs_auth=False)
SITE_HEARTBEAT = Op("heartbeat", "A site is alive.", {"token": req(str, max_len=_ID)})
LOGOUT = Op("logout", "A site leaves the registry.", {"token": req(str, max_len=_ID)})
SITE_AUX = Op("aux", "A site's aux request to a job's engine (payload in raw frames), answered with the engine's "
              "reply. A secure one carries one ciphertext frame and its key sealed for the job's key ('sealed_key').",
              {"token": req(str, max_len=_ID), "job_id": req(str, max_len=_ID), "topic": req(str, max_len=256),
               "timeout": req(int, float), "fire_and_forget": opt(bool), "sealed_key": opt(bytes, max_len=_KEY)})
SITE_OPS = OpTable("sites", LOGIN, SITE_HEARTBEAT, LOGOUT, SITE_AUX)

# --- parent -> site pushes (answered, except fire-and-forget aux, cancel_resources, stop_job, job_key) ---
SITE_AUX_REQUEST = Op("aux", "A job's aux request (payload in raw frames) for this site. A secure one carries "
                      "one ciphertext frame, its key sealed for this site ('sealed_key') and the job's public key "
                      "('sender_key'); the reply is then sealed to that key.",
                      {"job_id": req(str), "topic": req(str), "timeout": req(int, float), "fire_and_forget": opt(bool),
                       "sealed_key": opt(bytes, max_len=_KEY), "sender_key": opt(bytes, max_len=_KEY)})
SITE_CHECK_RESOURCES = Op("check_resources", "Does this resource spec fit? Reserve it: {ok, token, reason}.",
                          {"job_id": req(str), "spec": req(dict), "ttl": req(int, float)})
SITE_CANCEL_RESOURCES = Op("cancel_resources", "Release a reservation.", {"token": req(str)})
SITE_START_JOB = Op("start_job", "Run a job's site app (bundle: one raw frame, a tar.gz of the app folder); "
                    "'job_key' is the job process's public key if it has said hello already.",
                    {"job_id": req(str), "job_name": req(str), "app": req(str), "token": opt(str), "meta": opt(dict),
                     "job_key": opt(bytes, max_len=_KEY)})
SITE_STOP_JOB = Op("stop_job", "Stop this site's part of a job.", {"job_id": req(str), "reason": opt(str)})
SITE_JOB_KEY = Op("job_key", "The public key of a job's process (sent after each of its hellos): the site seals its "
                  "secure aux requests to that job's engine with it.",
                  {"job_id": req(str), "key": req(bytes, max_len=_KEY)})
SITE_PUSHES = OpTable("site", SITE_AUX_REQUEST, SITE_CHECK_RESOURCES, SITE_CANCEL_RESOURCES, SITE_START_JOB,
                      SITE_STOP_JOB, SITE_JOB_KEY)

# --- admin -> parent (admin socket) ------------------------------------------------------------
SUBMIT = Op("submit", "Validate and queue a job folder: a parent-local path (job_dir; local admin socket only) or "
                      "an upload (one raw frame: the folder as a tar.gz, named by 'name'); reply with its job id. "
                      "'timeout' is how long the client waits for the answer: a folder read after that is dropped, "
                      "not accepted, so no answer means no job.",
            {"job_dir": opt(str, max_len=4096), "name": opt(str, max_len=256), "timeout": opt(int, float)})
JOBS = Op("jobs", "Every job, without history.", {})
STATUS = Op("status", "One job with its status history.", {"job_id": req(str, max_len=_ID)})
ABORT_JOB = Op("abort", "Abort a job.", {"job_id": req(str, max_len=_ID), "reason": opt(str, max_len=1024)})
CLIENTS = Op("clients", "The site registry (no tokens).", {})
PS = Op("ps", "The parent and every job process with cpu, rss and uptime.", {})
SUBSCRIBE = Op("subscribe", "Push every status change to this peer as 'job_status' until it goes silent.", {})
UNSUBSCRIBE = Op("unsubscribe", "Stop pushing status changes to this peer.", {})
PING = Op("ping", "Is the parent serving? Also renews a subscription.", {})
SHUTDOWN = Op("shutdown", "Stop the parent gracefully (same as SIGTERM).", {})
ADMIN_OPS = OpTable("admin", SUBMIT, JOBS, STATUS, ABORT_JOB, CLIENTS, PS, SUBSCRIBE, UNSUBSCRIBE, PING, SHUTDOWN)

#: Pushed by the parent to subscribed admin peers.
JOB_STATUS_EVENT = "job_status"
