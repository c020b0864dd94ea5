"""`RotatingFile`: a log that rotates at its size cap and never fails its writer."""

from __future__ import annotations

import os

import pytest

from flrunner.util.output_capture import MIN_MAX_BYTES, RotatingFile

KB = 1024


def sizes(path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}


def test_it_rotates_at_the_cap_and_keeps_the_given_number_of_backups(tmp_path):
    path = tmp_path / "log.txt"
    log = RotatingFile(str(path), 64 * KB, backups=2)
    for i in range(10):
        log.write(bytes([65 + i]) * (40 * KB))
    log.close()
    assert sorted(sizes(path)) == ["log.txt", "log.txt.1", "log.txt.2"]
    assert all(size <= 64 * KB for size in sizes(path).values())
    # The newest output is in log.txt, the one before in log.txt.1, and so on.
    assert path.read_bytes() == b"J" * (40 * KB)
    assert (tmp_path / "log.txt.1").read_bytes() == b"I" * (40 * KB)
    assert (tmp_path / "log.txt.2").read_bytes() == b"H" * (40 * KB)


def test_no_backups_means_the_log_starts_again(tmp_path):
    path = tmp_path / "log.txt"
    log = RotatingFile(str(path), 64 * KB, backups=0)
    log.write(b"a" * (60 * KB))
    log.write(b"b" * (10 * KB))
    log.close()
    assert sizes(path) == {"log.txt": 10 * KB}


def test_it_appends_to_what_is_there_and_counts_it(tmp_path):
    path = tmp_path / "log.txt"
    path.write_bytes(b"x" * (60 * KB))  # what the launcher wrote before the capture began
    log = RotatingFile(str(path), 64 * KB, backups=1)
    log.write(b"y" * (10 * KB))
    log.close()
    assert (tmp_path / "log.txt.1").read_bytes() == b"x" * (60 * KB) and path.read_bytes() == b"y" * (10 * KB)


def test_the_cap_has_a_floor(tmp_path):
    assert RotatingFile(str(tmp_path / "log.txt"), 1, 1).max_bytes == MIN_MAX_BYTES


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_drops_output_without_raising_and_counts_it():
    log = RotatingFile("/dev/full", 1 << 20, backups=0)
    log.write(b"lost" * 100)
    log.write(b"and this")
    assert log.dropped == 408 and "space" in log._error
    log.close()
