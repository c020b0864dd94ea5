"""A real parent reading hostile or oversized job folders into its workspace (`parent.jobs.folder_copy`).

Every refusal is one short line naming the path at fault (relative to the job folder) or the cap
and its flag, comes before anything is written (or leaves nothing behind), and the parent keeps
serving.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from flrunner.admin.client import AdminClient
from flrunner.errors import BadRequest

from .support import ParentHandle, provision_project


def refused(parent: ParentHandle, job_dir: Path, within: float = 5.0) -> str:
    """Submit ``job_dir``, expect a BAD_REQUEST within ``within`` seconds, and return its one-line reason."""
    started = time.monotonic()
    with pytest.raises(BadRequest) as ei:
        parent.admin.submit(job_dir)
    elapsed = time.monotonic() - started
    message = str(ei.value)
    assert elapsed < within, f"refused after {elapsed:.1f}s: {message[:300]}"
    assert "\n" not in message and len(message) < 300, message
    assert str(parent.workspace) not in message, message  # nothing of the parent's disk is named
    return message


def run_dirs(parent: ParentHandle) -> list[str]:
    jobs = parent.workspace / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []


def still_serves(parent: ParentHandle, make_job) -> str:
    """The parent runs a small job to completion after the refusals; returns its id."""
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})], name="after"))
    assert parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    return job_id


@pytest.fixture
def small_disk(mount_tmpfs) -> Path:
    """An 8 MiB tmpfs; request it before ``start_parent`` so the parent is stopped before it is unmounted."""
    return mount_tmpfs("disk", "8m")


def test_two_symlink_loops_are_refused_at_once_naming_the_link(parent, make_job):
    job = make_job([("wf", "Progress", {"steps": 1})])
    (job / "app_server" / "custom" / "a").symlink_to(".")
    (job / "app_server" / "custom" / "b").symlink_to(".")
    message = refused(parent, job, within=3)
    assert message.startswith("app_server/custom/a: symlink to '.' leads to a folder inside the job folder"), message
    assert run_dirs(parent) == []
    still_serves(parent, make_job)


def test_a_link_to_a_folder_inside_the_job_is_refused(parent, make_job):
    job = make_job([("wf", "Progress", {"steps": 1})])
    (job / "app_server" / "custom" / "cfg").symlink_to("../config")
    message = refused(parent, job)
    assert message.startswith("app_server/custom/cfg: symlink to '../config' leads to a folder inside"), message
    assert run_dirs(parent) == []


def test_a_link_to_an_outside_folder_is_copied_and_its_code_runs(parent, make_job, tmp):
    shared = tmp / "shared-code"
    shared.mkdir()
    (shared / "job_components.py").write_text((Path(__file__).parent / "job_components.py").read_text())
    job = make_job([("wf", "shared.job_components.Progress", {"steps": 2})])
    (job / "app_server" / "custom" / "shared").symlink_to(shared)
    job_id = parent.admin.submit(job)
    assert parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    for copy in ("job/app_server/custom/shared", "app_server/custom/shared"):
        folder = parent.workspace / "jobs" / job_id / copy
        assert folder.is_dir() and not folder.is_symlink()
        assert (folder / "job_components.py").read_text() == (shared / "job_components.py").read_text()


def test_a_fifo_is_refused_without_waiting_for_a_writer(parent, make_job):
    job = make_job([("wf", "Progress", {"steps": 1})])
    os.mkfifo(job / "app_server" / "custom" / "pipe")
    assert refused(parent, job).startswith("app_server/custom/pipe: is a FIFO"), "the path is named first"
    assert run_dirs(parent) == []


def test_a_folder_over_the_caps_is_refused_naming_the_cap_and_accepted_once_raised(start_parent, make_job, tmp):
    many = make_job([("wf", "Progress", {"steps": 1})], name="many-files")
    (many / "data").mkdir()
    for i in range(12_000):  # over the default cap of 10,000
        (many / "data" / f"{i:05}").touch()
    big = make_job([("wf", "Progress", {"steps": 1})], name="big-file")
    (big / "app_server" / "custom" / "weights.bin").write_bytes(b"\0" * 2_000_000)

    # A cap well above the test job's own files (tests/job_components*.py), well below the big file.
    capped = start_parent("--max-job-bytes", "1M", name="capped")
    message = refused(capped, many, within=3)
    assert "more than 10000 files and folders" in message and "--max-job-files" in message, message
    message = refused(capped, big)
    assert "more than 1.0 MiB (1048576 bytes)" in message and "--max-job-bytes" in message, message
    assert run_dirs(capped) == []
    capped.stop()

    roomy = start_parent("--max-job-files", "20000", workspace=tmp / "ws2", name="roomy")
    many_id, big_id = roomy.admin.submit(many), roomy.admin.submit(big)
    for job_id in (many_id, big_id):
        assert roomy.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    assert len(os.listdir(roomy.workspace / "jobs" / many_id / "job" / "data")) == 12_000
    assert (roomy.workspace / "jobs" / big_id / "app_server" / "custom" / "weights.bin").stat().st_size == 2_000_000


def test_a_full_disk_mid_copy_leaves_no_run_dir(small_disk, start_parent, make_job):
    parent = start_parent(workspace=small_disk / "ws")
    job = make_job([("wf", "Progress", {"steps": 1})])
    (job / "app_server" / "custom" / "weights.bin").write_bytes(os.urandom(16 << 20))  # twice the disk
    message = refused(parent, job)
    assert message.endswith("'app_server/custom/weights.bin': No space left on device"), message
    assert run_dirs(parent) == []
    still_serves(parent, make_job)


def _fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def test_a_submission_refused_for_lack_of_file_descriptors_leaves_no_run_dir(parent, make_job):
    job = make_job([("wf", "Progress", {"steps": 1})])
    parent.admin.ping()  # the admin connection is accepted (it takes a descriptor) before the limit
    proc = psutil.Process(parent.pid)
    soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
    used = _fds(parent.pid)
    first_free = min(set(range(len(used) + 1)) - used)
    # One descriptor left: reading the folder (one file at a time) works, copying a file (two at
    # once) fails with EMFILE, and so does removing the half-made run dir at once.
    proc.rlimit(psutil.RLIMIT_NOFILE, (first_free + 1, hard))
    try:
        with pytest.raises(BadRequest, match="Too many open files"):
            parent.admin.submit(job)
    finally:
        proc.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    job_id = still_serves(parent, make_job)
    assert run_dirs(parent) == [job_id]  # the next submission removed what was left


def test_an_upload_over_the_file_cap_is_refused_naming_the_flag(start_parent, make_job, tmp):
    project = provision_project(tmp, [], ["alice"])
    parent = start_parent("--kit", str(project / "parent"), "--admin", "tcp://127.0.0.1:*", "--max-job-files", "20")
    job = make_job([("wf", "Progress", {"steps": 1})])
    for i in range(30):
        (job / "app_server" / "custom" / f"f{i}.txt").touch()
    with AdminClient.with_kit(project / "alice", parent.info["remote_admin"]) as alice:
        with pytest.raises(BadRequest) as ei:
            alice.submit(job)
        assert "more than 20 entries" in str(ei.value) and "--max-job-files" in str(ei.value), str(ei.value)
        for i in range(30):
            (job / "app_server" / "custom" / f"f{i}.txt").unlink()
        assert parent.wait_final(alice.submit(job), 30)["status"] == "FINISHED:COMPLETED"
    assert list((parent.workspace / "uploads").iterdir()) == []


def test_a_restarted_parent_removes_run_dirs_its_store_does_not_know(start_parent, make_job, procs):
    parent = start_parent()
    kept = still_serves(parent, make_job)
    assert parent.stop() == 0
    # What a crash in the middle of a submission leaves: a half-copied run dir, a staging folder.
    left = parent.workspace / "jobs" / "0b7e4a51-5f0c-4d8e-9d1c-0123456789ab"
    (left / "job" / "app_server").mkdir(parents=True)
    (left / "job" / "meta.json").write_text("{}")
    (parent.workspace / "uploads" / "3f9c").mkdir(parents=True)
    restarted = start_parent(name="restarted")
    assert run_dirs(restarted) == [kept]
    assert (restarted.workspace / "jobs" / kept / "log.txt").is_file()  # a stored job's run dir is untouched
    assert list((restarted.workspace / "uploads").glob("*")) == []
    assert f"removing run dir {left}" in procs.output("restarted")
    assert restarted.admin.status(kept)["status"] == "FINISHED:COMPLETED"
