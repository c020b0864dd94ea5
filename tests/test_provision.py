"""Provisioning and revocation (`flrunner.security`): layout, permissions, real CURVE pairs,
adding participants without touching the others, refusals, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from flrunner.errors import BadRequest, Conflict, NotFound
from flrunner.security import (InsecurePermissions, InvalidEndpoint, InvalidName, KitError, ParticipantExists, Role,
                               Status, UnknownParticipant, load_allowlist, load_kit, provision, revoke)

SITES = ("site-1", "site-2")
ADMINS = ("alice",)


@pytest.fixture
def project(tmp: Path) -> Path:
    out = tmp / "project"
    provision(out, sites=SITES, admins=ADMINS)
    return out


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under ``root``: (sha256 or "dir", mode)."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        digest = "dir" if stat.S_ISDIR(st.st_mode) else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (digest, stat.S_IMODE(st.st_mode))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flrunner", *args], capture_output=True, text=True, timeout=60)


# --- layout and permissions ----------------------------------------------------------------------------
def test_layout(project: Path):
    files = {p for p, (digest, _) in snapshot(project).items() if digest != "dir"}
    kit = lambda name: {f"{name}/kit.json", f"{name}/{name}.key", f"{name}/{name}.key_secret", f"{name}/parent.key"}
    assert files == ({"parent/kit.json", "parent/parent.key", "parent/parent.key_secret", "parent/allowlist.json",
                      "parent/revoked.json", "parent/allowed/site-1.key", "parent/allowed/site-2.key",
                      "parent/allowed/alice.key"}
                     | kit("site-1") | kit("site-2") | kit("alice"))
    parent_doc = json.loads((project / "parent/kit.json").read_text())
    assert parent_doc["name"] == "parent" and parent_doc["role"] == "parent"
    assert (parent_doc["endpoint"], parent_doc["admin_endpoint"]) == ("tcp://127.0.0.1:8002", "tcp://127.0.0.1:8003")
    assert json.loads((project / "alice/kit.json").read_text())["endpoint"] == "tcp://127.0.0.1:8003"
    site_doc = json.loads((project / "site-1/kit.json").read_text())
    assert (site_doc["name"], site_doc["role"], site_doc["endpoint"]) == ("site-1", "site", "tcp://127.0.0.1:8002")
    assert json.loads((project / "alice/kit.json").read_text())["role"] == "admin"
    allow = json.loads((project / "parent/allowlist.json").read_text())["participants"]
    assert {n: e["role"] for n, e in allow.items()} == {"site-1": "site", "site-2": "site", "alice": "admin"}
    for name, entry in allow.items():
        assert entry["public_key"].encode() == zmq.auth.load_certificate(project / name / f"{name}.key")[0]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_permissions_whatever_the_umask(tmp: Path, umask: int):
    old = os.umask(umask)
    try:
        out = tmp / "deep" / "project"
        provision(out, sites=SITES, admins=ADMINS)
    finally:
        os.umask(old)
    assert mode(out) == 0o700
    for kit in ("parent", *SITES, *ADMINS):
        assert mode(out / kit) == 0o700, kit
        secret = out / kit / f"{kit}.key_secret"
        assert mode(secret) == 0o600, secret
    for d in ("allowed", "revoked"):
        assert mode(out / "parent" / d) == 0o700
    secrets = [p for p in out.rglob("*") if p.name.endswith(".key_secret")]
    assert len(secrets) == 1 + len(SITES) + len(ADMINS)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "staging or temp files left behind"


def test_existing_empty_directory_is_made_private(tmp: Path):
    out = tmp / "empty"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    provision(out, sites=["site-1"])
    assert mode(out) == 0o700


# --- keys ----------------------------------------------------------------------------------------------
def test_keys_load_with_zmq_auth_and_match_the_kits(project: Path):
    parent_public, parent_secret = zmq.auth.load_certificate(project / "parent/parent.key_secret")
    assert zmq.curve_public(parent_secret) == parent_public
    assert zmq.auth.load_certificate(project / "parent/parent.key") == (parent_public, None)
    keys = set()
    for name in (*SITES, *ADMINS):
        public, secret = zmq.auth.load_certificate(project / name / f"{name}.key_secret")
        assert zmq.curve_public(secret) == public
        assert zmq.auth.load_certificate(project / name / "parent.key")[0] == parent_public
        kit = load_kit(project / name)
        assert (kit.name, kit.public_key, kit.secret_key, kit.parent_public_key) == (name, public, secret, parent_public)
        assert kit.role is (Role.ADMIN if name in ADMINS else Role.SITE)
        assert secret.decode() not in repr(kit)
        keys.add(public)
    assert len(keys | {parent_public}) == 1 + len(SITES) + len(ADMINS)
    # allowed/ is a directory zmq.auth can load as is.
    assert set(zmq.auth.load_certificates(project / "parent/allowed")) == keys
    parent = load_kit(project / "parent")
    assert parent.role is Role.PARENT and parent.public_key == parent.parent_public_key == parent_public


def _curve_pair(ctx: zmq.Context, server_secret: bytes, client: tuple[bytes, bytes], server_key: bytes):
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server = True
    router.curve_secretkey = server_secret
    monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.curve_publickey, dealer.curve_secretkey = client
    dealer.curve_serverkey = server_key
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return router, dealer, monitor


def _handshake_event(monitor: zmq.Socket) -> zmq.Event:
    assert monitor.poll(5000), "no handshake event within 5 s"
    return recv_monitor_message(monitor)["event"]


def test_parent_and_site_keys_complete_a_curve_handshake(project: Path):
    _, parent_secret = zmq.auth.load_certificate(project / "parent/parent.key_secret")
    site = zmq.auth.load_certificate(project / "site-1/site-1.key_secret")
    server_key, _ = zmq.auth.load_certificate(project / "site-1/parent.key")
    ctx = zmq.Context()
    try:
        router, dealer, monitor = _curve_pair(ctx, parent_secret, site, server_key)
        assert _handshake_event(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        dealer.send(b"hello")
        assert router.poll(5000)
        identity, body = router.recv_multipart()
        assert body == b"hello"
        router.send_multipart([identity, b"welcome"])
        assert dealer.poll(5000) and dealer.recv() == b"welcome"
    finally:
        ctx.destroy(linger=0)


def test_another_projects_parent_key_fails_the_handshake(project: Path, tmp: Path):
    other = tmp / "other"
    provision(other, sites=["site-1"])
    _, parent_secret = zmq.auth.load_certificate(project / "parent/parent.key_secret")
    site = zmq.auth.load_certificate(other / "site-1/site-1.key_secret")
    server_key, _ = zmq.auth.load_certificate(other / "site-1/parent.key")
    ctx = zmq.Context()
    try:
        router, dealer, monitor = _curve_pair(ctx, parent_secret, site, server_key)
        dealer.send(b"hello")
        assert _handshake_event(monitor) == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        assert not router.poll(0)
    finally:
        ctx.destroy(linger=0)


# --- adding participants -------------------------------------------------------------------------------
def test_adding_a_site_leaves_every_other_file_byte_identical(project: Path):
    before = snapshot(project)
    reports = provision(project, sites=["site-3"])
    assert [(r.name, r.status) for r in reports] == [("parent", Status.EXISTS), ("site-3", Status.CREATED)]
    after = snapshot(project)
    changed = {p for p in before if before[p] != after[p]}
    assert changed == {"parent/allowlist.json"}
    assert set(after) - set(before) == {"site-3", "site-3/kit.json", "site-3/site-3.key", "site-3/site-3.key_secret",
                                        "site-3/parent.key", "parent/allowed/site-3.key"}
    allowlist = load_allowlist(project / "parent")
    assert sorted(p.name for p in allowlist.values()) == ["alice", "site-1", "site-2", "site-3"]
    assert load_kit(project / "site-3").parent_public_key == load_kit(project / "parent").public_key


def test_new_sites_get_the_projects_endpoint(tmp: Path):
    out = tmp / "p"
    provision(out, sites=["a"], admins=["root"], endpoint="tcp://fl.example.org:9002",
              admin_endpoint="tcp://fl.example.org:9003")
    provision(out, sites=["b"], admins=["ops"])
    assert load_kit(out / "b").endpoint == "tcp://fl.example.org:9002"
    assert load_kit(out / "ops").endpoint == "tcp://fl.example.org:9003"
    provision(out, sites=["c"], endpoint="tcp://10.0.0.1:9002")
    assert load_kit(out / "c").endpoint == "tcp://10.0.0.1:9002"
    assert json.loads((out / "parent/kit.json").read_text())["endpoint"] == "tcp://fl.example.org:9002"


def test_exact_re_request_is_a_no_op(project: Path):
    before = snapshot(project)
    reports = provision(project, sites=SITES, admins=ADMINS, endpoint="tcp://127.0.0.1:8002")
    assert {r.status for r in reports} == {Status.EXISTS}
    assert snapshot(project) == before


@pytest.mark.parametrize("request_kwargs, match", [
    ({"admins": ["site-1"]}, "already exists as site"),
    ({"sites": ["alice"]}, "already exists as admin"),
    ({"sites": ["site-1"], "endpoint": "tcp://10.0.0.1:8002"}, "refusing to change it"),
    ({"sites": ["new", "site-2"], "admins": ["site-2"]}, "both site and admin"),
])
def test_conflicting_requests_are_refused_and_change_nothing(project: Path, request_kwargs, match):
    before = snapshot(project)
    with pytest.raises((ParticipantExists, InvalidName), match=match) as info:
        provision(project, **request_kwargs)
    assert isinstance(info.value, (Conflict, BadRequest))
    assert snapshot(project) == before


def test_both_roles_in_one_request_is_refused(tmp: Path):
    with pytest.raises(InvalidName, match="both site and admin"):
        provision(tmp / "p", sites=["x"], admins=["x"])
    assert not (tmp / "p").exists()


def test_existing_folder_is_never_overwritten(project: Path):
    (project / "site-9").mkdir()
    before = snapshot(project)
    with pytest.raises(ParticipantExists, match="site-9.*refusing to overwrite"):
        provision(project, sites=["site-8", "site-9"])
    assert snapshot(project) == before


def test_a_foreign_directory_is_not_turned_into_a_project(tmp: Path):
    (tmp / "home").mkdir()
    (tmp / "home" / "notes.txt").write_text("mine")
    with pytest.raises(KitError, match="not a flrunner project"):
        provision(tmp / "home", sites=["site-1"])
    assert [p.name for p in (tmp / "home").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "../up", "..", "a b", "x" * 129, "server", "@ALL",
                                  "parent", "naïve"])
def test_invalid_names_are_refused(tmp: Path, name: str):
    with pytest.raises(InvalidName) as info:
        provision(tmp / "p", sites=["ok", name])
    assert isinstance(info.value, BadRequest)
    with pytest.raises(InvalidName):
        provision(tmp / "p", admins=[name])
    assert not (tmp / "p").exists()


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8002", "tcp://host", "http://h:1", "tcp://*:8002", "tcp://a b:1"])
def test_invalid_endpoints_are_refused(tmp: Path, endpoint: str):
    with pytest.raises(InvalidEndpoint):
        provision(tmp / "p", sites=["a"], endpoint=endpoint)
    assert not (tmp / "p").exists()


def test_leftovers_of_a_killed_run_are_removed(tmp: Path):
    out = tmp / "p"
    out.mkdir()
    stage = out / ".new-parent.abc123"
    stage.mkdir()
    (stage / "parent.key_secret").write_text("half-written")
    provision(out, sites=["site-1"])
    assert sorted(p.name for p in out.iterdir()) == ["parent", "site-1"]


def test_a_kit_made_by_an_interrupted_run_is_restored(project: Path):
    doc = json.loads((project / "parent/allowlist.json").read_text())
    del doc["participants"]["site-2"]
    (project / "parent/allowlist.json").write_text(json.dumps(doc))
    (project / "parent/allowed/site-2.key").unlink()
    assert "site-2" not in {p.name for p in load_allowlist(project / "parent").values()}
    [_, report] = provision(project, sites=["site-2"])
    assert report.status is Status.RESTORED
    assert load_allowlist(project / "parent")[load_kit(project / "site-2").public_key].name == "site-2"
    assert (project / "parent/allowed/site-2.key").exists()


# --- revocation ----------------------------------------------------------------------------------------
def test_revoke_removes_from_the_loaded_allowlist_and_keeps_the_kit(project: Path):
    site2 = load_kit(project / "site-2")
    assert load_allowlist(project / "parent")[site2.public_key] == ("site-2", Role.SITE)
    kit_before = {p: v for p, v in snapshot(project).items() if p.startswith("site-2")}
    report = revoke(project, "site-2", reason="left the consortium")
    assert (report.name, report.role, report.status) == ("site-2", Role.SITE, Status.REVOKED)
    allowlist = load_allowlist(project / "parent")
    assert site2.public_key not in allowlist
    assert sorted(p.name for p in allowlist.values()) == ["alice", "site-1"]
    assert "site-2" not in json.loads((project / "parent/allowlist.json").read_text())["participants"]
    record = json.loads((project / "parent/revoked.json").read_text())["participants"]["site-2"]
    assert record["public_key"].encode() == site2.public_key and record["reason"] == "left the consortium"
    assert not (project / "parent/allowed/site-2.key").exists()
    assert (project / "parent/revoked/site-2.key").exists()
    assert {p: v for p, v in snapshot(project).items() if p.startswith("site-2")} == kit_before
    assert load_kit(project / "site-2").public_key == site2.public_key

    before = snapshot(project)
    assert revoke(project, "site-2").status is Status.ALREADY_REVOKED
    assert snapshot(project) == before
    with pytest.raises(ParticipantExists, match="revoked"):
        provision(project, sites=["site-2"])
    assert snapshot(project) == before


def test_revoked_json_wins_over_a_stale_allowlist(project: Path):
    allow = (project / "parent/allowlist.json").read_bytes()
    revoke(project, "site-1")
    # As if the revocation stopped between writing revoked.json and allowlist.json.
    (project / "parent/allowlist.json").write_bytes(allow)
    assert "site-1" not in {p.name for p in load_allowlist(project / "parent").values()}


def test_revoke_refusals(project: Path, tmp: Path):
    with pytest.raises(UnknownParticipant) as info:
        revoke(project, "nobody")
    assert isinstance(info.value, NotFound)
    with pytest.raises(InvalidName):
        revoke(project, "parent")
    with pytest.raises(InvalidName):
        revoke(project, "../project/site-1")
    with pytest.raises(KitError, match="not a flrunner project"):
        revoke(tmp, "site-1")


# --- loaders: permissions and malformed files ----------------------------------------------------------
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o610, 0o660])
@pytest.mark.parametrize("kit", ["site-1", "parent"])
def test_too_open_secret_keys_are_refused(project: Path, kit: str, bad_mode: int):
    secret = project / kit / f"{kit}.key_secret"
    os.chmod(secret, bad_mode)
    with pytest.raises(InsecurePermissions) as info:
        load_kit(project / kit)
    assert str(secret) in str(info.value) and "chmod 600" in str(info.value)
    assert stat.S_IMODE(secret.stat().st_mode) == bad_mode, "a loader never repairs permissions"


def test_files_others_may_write_are_refused(project: Path):
    os.chmod(project / "parent/allowlist.json", 0o666)
    with pytest.raises(InsecurePermissions, match="allowlist.json.*writable"):
        load_allowlist(project / "parent")
    os.chmod(project / "parent/allowlist.json", 0o644)
    os.chmod(project / "parent/revoked.json", 0o646)
    with pytest.raises(InsecurePermissions, match="revoked.json"):
        load_allowlist(project / "parent")
    os.chmod(project / "parent/revoked.json", 0o644)
    os.chmod(project / "parent", 0o770)
    with pytest.raises(InsecurePermissions, match="parent"):
        load_allowlist(project / "parent")
    os.chmod(project / "site-1", 0o777)
    with pytest.raises(InsecurePermissions, match="site-1"):
        load_kit(project / "site-1")


def _break(project: Path, what: str) -> Path:
    """Damage one file of the project; return the file the error must name."""
    kit = project / "site-1"
    if what == "no kit.json":
        (kit / "kit.json").unlink()
        return kit / "kit.json"
    if what == "kit.json not JSON":
        (kit / "kit.json").write_text("{not json")
        return kit / "kit.json"
    if what == "kit.json wrong format":
        (kit / "kit.json").write_text(json.dumps({"format": 99, "name": "site-1", "role": "site"}))
        return kit / "kit.json"
    if what == "kit.json bad role":
        doc = json.loads((kit / "kit.json").read_text())
        (kit / "kit.json").write_text(json.dumps({**doc, "role": "superuser"}))
        return kit / "kit.json"
    if what == "no parent.key":
        (kit / "parent.key").unlink()
        return kit / "parent.key"
    if what == "no secret key":
        (kit / "site-1.key_secret").unlink()
        return kit / "site-1.key_secret"
    if what == "secret of another site":
        other = (project / "site-2/site-2.key_secret").read_bytes()
        (kit / "site-1.key_secret").write_bytes(other)
        return kit / "site-1.key_secret"
    if what == "secret file without secret":
        (kit / "site-1.key_secret").write_bytes((kit / "site-1.key").read_bytes())
        return kit / "site-1.key_secret"
    if what == "garbled public key":
        (kit / "site-1.key").write_text('curve\n    public-key = "short"\n')
        return kit / "site-1.key"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["no kit.json", "kit.json not JSON", "kit.json wrong format", "kit.json bad role",
                                  "no parent.key", "no secret key", "secret of another site",
                                  "secret file without secret", "garbled public key"])
def test_malformed_kits_are_refused_naming_the_file(project: Path, what: str):
    culprit = _break(project, what)
    with pytest.raises(KitError) as info:
        load_kit(project / "site-1")
    assert info.value.path == str(culprit) and str(culprit) in str(info.value)


def test_malformed_allowlists_are_refused_naming_the_file(project: Path):
    allow_file = project / "parent/allowlist.json"
    doc = json.loads(allow_file.read_text())
    good = allow_file.read_text()
    cases = [
        ({**doc, "participants": {**doc["participants"], "x": {"role": "site", "public_key": "nope"}}}, "public_key"),
        ({**doc, "participants": {**doc["participants"], "x": {"role": "root", "public_key": "a" * 40}}}, "role"),
        ({**doc, "participants": {**doc["participants"], "../x": {"role": "site", "public_key": "a" * 40}}}, "name"),
        ({**doc, "participants": {**doc["participants"], "x": doc["participants"]["site-1"]}}, "bound to 'site-1'"),
        ({"format": 1}, "participants"),
    ]
    for bad, match in cases:
        allow_file.write_text(json.dumps(bad))
        with pytest.raises(KitError, match=match) as info:
            load_allowlist(project / "parent")
        assert info.value.path == str(allow_file)
    allow_file.unlink()
    with pytest.raises(KitError, match="missing"):
        load_allowlist(project / "parent")
    allow_file.write_text(good)
    assert len(load_allowlist(project / "parent")) == 3


# --- CLI -----------------------------------------------------------------------------------------------
def test_cli_json(tmp: Path):
    out = tmp / "p"
    r = cli("provision", "--out", str(out), "--site", "site-1", "--site", "site-2", "--admin", "alice", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out)
    assert [(p["name"], p["role"], p["status"]) for p in doc["participants"]] == [
        ("parent", "parent", "created"), ("site-1", "site", "created"), ("site-2", "site", "created"),
        ("alice", "admin", "created")]
    for p in doc["participants"]:
        assert load_kit(p["kit"]).public_key.decode() == p["public_key"]
        assert p["endpoint"] == ("tcp://127.0.0.1:8003" if p["role"] == "admin" else "tcp://127.0.0.1:8002")

    r = cli("provision", "--out", str(out), "--site", "site-1", "--site", "site-3", "--json")
    assert r.returncode == 0, r.stderr
    assert [(p["name"], p["status"]) for p in json.loads(r.stdout)["participants"]] == [
        ("parent", "exists"), ("site-1", "exists"), ("site-3", "created")]

    r = cli("revoke", "--out", str(out), "site-2", "--reason", "test", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["name"], doc["role"], doc["status"], doc["reason"]) == ("site-2", "site", "revoked", "test")
    assert sorted(p.name for p in load_allowlist(out / "parent").values()) == ["alice", "site-1", "site-3"]


def test_cli_text_and_errors(tmp: Path):
    out = tmp / "p"
    r = cli("provision", "--out", str(out), "--site", "site-1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0].split() == ["STATUS", "NAME", "ROLE", "ENDPOINT", "KIT"]
    assert "created  site-1" in r.stdout
    r = cli("provision", "--out", str(out), "--admin", "site-1")
    assert r.returncode == 1 and "error: 'site-1' already exists as site" in r.stderr
    r = cli("provision", "--out", str(out), "--site", "server")
    assert r.returncode == 1 and "'server' is reserved" in r.stderr
    r = cli("revoke", "--out", str(out), "site-1")
    assert r.returncode == 0 and "revoked site 'site-1'" in r.stdout
    r = cli("revoke", "--out", str(out), "ghost")
    assert r.returncode == 1 and "'ghost' is not a participant" in r.stderr
    assert cli("provision", "--site", "x").returncode == 2
