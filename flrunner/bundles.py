"""Site app bundles: the app folder a site runs, packed as one tar.gz to travel as a raw frame.

Sites do not share the parent's disk. Only regular files and folders are packed (symlinks and
special files are skipped), with paths relative to the app folder.
"""

from __future__ import annotations

import io
import os
import tarfile

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


def make_bundle(app_dir: str) -> bytes:
    """A tar.gz of ``app_dir``'s regular files.

    Raises:
        ValueError: the folder is missing or the bundle would be larger than `MAX_BUNDLE_BYTES`.
    """
    if not os.path.isdir(app_dir):
        raise ValueError(f"app folder {app_dir} is missing")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for folder, dirs, files in os.walk(app_dir, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)) and d != "__pycache__")
            for name in sorted(files):
                path = os.path.join(folder, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                tar.add(path, arcname=os.path.relpath(path, app_dir), recursive=False)
                if buf.tell() > MAX_BUNDLE_BYTES:
                    raise ValueError(f"app folder {app_dir} packs to more than {MAX_BUNDLE_BYTES} bytes")
    return buf.getvalue()


def extract_bundle(data: bytes, dest: str, max_bytes: int = MAX_BUNDLE_BYTES) -> None:
    """Unpack a bundle into ``dest``, refusing anything that is not a plain file or folder inside it.

    Raises:
        ValueError: the bundle holds a link, a device, an absolute path, ``..``, or is too large.
    """
    root = os.path.realpath(dest)
    os.makedirs(root, exist_ok=True)
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            target = os.path.realpath(os.path.join(root, m.name))
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"bundle entry '{m.name}' is not a regular file or folder")
            if os.path.isabs(m.name) or (target != root and not target.startswith(root + os.sep)):
                raise ValueError(f"bundle entry '{m.name}' leaves the app folder")
            total += m.size
            if total > max_bytes:
                raise ValueError(f"bundle unpacks to more than {max_bytes} bytes")
        for m in members:
            target = os.path.join(root, m.name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
