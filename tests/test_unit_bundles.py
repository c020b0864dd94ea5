"""Site app bundles and job uploads: what is packed, and what unpacking refuses."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from flrunner.util.bundles import extract_bundle, make_bundle


def tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_packing_keeps_plain_files_and_skips_links_that_leave_the_folder(tmp_path):
    app = tmp_path / "app"
    (app / "config").mkdir(parents=True)
    (app / "config" / "config.json").write_text("{}")
    (tmp_path / "outside.txt").write_text("not for the sites")
    (app / "leak.txt").symlink_to(tmp_path / "outside.txt")
    (app / "leakdir").symlink_to(tmp_path)
    out = tmp_path / "out"
    extract_bundle(make_bundle(str(app)), str(out))
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert files == ["config/config.json"]


@pytest.mark.parametrize("member, reason", [
    ((entry("../escape.txt"), b"x"), "leaves the app folder"),
    ((entry("a/../../escape.txt"), b"x"), "leaves the app folder"),
    ((entry("/tmp/escape.txt"), b"x"), "leaves the app folder"),
    ((entry("link", tarfile.SYMTYPE, "/etc/passwd"), None), "not a regular file or folder"),
    ((entry("hard", tarfile.LNKTYPE, "/etc/passwd"), None), "not a regular file or folder"),
    ((entry("dev", tarfile.CHRTYPE), None), "not a regular file or folder"),
    ((entry("fifo", tarfile.FIFOTYPE), None), "not a regular file or folder"),
])
def test_unpacking_refuses_anything_but_plain_files_inside_the_folder(tmp_path, member, reason):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=reason):
        extract_bundle(tar((entry("ok.txt"), b"fine"), member), str(out))
    assert not (tmp_path / "escape.txt").exists()
    assert not (out / "ok.txt").exists()  # everything is checked before anything is written


def test_unpacking_refuses_a_bundle_that_unpacks_too_large(tmp_path):
    bundle = tar((entry("a.bin"), b"\0" * 600), (entry("b.bin"), b"\0" * 600))
    with pytest.raises(ValueError, match="unpacks to more than 1000 bytes"):
        extract_bundle(bundle, str(tmp_path / "out"), max_bytes=1000)
    extract_bundle(bundle, str(tmp_path / "out2"), max_bytes=1200)
    assert (tmp_path / "out2" / "b.bin").stat().st_size == 600


def test_a_gzip_bomb_is_refused_without_inflating_all_of_it(tmp_path, monkeypatch):
    import gzip

    inflated = []

    class CountingGzip(gzip.GzipFile):  # records how far decompression went
        def read(self, *args):
            data = super().read(*args)
            inflated.append(self.tell())
            return data

        def readinto(self, buf):
            n = super().readinto(buf)
            inflated.append(self.tell())
            return n

    monkeypatch.setattr("flrunner.util.bundles.gzip.GzipFile", CountingGzip)
    # A pax record of 64 MiB (~64 kB packed) before a tiny file: tarfile would read it whole.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
        info = entry("tiny.txt")
        info.pax_headers = {"comment": "A" * (64 << 20)}
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    bomb = buf.getvalue()
    assert len(bomb) < 1 << 20
    with pytest.raises(ValueError, match="unpacks to more than"):
        extract_bundle(bomb, str(tmp_path / "out"), max_bytes=1 << 20, max_entries=16)
    assert max(inflated, default=0) < 2 << 20  # stopped near the 1 MiB cap, not after 200 MiB
    assert not (tmp_path / "out" / "zeros.bin").exists()


def test_too_many_entries_or_too_deep_a_path_is_refused(tmp_path):
    many = tar(*[(entry(f"f{i}"), b"") for i in range(50)])
    with pytest.raises(ValueError, match="more than 20 entries"):
        extract_bundle(many, str(tmp_path / "a"), max_entries=20)
    deep = tar((entry("d/" * 1000 + "f"), b"x"))
    with pytest.raises(ValueError, match="nested deeper than 64 folders"):
        extract_bundle(deep, str(tmp_path / "b"))


@pytest.mark.parametrize("data", [b"", b"not gzip at all", tar((entry("a.txt"), os.urandom(10_000)))[:200]])
def test_what_is_not_a_tar_gz_is_refused_as_such(tmp_path, data):
    with pytest.raises(ValueError, match="not a valid tar.gz"):
        extract_bundle(data, str(tmp_path / "out"))
