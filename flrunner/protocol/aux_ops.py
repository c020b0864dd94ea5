"""Aux: requests between a job's engine and its sites, on every leg they travel.

The payload is a Shareable in raw frames (`flrunner.aux.payload`), never decoded by the parent,
which routes it: a job's request goes to the parent (`FROM_JOB`), then to each target site
(`TO_SITE`); a site's request goes to the parent (`FROM_SITE`), then to the job's process
(`TO_JOB`). A secure request's payload is one ciphertext frame (`flrunner.security.sealed`); the
key that opens it travels sealed for each receiver, and the answer comes back sealed to the
sender's key.
"""

from __future__ import annotations

from flrunner.protocol.fields import ID_LEN, KEY_LEN, opt, req
from flrunner.protocol.op import Op

FROM_JOB = Op(
    "aux", "A job's aux request for sites of the job. The parent first answers with the plan ({targets}), then "
           "once per target with the site's answer (its payload frames, {site}) or the reason there is none "
           "({site, reason} and an error code). With 'fire_and_forget' nothing is answered. A secure request "
           "carries 'sealed' ({site: the payload's key sealed for that site}) and 'sender_key' (the job's public "
           "key); a target with no sealed key is not sent it.",
    {"targets": opt(list, max_len=100_000), "topic": req(str, max_len=256), "timeout": req(int, float),
     "fire_and_forget": opt(bool), "sealed": opt(dict, max_len=100_000, values=req(bytes, max_len=KEY_LEN)),
     "sender_key": opt(bytes, max_len=KEY_LEN)})

TO_SITE = Op(
    "aux", "A job's aux request for this site; answered with the site's reply payload. A secure one carries the "
           "payload's key sealed for this site ('sealed_key') and the job's public key ('sender_key'); the reply "
           "is then sealed to that key.",
    {"job_id": req(str), "topic": req(str), "timeout": req(int, float), "fire_and_forget": opt(bool),
     "sealed_key": opt(bytes, max_len=KEY_LEN), "sender_key": opt(bytes, max_len=KEY_LEN)})

FROM_SITE = Op(
    "aux", "A site's aux request to a job's engine, answered with the engine's reply ({job_id} and its payload). "
           "A secure one carries the payload's key sealed for the job process's key ('sealed_key').",
    {"token": req(str, max_len=ID_LEN), "job_id": req(str, max_len=ID_LEN), "topic": req(str, max_len=256),
     "timeout": req(int, float), "fire_and_forget": opt(bool), "sealed_key": opt(bytes, max_len=KEY_LEN)})

TO_JOB = Op(
    "aux", "A site's aux request to this job's engine; answer it with the handler's reply payload. A secure one "
           "carries the payload's key sealed by the site for the job's key ('sealed_key'); the reply is then "
           "sealed to the site's key.",
    {"site": req(str), "topic": req(str), "timeout": req(int, float), "fire_and_forget": opt(bool),
     "sealed_key": opt(bytes, max_len=KEY_LEN)})
