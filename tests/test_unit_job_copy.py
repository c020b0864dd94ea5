"""`parent.jobs.folder_copy` on folders in a temporary directory: what the scan refuses, what the copy makes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from flrunner.errors import BadRequest, JobFolderError
from parent.jobs.folder_copy import CopyLimits, copy_scanned, scan_job_folder


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: ``dir``, ``link`` or the file's text."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            out[rel] = "link" if path.is_symlink() else "dir" if path.is_dir() else path.read_text()
    return out


@pytest.fixture
def job(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    (root / "app_server" / "config").mkdir(parents=True)
    (root / "app_server" / "custom").mkdir()
    (root / "meta.json").write_text("{}")
    (root / "app_server" / "config" / "config_fed_server.json").write_text("{}")
    return root


def refusal(root: Path, limits: CopyLimits = CopyLimits()) -> str:
    with pytest.raises(BadRequest) as ei:
        scan_job_folder(root, limits)
    message = str(ei.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_a_plain_folder_is_copied_whole(job, tmp_path):
    (job / "app_server" / "custom" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(job / "app_server" / "custom" / "run.sh", 0o755)
    (job / "empty").mkdir()
    scan = scan_job_folder(job)
    assert (scan.files, scan.bytes) == (3, len("{}{}#!/bin/sh\n"))
    copy_scanned(scan, str(tmp_path / "copy"))
    assert tree(tmp_path / "copy") == tree(job)
    copied = tmp_path / "copy" / "app_server" / "custom" / "run.sh"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    assert copied.stat().st_mtime_ns == (job / "app_server" / "custom" / "run.sh").stat().st_mtime_ns


@pytest.mark.parametrize("target", [".", "..", "../..", "../config"])
def test_a_link_to_a_folder_inside_or_above_is_refused_naming_it(job, target):
    (job / "app_server" / "custom" / "lib").symlink_to(target)
    message = refusal(job)
    assert message.startswith(f"app_server/custom/lib: symlink to '{target}' leads"), message


def test_two_loops_are_refused_at_the_first(job):
    (job / "app_server" / "custom" / "a").symlink_to(".")
    (job / "app_server" / "custom" / "b").symlink_to(".")
    started = time.monotonic()
    message = refusal(job)
    assert time.monotonic() - started < 1
    assert message.startswith("app_server/custom/a: symlink to '.'"), message


def test_a_link_to_the_filesystem_root_or_a_folder_holding_the_job_is_a_loop(job, tmp_path):
    (job / "app_server" / "custom" / "root").symlink_to("/")
    assert "loop" in refusal(job)
    (job / "app_server" / "custom" / "root").unlink()
    (job / "app_server" / "custom" / "home").symlink_to(tmp_path)
    assert refusal(job).startswith(f"app_server/custom/home: symlink to '{tmp_path}' leads back")


def test_a_link_to_an_outside_folder_is_followed_and_copied_as_plain_files(job, tmp_path):
    shared = tmp_path / "shared"
    (shared / "pkg").mkdir(parents=True)
    (shared / "pkg" / "util.py").write_text("X = 1\n")
    (shared / "pkg" / "again").symlink_to(shared / "pkg" / "util.py")  # a file link in a followed folder
    (job / "app_server" / "custom" / "shared").symlink_to(shared)
    (job / "app_server" / "custom" / "shared2").symlink_to(shared)  # twice is not a loop
    scan = scan_job_folder(job)
    copy_scanned(scan, str(tmp_path / "copy"))
    copied = tree(tmp_path / "copy")
    for name in ("shared", "shared2"):
        assert copied[f"app_server/custom/{name}"] == "dir"
        assert copied[f"app_server/custom/{name}/pkg/util.py"] == "X = 1\n"
        assert copied[f"app_server/custom/{name}/pkg/again"] == "X = 1\n"
    assert "link" not in copied.values()


def test_a_loop_through_an_outside_folder_is_refused_naming_the_link(job, tmp_path):
    shared = tmp_path / "shared"
    (shared / "pkg").mkdir(parents=True)
    (shared / "pkg" / "up").symlink_to("..")
    (job / "app_server" / "custom" / "shared").symlink_to(shared)
    assert refusal(job).startswith("app_server/custom/shared/pkg/up: symlink to '..' leads back to a folder already")


def test_an_outside_folder_leading_back_into_the_job_is_refused(job, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "back").symlink_to(job / "app_server")
    (job / "app_server" / "custom" / "shared").symlink_to(shared)
    assert refusal(job).startswith("app_server/custom/shared/back: symlink to")


def test_links_to_files_inside_and_outside_are_copied_as_files(job, tmp_path):
    (tmp_path / "outside.txt").write_text("outside")
    (job / "app_server" / "custom" / "out.txt").symlink_to(tmp_path / "outside.txt")
    (job / "app_server" / "custom" / "meta-again.json").symlink_to("../../meta.json")
    scan = scan_job_folder(job)
    assert scan.bytes == len("{}{}outside{}")
    copy_scanned(scan, str(tmp_path / "copy"))
    copied = tmp_path / "copy" / "app_server" / "custom"
    assert not (copied / "out.txt").is_symlink() and (copied / "out.txt").read_text() == "outside"
    assert not (copied / "meta-again.json").is_symlink() and (copied / "meta-again.json").read_text() == "{}"


def test_dangling_links_and_link_cycles_are_refused(job):
    (job / "app_server" / "custom" / "gone").symlink_to("nowhere")
    assert refusal(job) == "app_server/custom/gone: symlink to 'nowhere' is dangling (nothing there)"
    (job / "app_server" / "custom" / "gone").unlink()
    (job / "app_server" / "custom" / "x").symlink_to("y")
    (job / "app_server" / "custom" / "y").symlink_to("x")
    assert refusal(job).startswith("app_server/custom/x: symlink to 'y' loops")


def test_a_fifo_is_refused_without_opening_it(job):
    os.mkfifo(job / "app_server" / "custom" / "pipe")
    assert refusal(job).startswith("app_server/custom/pipe: is a FIFO")


def test_a_link_to_a_fifo_is_refused(job, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (job / "app_server" / "custom" / "pipe").symlink_to(tmp_path / "pipe")
    assert "leads to a FIFO" in refusal(job)


def test_a_device_is_refused(job):
    try:
        os.mknod(job / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    assert refusal(job).startswith("zero: is a character device")


def test_a_socket_is_refused(job):
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        os.chdir(job)  # AF_UNIX paths are short: bind relative to the folder
        try:
            s.bind("sock")
        finally:
            os.chdir("/")
        assert refusal(job).startswith("sock: is a socket")


def test_the_file_cap_stops_the_scan_and_names_the_flag(job):
    many = job / "many"
    many.mkdir()
    for i in range(30):
        (many / f"f{i:02}").write_text("")
    message = refusal(job, CopyLimits(max_files=20))
    assert "more than 20 files and folders" in message and "stopped counting at 21" in message
    assert "--max-job-files" in message
    assert scan_job_folder(job, CopyLimits(max_files=36)).files == 32


def test_the_byte_cap_counts_linked_files_and_names_the_flag(job, tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 3000)
    (job / "app_server" / "custom" / "big").symlink_to(tmp_path / "big")
    message = refusal(job, CopyLimits(max_bytes=2048))
    assert "more than 2.0 KiB (2048 bytes)" in message and "--max-job-bytes" in message
    assert "2.9 KiB in 3 files so far" in message
    assert scan_job_folder(job, CopyLimits(max_bytes=3004)).bytes == 3004


def test_a_name_with_a_newline_is_shown_on_one_line(job):
    os.mkfifo(job / "bad\nname")
    assert refusal(job).startswith("bad\\nname: is a FIFO")


def test_the_copy_reads_no_more_than_was_scanned(job, tmp_path):
    data = job / "app_server" / "custom" / "data.bin"
    data.write_bytes(b"a" * 100)
    scan = scan_job_folder(job)
    data.write_bytes(b"a" * 200)
    with pytest.raises(JobFolderError, match="data.bin: grew during the copy"):
        copy_scanned(scan, str(tmp_path / "copy"))


def test_a_fifo_swapped_in_after_the_scan_is_refused_without_blocking(job, tmp_path):
    data = job / "app_server" / "custom" / "data.bin"
    data.write_bytes(b"a")
    scan = scan_job_folder(job)
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(JobFolderError, match="data.bin: is no longer a regular file"):
        copy_scanned(scan, str(tmp_path / "copy"))


def test_the_server_app_is_copied_from_the_first_copy(job, tmp_path):
    (tmp_path / "lib.py").write_text("shared")
    (job / "app_server" / "custom" / "lib.py").symlink_to(tmp_path / "lib.py")
    scan = scan_job_folder(job)
    copy_scanned(scan, str(tmp_path / "copy"))
    (tmp_path / "lib.py").write_text("changed since the scan")
    sub = scan.subtree("app_server", str(tmp_path / "copy" / "app_server"))
    assert (sub.files, sub.bytes) == (2, len("{}shared"))
    copy_scanned(sub, str(tmp_path / "app"))
    assert tree(tmp_path / "app") == {"config": "dir", "config/config_fed_server.json": "{}", "custom": "dir",
                                      "custom/lib.py": "shared"}
