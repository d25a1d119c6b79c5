"""AI-content labels for generated images: an invisible watermark (model version and generation id), PNG
metadata, and a signed C2PA manifest when the workspace has a signing certificate (none by default).

The watermark changes pixels: a labelled PNG differs from the raw sample by the mark only (a few levels
in the low frequencies). A raw sample still depends only on its seed, but the generation id differs
per image, so tests that compare images across batches compare raw samples, never labelled PNGs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genforge.errors import DataError
from genforge.labels import metadata, watermark
from genforge.labels.c2pa_manifest import load_signing, read_manifest, sign_png
from genforge.labels.secret import key_path, workspace_key


@dataclass(frozen=True)
class Labeled:
    png: bytes
    generation_id: str  # in the metadata and the manifest; the watermark carries its 32-bit tag


def generation_tag(generation_id: str) -> int:
    """The 32 bits of a generation id the watermark carries (a 28x28 image holds no more): its sha256's first 4 bytes."""
    return int.from_bytes(hashlib.sha256(generation_id.encode()).digest()[:4], "big")


def _markable(image: np.ndarray) -> bool:
    return min(image.shape[:2]) >= watermark.MIN_SIDE and (image.ndim == 2 or image.shape[-1] in (1, 3))


def label_png(image: np.ndarray, model: str, version: str, generation_id: str | None = None) -> Labeled:
    """(H, W, C) uint8 -> a labelled PNG (default id: `img-<uuid4>`). Images too small or of other channel
    counts get the metadata (and manifest) without the watermark, and the metadata says so."""
    gid = generation_id or f"img-{uuid.uuid4().hex}"
    marked = image
    if _markable(image):
        bits = watermark.frame(watermark.model_hash(model, version), generation_tag(gid))
        marked = watermark.embed(image, bits, workspace_key())
    fields = {"ai_generated": "true", "model": model, "version": version, "generation_id": gid,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "watermark": watermark.FORMAT if _markable(image) else "none (image too small or not gray/RGB)"}
    png = metadata.png_bytes(marked, fields)
    signing = load_signing()
    if signing is not None:
        png = sign_png(png, signing, fields)
    return Labeled(png, gid)


def verify(path: Path, trust_anchors: Path | None = None) -> dict[str, Any]:
    """What labels a file carries: the watermark (with this workspace's key), the PNG metadata, the C2PA
    manifest (trusted when its CA is among `trust_anchors`, default: the workspace's dev CA)."""
    data = path.read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except OSError as e:
        raise DataError(f"{path} is not an image Pillow can read: {e}") from None
    fields = metadata.read_fields(img)
    array = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    mark: dict[str, Any]
    if not _markable(array):
        mark = {"readable": False, "reason": f"{img.width}x{img.height} is below {watermark.MIN_SIDE} pixels a side"}
    elif not key_path().exists():
        mark = {"readable": False, "reason": f"this workspace has no watermark key ({key_path()}): verify in the "
                                             "workspace that made the image (GENFORGE_HOME)"}
    else:
        r = watermark.read(array, workspace_key(create=False))
        model_hash, tag, crc_ok = watermark.unframe(r.bits)
        mark = {"readable": True, "detected": r.detected, "p_value": r.p_value, "z": round(r.z, 2),
                "equaliser": r.equaliser, "payload_valid": bool(r.detected and crc_ok),
                "model_hash": f"{model_hash:08x}" if r.detected and crc_ok else None,
                "generation_tag": f"{tag:08x}" if r.detected and crc_ok else None}
        if mark["payload_valid"] and "model" in fields and "version" in fields:
            mark["matches_metadata"] = (model_hash == watermark.model_hash(fields["model"], fields["version"])
                                        and tag == generation_tag(fields.get("generation_id", "")))
    signing = load_signing()
    anchors = trust_anchors or (signing.trust_anchors if signing else None)
    manifest = read_manifest(data, Image.MIME.get(img.format or "PNG", "image/png"), anchors)
    labelled = bool(mark.get("detected") or fields.get("ai_generated") == "true" or manifest)
    return {"file": str(path), "ai_generated": labelled, "watermark": mark, "metadata": fields or None, "c2pa": manifest}
