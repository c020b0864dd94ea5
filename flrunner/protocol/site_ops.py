"""A site agent and the parent: what a site asks (`FROM_SITE`, on the parent's sites socket) and
what the parent asks of a site (`TO_SITE`).

Every op a site sends but ``login`` carries the token its login returned.
"""

from __future__ import annotations

from flrunner.protocol import aux_ops
from flrunner.protocol.fields import ID_LEN, KEY_LEN, opt, req
from flrunner.protocol.op import Channel, Op

LOGIN = Op("login", "A site logs in with its name and gets a token; it lists the jobs it runs, and is told which of "
                    "them to stop (jobs this parent does not run) and the public keys of the others' job processes "
                    "('job_keys'). 'instance' is the agent process's random id: the same instance logging in again "
                    "resumes its session (same token); another agent, or one that sends no instance, is refused "
                    "(CONFLICT) while the name's session is alive.",
           {"name": req(str, max_len=ID_LEN), "resources": opt(dict), "pid": opt(int),
            "jobs": opt(list, max_len=10_000), "instance": opt(str, max_len=64)},
           reply={"token": req(str), "heartbeat_interval": req(int, float), "revision": req(int),
                  "stop_jobs": opt(list), "job_keys": opt(dict)},
           needs_auth=False)
HEARTBEAT = Op("heartbeat", "A site is alive.", {"token": req(str, max_len=ID_LEN)})
LOGOUT = Op("logout", "A site leaves the registry.", {"token": req(str, max_len=ID_LEN)})

FROM_SITE = Channel("sites", LOGIN, HEARTBEAT, LOGOUT, aux_ops.FROM_SITE)

CHECK_RESOURCES = Op("check_resources", "Does this resource spec fit? Reserve it: OK with {token}, or CONFLICT with "
                                        "{reason}.",
                     {"job_id": req(str), "spec": req(dict), "ttl": req(int, float)},
                     reply={"token": opt(str), "reason": opt(str)})
CANCEL_RESOURCES = Op("cancel_resources", "Release a reservation.", {"token": req(str)}, reply=None)
START_JOB = Op("start_job", "Run a job's site app (one raw frame: the app folder as a tar.gz). 'job_key' is the job "
                            "process's public key if it has said hello already.",
               {"job_id": req(str), "job_name": req(str), "app": req(str), "token": opt(str), "meta": opt(dict),
                "job_key": opt(bytes, max_len=KEY_LEN)},
               reply={"started": opt(bool), "reason": opt(str)})
STOP_JOB = Op("stop_job", "Stop this site's part of a job.", {"job_id": req(str), "reason": opt(str)}, reply=None)
JOB_KEY = Op("job_key", "The public key of a job's process (sent after each of its hellos): the site seals its "
                        "secure aux requests to that job's engine with it.",
             {"job_id": req(str), "key": req(bytes, max_len=KEY_LEN)}, reply=None)

TO_SITE = Channel("to a site", aux_ops.TO_SITE, CHECK_RESOURCES, CANCEL_RESOURCES, START_JOB, STOP_JOB, JOB_KEY)
