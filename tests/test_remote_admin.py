"""Remote admin over tcp: CURVE with provisioned admin keys, job folders uploaded (real processes)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest
import zmq

from flrunner.protocol import admin_ops
from flrunner.admin.client import AdminClient, StatusFeed, admin_credentials, pack_job_folder
from flrunner.admin.embed import FLRunner
from flrunner.errors import BadRequest, ParentUnavailable
from flrunner.security.kit import load_kit

from .support import provision_project, wait_for


@pytest.fixture
def project(tmp):
    return provision_project(tmp, ["site-1"], ["alice", "bob"])


@pytest.fixture
def remote_parent(start_parent, project):
    return start_parent("--kit", str(project / "parent"), "--admin", "tcp://127.0.0.1:*")


@pytest.fixture
def admin_of(remote_parent, project):
    """``admin_of(name)`` -> an `AdminClient` holding that participant's kit, at the remote admin socket."""
    clients: list[AdminClient] = []

    def connect(name: str, timeout: float = 10.0) -> AdminClient:
        client = AdminClient.with_kit(project / name, remote_parent.info["remote_admin"], timeout=timeout)
        clients.append(client)
        return client

    yield connect
    for c in clients:
        c.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flrunner", *args], capture_output=True, text=True, timeout=60)


def audit(parent) -> list[dict]:
    return [json.loads(line) for line in (parent.workspace / "audit.log").read_text().splitlines()]


def test_a_provisioned_admin_uploads_and_follows_a_job(remote_parent, admin_of, make_job, project):
    alice = admin_of("alice")
    assert alice.ping()["ready"] is True
    job_dir = make_job([("wf", "Progress", {"steps": 2})], name="remote-job")
    job_id = alice.submit(job_dir)
    with FLRunner.connect(project / "alice", remote_parent.info["remote_admin"]) as runner:
        final = runner.wait(job_id, timeout=30)
    assert final["status"] == "FINISHED:COMPLETED"
    assert final["job_dir"] == f"upload '{job_dir.name}' by alice"  # nothing of the admin's disk is named
    assert [j["job_id"] for j in alice.jobs()] == [job_id]
    entry, = [e for e in audit(remote_parent) if e["op"] == "submit"]
    assert (entry["who"], entry["result"], entry["job_id"]) == ("alice", "OK", job_id)


def test_the_cli_speaks_to_a_remote_parent_with_a_kit(remote_parent, make_job, project):
    endpoint = remote_parent.info["remote_admin"]
    kit = ["--kit", str(project / "alice"), "--parent", endpoint]
    r = cli("submit", str(make_job([("wf", "Progress", {"steps": 1})], name="cli-remote")), "--wait", "--json", *kit)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["status"] == "FINISHED:COMPLETED"
    r = cli("jobs", "--json", *kit)
    assert r.returncode == 0, r.stderr
    assert [j["job_id"] for j in json.loads(r.stdout)] == [done["job_id"]]
    r = cli("logs", done["job_id"], *kit)
    assert r.returncode == 1 and "not available" in r.stderr
    r = cli("jobs", "--parent", endpoint)
    assert r.returncode == 1 and "--kit" in r.stderr


@pytest.mark.slow
def test_keys_that_are_not_an_admins_get_nothing(remote_parent, project, admin_of):
    endpoint = remote_parent.info["remote_admin"]
    parent_key = load_kit(project / "parent").public_key
    site = load_kit(project / "site-1")
    stranger = zmq.curve_keypair()
    for keys in (None, stranger, (site.public_key, site.secret_key)):  # no CURVE, unknown key, a site's key
        client = AdminClient(endpoint, timeout=1.5, curve=None if keys is None else (*keys, parent_key))
        try:
            with pytest.raises(ParentUnavailable, match="did not answer 'jobs'"):
                client.jobs()
        finally:
            client.close()
    log = (remote_parent.workspace / "parent.log").read_text()
    assert "not on the allowlist" in log and "role site, not admin" in log
    assert admin_of("bob").ping()["ready"] is True  # the real admins are served all along


def test_a_revoked_admin_is_disconnected_and_refused(remote_parent, admin_of, project):
    alice, bob = admin_of("alice", timeout=1.5), admin_of("bob")
    assert alice.jobs() == []
    feed = StatusFeed(remote_parent.info["remote_admin"], curve=admin_credentials(project / "alice")[1])
    try:
        r = cli("revoke", "--out", str(project), "alice")
        assert r.returncode == 0, r.stderr
        log = remote_parent.workspace / "parent.log"
        wait_for(lambda: "admin alice: access revoked; 2 connection(s) closed, 1 status feed(s) stopped"
                 in log.read_text(), 10, "alice's connections to be closed")
        with pytest.raises(ParentUnavailable):  # its reconnection is refused by the ZAP handler
            alice.jobs()
        assert bob.jobs() == []
        fresh = admin_of("alice", timeout=1.5)
        with pytest.raises(ParentUnavailable):
            fresh.jobs()
    finally:
        feed.close()


def tar(entries: dict[str, bytes | str]) -> bytes:
    """A tar.gz with files (bytes) and symbolic links (str: the target), under any names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.mark.parametrize("bundle, reason", [
    (tar({"../escape.txt": b"x"}), "leaves"),
    (tar({"/etc/escape.txt": b"x"}), "leaves"),
    (tar({"meta.json": "/etc/passwd"}), "not a regular file"),
    (b"not a tar.gz at all", "cannot be unpacked"),
    (tar({"readme.txt": b"no meta.json here"}), "meta.json"),
])
def test_bad_uploads_are_refused_with_a_reason(remote_parent, admin_of, bundle, reason, tmp):
    alice = admin_of("alice")
    with pytest.raises(BadRequest, match=reason):
        alice.call(admin_ops.SUBMIT, frames=[bundle], name="bad")
    assert not (tmp / "escape.txt").exists()
    assert list((remote_parent.workspace / "uploads").iterdir()) == []  # staging folders are removed
    assert alice.jobs() == []


def test_a_remote_admin_cannot_name_paths_on_the_parents_machine(remote_parent, admin_of, make_job):
    alice = admin_of("alice")
    with pytest.raises(BadRequest, match="remote admin uploads"):
        alice.call(admin_ops.SUBMIT, job_dir=str(make_job([("wf", "Progress", {"steps": 1})])))
    with pytest.raises(BadRequest, match="either job_dir"):
        alice.call(admin_ops.SUBMIT)


def test_an_upload_over_the_limit_is_refused_before_sending(remote_parent, admin_of):
    alice = admin_of("alice")
    limit = alice.ping()["max_upload"]
    with pytest.raises(BadRequest, match=f"at most {limit} bytes"):
        alice.submit_upload(b"\0" * (limit + 1), "huge")
    assert alice.ping()["ready"] is True


def test_symbolic_links_are_refused_when_packing(make_job):
    job_dir = make_job([("wf", "Progress", {"steps": 1})])
    (job_dir / "link").symlink_to("/etc")
    with pytest.raises(BadRequest, match="symbolic link"):
        pack_job_folder(job_dir)


def test_remote_admin_needs_a_kit(procs, tmp):
    p = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(tmp / "ws"), "--sites", "tcp://127.0.0.1:*",
                     "--admin", "tcp://127.0.0.1:*"], "parent-no-kit")
    assert p.wait(20) == 1
    assert "needs the parent's kit" in procs.output("parent-no-kit")
