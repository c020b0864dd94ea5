"""What admins (the CLI, an embedding platform, a remote admin with a kit) ask of the parent
(`FROM_ADMIN`, on its admin sockets), and the status changes it pushes to subscribers (`TO_ADMIN`).

`COMMANDS` says how the CLI offers each op that is a command: ``flrunner <op name>`` with the op's
fields as arguments, printing the answer (or one field of it). `flrunner.admin.cli` builds its
subcommands from it and `flrunner.admin.client.AdminClient` its methods, so a new admin op is a
definition here and a handler in `parent.handlers.admin`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flrunner.protocol.fields import ID_LEN, opt, req
from flrunner.protocol.op import Channel, Op

SUBMIT = Op("submit", "Validate and queue a job folder: a parent-local path (job_dir; local admin socket only) or an "
                      "upload (one raw frame: the folder as a tar.gz, named by 'name'); answered with its job id. "
                      "'timeout' is how long the client waits for the answer: a folder read after that is dropped, "
                      "not accepted, so no answer means no job.",
            {"job_dir": opt(str, max_len=4096), "name": opt(str, max_len=256), "timeout": opt(int, float)},
            reply={"job_id": req(str), "job": req(dict)})
JOBS = Op("jobs", "Every job, without its history.", reply={"jobs": req(list)})
STATUS = Op("status", "One job with its status history (a unique prefix of its id is enough).",
            {"job_id": req(str, max_len=ID_LEN)}, reply={"job": req(dict)})
ABORT = Op("abort", "Abort a job: a queued one ends at once; a running one is asked to stop, then SIGTERMed, then "
                    "SIGKILLed.",
           {"job_id": req(str, max_len=ID_LEN), "reason": opt(str, max_len=1024)}, reply={"job": req(dict)})
CLIENTS = Op("clients", "The site registry (tokens are never shown).", reply={"clients": req(list)})
PS = Op("ps", "The parent and every job process: pid, job, status, cpu, rss, uptime.",
        reply={"parent": req(dict), "jobs": req(list)})
SUBSCRIBE = Op("subscribe", "Push every status change to this peer ('job_status') until it goes silent for 'ttl' "
                            "seconds (a ping renews it).", reply={"ttl": req(int, float)})
UNSUBSCRIBE = Op("unsubscribe", "Stop pushing status changes to this peer.")
PING = Op("ping", "Is the parent serving? Also renews a subscription.",
          reply={"pid": req(int), "workspace": req(str), "ready": req(bool), "max_upload": opt(int),
                 "store_error": opt(str)})
SHUTDOWN = Op("shutdown", "Stop the parent gracefully (as SIGTERM does).", reply={"stopping": req(bool)})
VERSION = Op("version", "The running parent's flrunner version, pid, Python and uptime.",
             reply={"version": req(str), "pid": req(int), "python": req(str), "started": req(float),
                    "uptime_s": req(float)})

FROM_ADMIN = Channel("admin", SUBMIT, JOBS, STATUS, ABORT, CLIENTS, PS, SUBSCRIBE, UNSUBSCRIBE, PING, SHUTDOWN,
                     VERSION)

JOB_STATUS = Op("job_status", "A job's status changed: the job as 'status' shows it, without history.",
                {"job": req(dict)}, reply=None)

TO_ADMIN = Channel("to an admin", JOB_STATUS)


@dataclass(frozen=True)
class Command:
    """How the CLI offers an admin op (``flrunner <op name>``) and `AdminClient` calls it.

    Attributes:
        positional: the fields given as positional arguments; the op's other fields are options
            (``--field``).
        result: the answer's field the command prints and the client method returns (the whole
            answer if None).
        custom: the CLI implements the command itself (``submit --wait``, the tables of ``jobs``);
            it is still checked against this table.
    """

    positional: tuple[str, ...] = ()
    result: str | None = None
    custom: bool = False


#: The admin ops that are commands. The others (subscribe, unsubscribe, ping, shutdown) serve the
#: clients' own machinery.
COMMANDS: dict[Op, Command] = {
    SUBMIT: Command(("job_dir",), "job_id", custom=True),
    JOBS: Command(result="jobs", custom=True),
    STATUS: Command(("job_id",), "job", custom=True),
    ABORT: Command(("job_id",), "job", custom=True),
    CLIENTS: Command(result="clients", custom=True),
    PS: Command(custom=True),
    VERSION: Command(),
}
