"""Versioned, content-addressed datasets on disk: one writer, one reader, for every later stage.

Layout: `datasets/<name>/<version>/manifest.json` plus data files:
  images: `images/<split>-<NNNNN>.safetensors`, tensors `images` uint8 (N, C, H, W) and `labels` int64 (N,)
          (-1 where unlabeled); shards keep memory bounded on both sides.
  text / table: `<split>.parquet`.
The version is the first 12 hex digits of a sha256 over every data file, so ingesting the same
data with the same settings yields the same version; the directory is written under a temporary
name and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load_file, save_file

from genforge.errors import DataError
from genforge.workspace import atomic_write_json, datasets_dir, publish_dir, sha256_file

FORMAT = "genforge-dataset/1"
SPLITS = ("train", "val", "test")
Kind = Literal["image", "text", "table"]


class DatasetManifest(BaseModel):
    """What a dataset version is; cited by training runs, reports, the registry and feedback exports."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    format: str = FORMAT
    name: str
    version: str
    kind: Kind
    content_hash: str
    created_at: str
    source: dict[str, Any] = Field(default_factory=dict)
    counts: dict[str, Any] = Field(default_factory=dict)
    data_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    classes: list[str] = Field(default_factory=list)
    split: dict[str, Any] = Field(default_factory=dict)
    cleaning: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    files: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def check_name(name: str) -> str:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise DataError(f"dataset name must be 1-64 characters of letters, digits, '-', '_', '.', got {name!r}")
    return name


class DatasetWriter:
    """Collects a dataset's files in a temporary directory, then publishes it under its content hash."""

    def __init__(self, name: str, kind: Kind):
        self.name = check_name(name)
        self.kind = kind
        self.tmp = datasets_dir() / name / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir(parents=True)
        self._shards: dict[str, int] = {s: 0 for s in SPLITS}

    def write_image_shard(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError("images and labels differ in length")
        path = self.tmp / "images" / f"{split}-{self._shards[split]:05d}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file({"images": np.ascontiguousarray(images), "labels": labels.astype(np.int64)}, str(path))
        self._shards[split] += 1

    def write_frame(self, split: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self.tmp / f"{split}.parquet", index=False, compression="zstd")

    def commit(self, **fields: Any) -> tuple[DatasetManifest, bool]:
        """Hash the files, write the manifest, publish. Returns (manifest, created_new)."""
        files = []
        digest = hashlib.sha256()
        for p in sorted(q for q in self.tmp.rglob("*") if q.is_file()):
            rel = p.relative_to(self.tmp).as_posix()
            sha = sha256_file(p)
            files.append({"path": rel, "sha256": sha, "bytes": p.stat().st_size})
            digest.update(f"{rel}\0{sha}\n".encode())
        content_hash = digest.hexdigest()
        version = content_hash[:12]
        final = datasets_dir() / self.name / version
        if (final / "manifest.json").exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            return open_dataset(f"{self.name}@{version}").manifest, False
        manifest = DatasetManifest(
            name=self.name, version=version, kind=self.kind, content_hash=content_hash,
            created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"), files=files, **fields,
        )
        atomic_write_json(self.tmp / "manifest.json", manifest.to_json())
        created = publish_dir(self.tmp, final)
        return (manifest if created else open_dataset(f"{self.name}@{version}").manifest), created

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _versions(name: str) -> list[DatasetManifest]:
    root = datasets_dir() / name
    out = []
    for d in root.iterdir() if root.is_dir() else []:
        m = d / "manifest.json"
        if not d.name.startswith(".") and m.is_file():
            out.append(DatasetManifest.model_validate(json.loads(m.read_text(encoding="utf-8"))))
    return sorted(out, key=lambda m: (m.created_at, m.version))


def list_datasets() -> list[DatasetManifest]:
    root = datasets_dir()
    names = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return [m for n in names for m in _versions(n)]


class Dataset:
    """Read access to one dataset version; arrays come straight from the shards."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest = DatasetManifest.model_validate(json.loads((path / "manifest.json").read_text(encoding="utf-8")))

    name = property(lambda self: self.manifest.name)
    version = property(lambda self: self.manifest.version)
    kind = property(lambda self: self.manifest.kind)
    classes = property(lambda self: self.manifest.classes)
    ref = property(lambda self: self.manifest.ref)

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise DataError(f"dataset {self.ref} holds {self.kind} data, not {kind} data")

    def image_shards(self, split: str) -> list[Path]:
        self._require("image")
        return sorted((self.path / "images").glob(f"{split}-*.safetensors"))

    def iter_images(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images uint8 (N, C, H, W), labels int64 (N,)) one shard at a time: bounded memory."""
        for p in self.image_shards(split):
            t = load_file(str(p))
            yield t["images"], t["labels"]

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A whole split in memory; fine for the datasets training runs on here."""
        parts = list(self.iter_images(split))
        if not parts:
            c, h, w = (self.manifest.data_schema.get(k, 0) for k in ("channels", "height", "width"))
            return np.zeros((0, c, h, w), np.uint8), np.zeros((0,), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def frame(self, split: str) -> pd.DataFrame:
        if self.kind == "image":
            raise DataError(f"dataset {self.ref} holds images; use images()")
        p = self.path / f"{split}.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame()

    def verify(self) -> list[str]:
        """Files whose bytes no longer match the manifest (empty when intact)."""
        bad = []
        for f in self.manifest.files:
            p = self.path / f["path"]
            if not p.is_file() or sha256_file(p) != f["sha256"]:
                bad.append(f["path"])
        return bad


def open_dataset(ref: str) -> Dataset:
    """`name`, `name@latest` or `name@<version>` (a unique prefix of the version is enough)."""
    name, _, version = ref.partition("@")
    check_name(name)
    versions = _versions(name)
    if not versions:
        known = ", ".join(sorted({m.name for m in list_datasets()})) or "none"
        raise DataError(f"no dataset named {name!r} (known: {known}); create it with `genforge data ingest`")
    if not version or version == "latest":
        chosen = versions[-1]
    else:
        hits = [m for m in versions if m.version.startswith(version)]
        if len(hits) != 1:
            avail = ", ".join(m.version for m in versions)
            raise DataError(f"dataset {name!r} has {'no' if not hits else 'more than one'} version matching {version!r} (versions: {avail})")
        chosen = hits[0]
    return Dataset(datasets_dir() / name / chosen.version)
