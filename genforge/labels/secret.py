"""The workspace's watermark key: 32 random bytes made once, kept in the workspace, never in an image
(the text watermark's key is derived from it: genforge.textmark).

Whoever holds it can read (and forge) the watermark, so the file is owner-only; anyone without it sees
noise. A second process racing to create it gets the first one's key (the file is published with a link,
which fails if it already exists), so every worker of a service marks with the same key.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from genforge.errors import ConfigError
from genforge.workspace import home

KEY_BYTES = 32


def key_path() -> Path:
    return home() / "labels" / "watermark.key"


def workspace_key(create: bool = True) -> bytes:
    """The key of the current workspace, made on first use (or ConfigError when `create` is False)."""
    path = key_path()
    if not path.exists():
        if not create:
            raise ConfigError(f"this workspace has no watermark key ({path}): nothing it made can be verified here; "
                              "set GENFORGE_HOME to the workspace that generated the image or text")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".watermark.key.", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} is not a watermark key ({KEY_BYTES} bytes as hex); restore it from a backup: "
                          "a new key cannot read images marked with the old one")
    return key
