"""The flrunner protocol: one definition per operation, owning both ends of it.

This layer knows nothing of sockets (`flrunner.transport` carries the messages) and nothing of
jobs' internals (the handlers are the domain's). Each op (`Op`) says what its request and its
answer carry and what it is for; the ops are grouped by who sends them on which socket
(`Channel`):

- `admin_ops`: admins -> the parent (``FROM_ADMIN``), status changes -> subscribers (``TO_ADMIN``);
- `job_ops`: a job process -> its parent (``FROM_JOB``), the parent -> a job process (``TO_JOB``);
- `site_ops`: a site -> the parent (``FROM_SITE``), the parent -> a site (``TO_SITE``);
- `aux_ops`: aux requests between a job's engine and its sites, on each of those legs.

A sender builds its messages through the op (`Op.call`, `Op.send`, `Op.start`, `Op.message`); a
receiver serves them through a `Dispatcher`, which validates them and turns whatever its
handler raises into a coded answer. Reply codes are `Rc` (`flrunner.errors`).
"""

from __future__ import annotations

from flrunner.errors import Rc
from flrunner.protocol import admin_ops, aux_ops, job_ops, site_ops
from flrunner.protocol.dispatch import Dispatcher, Handler, Request
from flrunner.protocol.fields import MAX_FIELD_DEPTH, Field, deeper_than, opt, req
from flrunner.protocol.op import Channel, Op, Port

__all__ = ["MAX_FIELD_DEPTH", "Channel", "Dispatcher", "Field", "Handler", "Op", "Port", "Rc", "Request",
           "admin_ops", "aux_ops", "deeper_than", "job_ops", "opt", "req", "site_ops"]
