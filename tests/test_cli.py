"""The `flrunner` command line against a real parent: JSON shapes, errors, titles."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from .support import wait_for


def cli(ws, *args, check=True, timeout=60):
    r = subprocess.run([sys.executable, "-m", "flrunner", *args, "--workspace", str(ws)],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"flrunner {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def cli_json(ws, *args):
    return json.loads(cli(ws, *args, "--json").stdout)


def test_json_shapes(parent, start_site, make_job, tmp):
    ws = tmp / "ws"
    start_site(parent, "site-1")
    job_id = cli_json(ws, "submit", str(make_job([("wf", "Progress", {"steps": 2})], name="shapes")))["job_id"]
    parent.wait_final(job_id)
    job = cli_json(ws, "status", job_id)
    assert {"job_id", "name", "status", "history", "pid", "exit_code", "signal"} <= set(job)
    assert job["name"] == "shapes" and job["status"] == "FINISHED:COMPLETED"
    assert all(set(h) == {"status", "time", "reason"} for h in job["history"])
    jobs = cli_json(ws, "jobs")
    assert [j["job_id"] for j in jobs] == [job_id]
    assert "history" not in jobs[0] and {"job_id", "name", "status", "pid", "exit_code", "signal"} <= set(jobs[0])
    clients = cli_json(ws, "clients")
    assert [c["name"] for c in clients] == ["site-1"] and "last_seen" in clients[0]
    assert "token" not in json.dumps(clients)
    # A prefix of the id is enough, as with git commits.
    assert cli_json(ws, "status", job_id[:8])["job_id"] == job_id


def test_ps_lists_parent_and_job_processes(parent, make_job, tmp):
    ws = tmp / "ws"
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})], name="sleepy"))
    parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")
    ps = cli_json(ws, "ps")
    assert ps["parent"]["pid"] == parent.pid and ps["parent"]["rss_bytes"] > 0
    [job] = ps["jobs"]
    assert set(job) >= {"job_id", "pid", "status", "cpu_percent", "rss_bytes", "uptime_s"}
    assert job["job_id"] == job_id and job["status"] == "RUNNING" and job["rss_bytes"] > 0
    text = cli(ws, "ps").stdout
    assert job_id in text and str(parent.pid) in text
    cli(ws, "abort", job_id)
    parent.wait_final(job_id)


def test_process_titles_and_no_secret_in_ps(parent, start_site, make_job, tmp):
    start_site(parent, "site-t")
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})], name="titled"))
    pid = parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")["pid"]
    args = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert f"flrunner-job: {job_id} titled" in args
    assert f"flrunner-parent: {tmp / 'ws'}" in args
    assert "flrunner-site: site-t" in args
    child = psutil.Process(pid)
    env = child.environ()
    assert env["FLRUNNER_JOB_ID"] == job_id
    secret_hash = None
    import sqlite3

    secret_hash, = sqlite3.connect(tmp / "ws" / "jobs.db").execute(
        "SELECT secret_hash FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    assert secret_hash and len(secret_hash) == 64  # only a hash is stored
    for key, value in env.items():
        assert "secret" not in key.lower()
    assert not any("secret" in a for a in child.cmdline())
    parent.admin.abort(job_id)
    parent.wait_final(job_id)


def test_submit_wait_exit_codes(parent, make_job, tmp):
    ws = tmp / "ws"
    ok = cli(ws, "submit", str(make_job([("wf", "Progress", {"steps": 2})])), "--wait")
    assert ok.stdout.strip().splitlines()[-1] == "FINISHED:COMPLETED"
    assert "step 2/2" in ok.stderr
    bad = cli(ws, "submit", str(make_job([("wf", "Fail", {})])), "--wait", check=False)
    assert bad.returncode == 1 and bad.stdout.strip().splitlines()[-1] == "FINISHED:EXECUTION_EXCEPTION"
    as_json = cli(ws, "submit", str(make_job([("wf", "Progress", {"steps": 1})])), "--wait", "--json")
    assert json.loads(as_json.stdout)["status"] == "FINISHED:COMPLETED"


def test_errors_name_what_is_wrong(parent, make_job, tmp):
    ws = tmp / "ws"
    job = make_job([("wf", "Progress", {})])
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = ["app_server"]
    (job / "meta.json").write_text(json.dumps(meta))
    r = cli(ws, "submit", str(job), check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert "meta.json" in r.stderr and "deploy_map" in r.stderr
    r = cli(ws, "status", "no-such-job", check=False)
    assert r.returncode == 1 and "no job with id 'no-such-job'" in r.stderr
    r = cli(tmp / "elsewhere", "jobs", check=False)
    assert r.returncode == 1 and "no parent is running" in r.stderr


def test_logs_prints_the_job_log(parent, make_job, tmp):
    ws = tmp / "ws"
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    parent.wait_final(job_id)
    out = wait_for(lambda: (lambda o: o if "ends FINISHED:COMPLETED" in o else None)(cli(ws, "logs", job_id).stdout),
                   10, "the job's last log line")
    assert f"job {job_id}" in out
    follow = cli(ws, "logs", job_id, "-f", timeout=20)
    assert follow.stdout == out


def test_admin_commands_are_audited(parent, make_job, tmp):
    ws = tmp / "ws"
    job_id = cli_json(ws, "submit", str(make_job([("wf", "Sleeper", {"seconds": 60})])))["job_id"]
    parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")
    cli(ws, "abort", job_id, "--reason", "audit me")
    cli(ws, "abort", "no-such-job", check=False)
    cli(ws, "submit", str(tmp / "no-such-folder"), check=False)
    parent.wait_final(job_id)
    entries = [json.loads(line) for line in (ws / "audit.log").read_text().splitlines()]
    ops = [(e["op"], e["result"]) for e in entries]
    assert ops == [("submit", "OK"), ("abort", "OK"), ("abort", "NOT_FOUND"), ("submit", "BAD_REQUEST")]
    assert entries[0]["job_id"] == job_id and "is not a directory" in entries[3]["reason"]
    assert entries[1]["args"] == {"job_id": job_id, "reason": "audit me"} and entries[1]["job_id"] == job_id
    assert all(e["who"] and e["time"] > 0 for e in entries)


def test_version_reports_the_running_parents_version_and_uptime(parent, tmp):
    import flrunner

    doc = cli_json(tmp / "ws", "version")
    assert doc["version"] == flrunner.__version__ and doc["pid"] == parent.pid and doc["uptime_s"] > 0
    text = cli(tmp / "ws", "version").stdout
    assert f"version: {flrunner.__version__}" in text and f"pid: {parent.pid}" in text
    assert parent.admin.version()["pid"] == parent.pid  # AdminClient has the method, written nowhere
