"""A job process and its parent: what the job process asks (`FROM_JOB`, on the parent's jobs
socket) and what the parent pushes to it (`TO_JOB`).

Every op but ``hello`` needs a job process that has said hello with its per-job secret.
"""

from __future__ import annotations

from flrunner.protocol import aux_ops
from flrunner.protocol.fields import ID_LEN, KEY_LEN, opt, req
from flrunner.protocol.op import Channel, Op

HELLO = Op("hello", "A job process authenticates with its job id and per-job secret, and gives the public key its "
                    "sites seal their secure aux requests to ('sealing_key', 32 bytes; the parent passes it on). A "
                    "job that already ended (its final status reached a parent that died before answering) is "
                    "refused with CONFLICT.",
           {"job_id": req(str, max_len=ID_LEN), "secret": req(str, max_len=256), "pid": req(int),
            "sealing_key": opt(bytes, max_len=KEY_LEN)},
           reply={"status": req(str), "name": req(str), "meta": req(dict), "parent_pid": opt(int)},
           needs_auth=False)
SYNC_CLIENTS = Op("sync_clients", "The site list: all of it ({revision, clients}), or the changes since registry "
                                  "revision 'since' ({revision, base, changes}).",
                  {"since": opt(int)},
                  reply={"revision": req(int), "clients": opt(list), "base": opt(int), "changes": opt(list)})
RUN_STATUS = Op("run_status", "The engine's run status; answered once it is durable in the job store (NOT_READY "
                              "if the store cannot be written now: nothing was stored).",
                {"status": opt(str, max_len=64), "progress": opt(str, dict), "error": opt(str)},
                reply={"status": req(str), "durable": opt(bool)})
HEARTBEAT = Op("heartbeat", "A job process is alive.")
CHECK_RESOURCES = Op("check_resources", "Ask sites whether resources fit and reserve them.",
                     {"resource_reqs": req(dict), "timeout": opt(int, float)},
                     reply={"results": req(dict)})  # {site: [is_enough, token, reason]}
CANCEL_RESOURCES = Op("cancel_resources", "Release reservations ({tokens: {site: token}}).", {"tokens": req(dict)})
START_CLIENT_JOB = Op("start_client_job", "Start this job's site app on sites (consuming reservations).",
                      {"sites": req(list), "tokens": opt(dict), "timeout": opt(int, float)},
                      reply={"results": req(dict)})  # {site: [started, reason]}

FROM_JOB = Channel("jobs", HELLO, SYNC_CLIENTS, RUN_STATUS, HEARTBEAT, aux_ops.FROM_JOB, CHECK_RESOURCES,
                   CANCEL_RESOURCES, START_CLIENT_JOB)

ABORT = Op("abort", "Stop the job: its workflows see abort_signal.triggered.", {"reason": opt(str)}, reply=None)
CLIENTS_CHANGED = Op("clients_changed", "The site registry changed: the changes from revision 'base' to 'revision'.",
                     {"revision": req(int), "changes": req(list), "base": req(int)}, reply=None)

TO_JOB = Channel("to a job process", ABORT, CLIENTS_CHANGED, aux_ops.TO_JOB)
