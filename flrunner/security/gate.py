"""Who may connect to the parent's CURVE sockets: keys on the allowlist, each bound to a name.

The parent runs one ZAP handler (pyzmq's `ThreadAuthenticator`) for its CURVE sockets, one ZAP
domain per socket: the sites socket (`SITES_DOMAIN`) admits site keys, the remote admin socket
(`ADMIN_DOMAIN`) admin keys. A CURVE client is accepted only if its public key is on the parent
kit's allowlist (not revoked) with the socket's role, and the connection gets the participant's
name as its ZAP User-Id. The parent then checks on every message that the name is still
allowed, and that a site acts only as that name: a site cannot log in as another site.

The allowlist is re-read when its files change (checked once a second by the parent, and at
every new connection): a revoked key is refused at its next connection, and the parent drops
the revoked site from its registry at once, so its token stops working.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from flrunner.security.kit import Participant, Role, allowlist_files, load_allowlist

log = logging.getLogger(__name__)

#: The ZAP domain of the sites socket.
SITES_DOMAIN = "flrunner-sites"
#: The ZAP domain of the remote admin socket.
ADMIN_DOMAIN = "flrunner-admin"
#: The ZAP domain of a tcp jobs socket.
JOBS_DOMAIN = "flrunner-jobs"
#: A key refused again and again (a revoked peer reconnecting every 100 ms) is logged once per this many seconds.
REFUSAL_LOG_INTERVAL = 60.0


class Gate:
    """The allowlist, kept current, answering "may this key connect, and as whom".

    Args:
        parent_kit_dir: the parent's kit (holds allowlist.json and revoked.json).
        role: the role a key needs on this socket.
    """

    def __init__(self, parent_kit_dir: str | os.PathLike, role: Role = Role.SITE) -> None:
        self.dir = Path(parent_kit_dir)
        self.role = role
        self._lock = threading.Lock()
        self._allow = load_allowlist(self.dir)
        self._stamp = self._stamps()
        self._revoked: set[str] = set()
        self._refusals: dict[bytes, list[float]] = {}  # key -> [when last logged, refusals since]
        self._last_refusal_line = float("-inf")

    def _stamps(self) -> tuple:
        out: list[tuple[int, int, int] | None] = []
        for f in allowlist_files(self.dir):
            try:
                st = f.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def reload_if_changed(self) -> None:
        """Re-read the allowlist if its files changed; names that lost access are kept for
        `take_revoked` (the ZAP thread may be the one that notices)."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        try:
            allow = load_allowlist(self.dir)
        except Exception as exc:  # keep the last good list; say so loudly
            log.error("cannot reload the allowlist of %s (keeping the previous one): %s", self.dir, exc)
            return
        with self._lock:
            before = {p.name for p in self._allow.values()}
            self._allow, self._stamp = allow, stamp
            gone = before - {p.name for p in allow.values()}
            self._revoked |= gone
        if gone:
            log.warning("allowlist reloaded: access revoked for %s", ", ".join(sorted(gone)))

    def take_revoked(self) -> list[str]:
        """The names that lost access since the last call."""
        with self._lock:
            gone, self._revoked = sorted(self._revoked), set()
        return gone

    def allows(self, name: str) -> bool:
        """Whether ``name`` is (still) on the allowlist with this gate's role."""
        with self._lock:
            return any(p.name == name and p.role == self.role for p in self._allow.values())

    def participant(self, z85_key: bytes) -> Participant | None:
        with self._lock:
            return self._allow.get(z85_key)

    def public_key(self, name: str) -> bytes | None:
        """The Z85 public key bound to ``name`` with this gate's role, or None. The allowlist binds
        each key to one name and each name to one key, so for a connection whose ZAP User-Id is
        ``name`` this is the key it connected with."""
        with self._lock:
            return next((k for k, p in self._allow.items() if p.name == name and p.role == self.role), None)

    # The ZAP handler's credentials-provider interface.
    def callback(self, domain: str, z85_key: bytes) -> bool:
        self.reload_if_changed()
        p = self.participant(z85_key)
        allowed = p is not None and p.role == self.role
        if not allowed:
            why = "not on the allowlist" if p is None else f"role {p.role.value}, not {self.role.value}"
            self._log_refusal(z85_key, why)
        return allowed

    def _log_refusal(self, z85_key: bytes, why: str) -> None:
        """Log a refused key once per `REFUSAL_LOG_INTERVAL` (with how often it was refused since),
        and at most one refusal line a second in all, so that neither a revoked peer reconnecting
        every 100 ms nor strangers with ever new keys can fill the disk."""
        now = time.monotonic()
        if len(self._refusals) > 4096:
            self._refusals.clear()
        last = self._refusals.setdefault(z85_key, [float("-inf"), 0])
        last[1] += 1
        if now - last[0] < REFUSAL_LOG_INTERVAL or now - self._last_refusal_line < 1.0:
            return
        again = f"; {last[1] - 1} more refusal(s) of this key since" if last[1] > 1 else ""
        log.warning("refused a CURVE connection with key %s… (%s)%s", z85_key[:8].decode(errors="replace"), why, again)
        last[:] = [now, 0]
        self._last_refusal_line = now


class AnyKey:
    """A ZAP credentials provider that admits every CURVE key: for the jobs socket, where a job
    process authenticates with its per-job secret and CURVE gives encryption and the parent's
    identity. (pyzmq's own "allow any" switch would apply to every domain of the handler.)"""

    def callback(self, domain: str, z85_key: bytes) -> bool:
        return True


class _Authenticator(ThreadAuthenticator):
    def __init__(self, context: zmq.Context, gates: dict[str, Gate | AnyKey]) -> None:
        super().__init__(context)
        self.gates = [g for g in gates.values() if isinstance(g, Gate)]

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called only after a gate admitted the key; every gate reads the same allowlist, and a
        # key is bound to one name whatever the socket (a job process's key has none).
        p = self.gates[0].participant(z85.encode(client_public_key)) if self.gates else None
        return p.name if p is not None else ""


def start_authenticator(context: zmq.Context, gates: dict[str, Gate | AnyKey]) -> ThreadAuthenticator:
    """Run the ZAP handler for each ``{domain: gate}`` on its own thread (call ``stop()`` at shutdown)."""
    auth = _Authenticator(context, gates)
    auth.start()
    for domain, gate in gates.items():
        auth.configure_curve_callback(domain=domain, credentials_provider=gate)
    return auth


def make_curve_server(sock: zmq.Socket, public_key: bytes, secret_key: bytes, domain: str = SITES_DOMAIN) -> None:
    """Configure a (not yet bound) socket as a CURVE server checked by the ZAP handler for ``domain``."""
    sock.curve_server = True
    sock.curve_publickey = public_key
    sock.curve_secretkey = secret_key
    sock.zap_domain = domain.encode()


def make_curve_client(sock: zmq.Socket, public_key: bytes, secret_key: bytes, server_key: bytes) -> None:
    """Configure a (not yet connected) socket as a CURVE client of the parent."""
    sock.curve_publickey = public_key
    sock.curve_secretkey = secret_key
    sock.curve_serverkey = server_key
