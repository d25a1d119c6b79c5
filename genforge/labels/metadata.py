"""The readable label: PNG iTXt chunks saying the image is AI-generated, by which model, when.

Anyone can read (or strip) these: they are the label for people and tools, the watermark is the one that
outlasts re-encoding, and C2PA is the one that is signed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

PREFIX = "genforge:"


def png_bytes(image: np.ndarray, fields: dict[str, str]) -> bytes:
    """(H, W) or (H, W, C) uint8 -> PNG bytes with one iTXt chunk per field, keyed `genforge:<name>`."""
    info = PngInfo()
    for name, value in fields.items():
        info.add_itxt(PREFIX + name, value)
    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_fields(img: Image.Image) -> dict[str, str]:
    """The genforge fields of an opened image ({} for a JPEG, or a PNG whose chunks were stripped)."""
    text = getattr(img, "text", None) or {}
    return {k[len(PREFIX):]: str(v) for k, v in text.items() if k.startswith(PREFIX)}
