"""Writers for generated samples, one per data kind: PNGs and a grid, jsonl texts, csv/parquet tables.

Every file is written atomically, with a `samples.json` (or the jsonl records themselves) saying
what made it, so an output folder is never half-written and always traceable to its run.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genforge.errors import ConfigError
from genforge.models import ImageSamples, Samples, TableSamples, TextSamples
from genforge.tabular.provenance import with_columns
from genforge.workspace import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_write_with

SAMPLES_FORMAT = "genforge-samples/1"


def image_grid(images: np.ndarray, labels: tuple[int, ...] | list[int] | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) uint8 -> one (rows*H', cols*W', C) image: a row per class when several
    classes are present, else a near-square grid."""
    n, c, h, w = images.shape
    if labels is not None and len(set(labels)) > 1:
        cells = [[i for i in range(n) if labels[i] == k] for k in sorted(set(labels))]
    else:
        cols = math.ceil(math.sqrt(n))
        cells = [list(range(r, min(r + cols, n))) for r in range(0, n, cols)]
    cols = max(len(row) for row in cells)
    grid = np.full((len(cells) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for r, row in enumerate(cells):
        for j, i in enumerate(row):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    return grid


def to_pil(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1) or (H, W, C) uint8 -> a PIL image (one channel is grayscale)."""
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def write_images(samples: ImageSamples, out: Path, meta: dict[str, Any]) -> Path:
    """grid.png, sample-0000.png ... and samples.json (with each sample's generation id); returns the grid's
    path. Every PNG carries the AI-content labels (genforge.labels): it is the raw sample plus the watermark."""
    from genforge.labels import label_png  # here: its watermark imports scipy.fft, 0.15 s a table or text write never needs

    out.mkdir(parents=True, exist_ok=True)
    model, version = str(meta.get("run", "")), str(meta.get("checkpoint", ""))
    ids = []
    for i, img in enumerate(samples.images):
        labelled = label_png(img.transpose(1, 2, 0), model, version)
        atomic_write_bytes(out / f"sample-{i:04d}.png", labelled.png)
        ids.append(labelled.generation_id)
    grid = image_grid(samples.images, samples.labels)
    atomic_write_bytes(out / "grid.png", label_png(grid, model, version).png)
    labels = None if samples.labels is None else list(samples.labels)
    atomic_write_json(out / "samples.json", {"format": SAMPLES_FORMAT, "count": len(samples), "labels": labels,
                                             "generation_ids": ids, **meta})
    return out / "grid.png"


def write_texts(samples: TextSamples, out: Path, meta: dict[str, Any]) -> Path:
    """samples.jsonl, one record per text with its prompt, finish reason and token count."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(samples.texts):
        rec = {"index": i, "text": text}
        for name, key in (("prompts", "prompt"), ("finish_reasons", "finish_reason"), ("completion_tokens", "completion_tokens")):
            values = getattr(samples, name)
            if values is not None:
                rec[key] = values[i]
        lines.append(json.dumps({**rec, **meta}, ensure_ascii=False))
    path = out / "samples.jsonl"
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def write_table(samples: TableSamples, out: Path, meta: dict[str, Any]) -> Path:
    """A csv or parquet file (by `out`'s suffix; a folder gets samples.csv) and, unless meta's `provenance`
    (sample.provenance) is "columns", a samples.json beside it; "columns" and "both" add provenance columns
    to every row (genforge.tabular.provenance). One generation id names the table in either."""
    path = out if out.suffix in (".csv", ".parquet") else out / "samples.csv"
    if path.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"tables are written as .csv or .parquet, got {path}")
    choice, gid = meta.get("provenance", "sidecar"), f"tbl-{uuid.uuid4().hex}"
    frame = samples.frame
    if choice != "sidecar":
        frame = with_columns(frame, str(meta.get("run", "")), str(meta.get("checkpoint", "")), gid)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        atomic_write_with(path, lambda p: frame.to_csv(p, index=False))
    else:
        atomic_write_with(path, lambda p: frame.to_parquet(p, index=False))
    if choice != "columns":
        atomic_write_json(path.with_name(path.stem + ".samples.json"),
                          {"format": SAMPLES_FORMAT, "count": len(samples), "generation_id": gid, **meta})
    return path


def write_samples(samples: Samples, out: Path, meta: dict[str, Any]) -> Path:
    """The writer of the samples' kind; returns the file a person opens first."""
    writer = {"image": write_images, "text": write_texts, "table": write_table}[samples.kind]
    return writer(samples, out, meta)  # type: ignore[operator]
