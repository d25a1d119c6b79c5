"""Where things live on disk, and the one way every stage writes a file: atomically.

A crash mid-write must never leave a half-written file under a final name, so every
write goes to a temporary file in the same directory, is fsynced, then renamed over
the target (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

HOME_ENV = "GENFORGE_HOME"
_UMASK = os.umask(0)
os.umask(_UMASK)
DEFAULT_HOME = "genforge-workspace"


def home() -> Path:
    """The workspace root: `$GENFORGE_HOME`, else `./genforge-workspace`."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()


def datasets_dir() -> Path:
    return home() / "datasets"


def runs_dir() -> Path:
    return home() / "runs"


def models_dir() -> Path:
    """Models made elsewhere and imported (`genforge import`): one checkpoint folder each."""
    return home() / "models"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks: how manifests and checkpoints prove their bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publishable(tmp: str) -> None:
    """mkstemp creates 0600 files; give the final file the mode a plain open() would have."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_with(path: str | os.PathLike, writer) -> Path:
    """For libraries that write to a path themselves (parquet, safetensors, PNG):
    `writer(tmp_path)` writes the temporary file, which is then fsynced and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def publish_dir(tmp_dir: Path, final_dir: Path) -> bool:
    """Move a fully written directory into place atomically.

    Returns False (and removes `tmp_dir`) when `final_dir` already exists: content-addressed
    outputs with the same name are identical, so the first one wins.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists():
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return False
    for p in tmp_dir.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if final_dir.exists():  # lost a race with an identical writer
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return False
        raise
    _fsync_dir(final_dir.parent)
    return True
