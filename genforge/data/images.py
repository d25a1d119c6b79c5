"""Image folders and built-in image sets -> cleaned, de-duplicated, split uint8 shards.

Every image takes one path: decode (first frame only) -> EXIF orientation -> 8-bit L or RGB
(alpha composited on white, 16-bit scaled by 1/257) -> resize the short side and centre-crop to
`size` -> hashes. Inputs are handled in sorted order, so the first copy of a duplicate is the one
kept and the same folder always gives byte-identical shards. Decoding runs in a process pool one
chunk at a time; kept pixels are spilled to temporary shards, so memory holds two chunks, one
output shard and about 1 KB per image (its path, hashes and a 256-byte thumbnail), never the
pixels of the whole folder.

Not handled: frames after the first; colour profiles (CMYK and ICC are converted plainly);
images beyond Pillow's decompression-bomb limit (skipped and listed, like any unreadable file).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Union

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genforge.data.gate import GateStats
from genforge.data.prepared import Prepared, source_info
from genforge.data.options import ImageOptions, IngestConfig
from genforge.data.sources import IMAGE_SUFFIXES, get_builtin
from genforge.data.split import assign_splits, split_summary
from genforge.data.store import SPLITS, DatasetWriter
from genforge.errors import DataError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # JPEG also opens phone cameras' MPO files
MAX_LISTED = 10_000  # per cleaning list, so a manifest stays readable
SHARD_BYTES = 64 << 20  # output shard size: bounded memory when writing and reading
THUMB = 16  # side of the grayscale thumbnail that confirms near-duplicates
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

Task = Union[str, np.ndarray]  # a file path, or a built-in image (C, H, W) uint8


# ---- one image --------------------------------------------------------------------------


@dataclass
class Decoded:
    pixels: np.ndarray  # (C, size, size) uint8; C = 1 when R = G = B everywhere (or channels=1)
    sha: str  # blake2b-128 of `pixels`: the exact-duplicate and split key
    phash: int  # 64-bit pHash of the normalised image: finds near-duplicate candidates
    thumb: np.ndarray  # (t*t,) uint8 grayscale thumbnail: confirms them
    min_side: int  # smallest side of the source image, before resizing
    mode: str  # Pillow mode of the source
    notes: list[str] = field(default_factory=list)  # what normalising changed besides the size


def _to_8bit(im: Image.Image) -> tuple[Image.Image, str]:
    """Mode L or RGB, plus a note when the source was anything else."""
    mode = im.mode
    if mode.startswith("I"):  # I;16*, and I: how older Pillow opens 16-bit PNGs
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8)), f"{mode}: 16-bit scaled to 8-bit (v/257)"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        what = mode + (" with transparency" if "transparency" in im.info else "")
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB"), f"{what}: composited on white"
    if mode == "L":
        return im, ""
    if mode == "1":
        return im.convert("L"), "1: bilevel to L"
    if mode == "RGB":
        return im, ""
    return im.convert("RGB"), f"{mode}: converted to RGB"


def normalise(im: Image.Image, size: int, gray: bool) -> tuple[np.ndarray, Image.Image, list[str]]:
    """(pixels (C, size, size), the fitted image, notes): 8-bit, short side resized, centre-cropped."""
    im8, note = _to_8bit(im)
    notes = [note] if note else []
    if gray and im8.mode != "L":
        im8 = im8.convert("L")
        notes.append("converted to grayscale (channels=1)")
    fitted = ImageOps.fit(im8, (size, size), Image.Resampling.LANCZOS)
    a = np.asarray(fitted)
    if a.ndim == 2:
        a = a[:, :, None]
    elif (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        a = a[..., :1]
    return np.ascontiguousarray(a.transpose(2, 0, 1)), fitted, notes


def _hashes(pixels: np.ndarray, fitted: Image.Image, size: int) -> tuple[str, int, np.ndarray]:
    sha = hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()
    bits = np.packbits(imagehash.phash(fitted).hash.flatten())
    t = min(THUMB, size)
    thumb = np.asarray(fitted.convert("L").resize((t, t), Image.Resampling.BOX)).reshape(-1)
    return sha, int.from_bytes(bits.tobytes(), "big"), thumb


def _skip_reason(err: Exception) -> str:
    msg = str(err) or type(err).__name__
    if isinstance(err, UnidentifiedImageError):
        return f"not a readable image ({'/'.join(FORMATS)}): {msg}"
    if "truncated" in msg:
        return f"truncated image: {msg}"
    return f"unreadable ({type(err).__name__}): {msg}"


def decode(task: Task, size: int, gray: bool) -> Decoded | str:
    """One input -> normalised pixels and hashes, or the reason it is skipped (never raises)."""
    try:
        if isinstance(task, np.ndarray):
            im = Image.fromarray(task[0] if task.shape[0] == 1 else task.transpose(1, 2, 0))
            pixels, fitted, notes = normalise(im, size, gray)
            return Decoded(pixels, *_hashes(pixels, fitted, size), min(im.size), im.mode, notes)
        if os.path.getsize(task) == 0:
            return "empty file (0 bytes)"
        # Pillow's LOAD_TRUNCATED_IMAGES stays off: load() raises on a truncated file instead of padding it.
        with Image.open(task, formats=FORMATS) as im:
            notes = []
            if getattr(im, "is_animated", False):
                im.seek(0)
                notes.append("animated: first frame used")
            min_side, mode = min(im.size), im.mode
            im.draft(None, (2 * size, 2 * size))  # JPEG decodes at 1/2..1/8 scale: much faster, still >= 2x the output
            im.load()
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            pixels, fitted, more = normalise(im, size, gray)
        return Decoded(pixels, *_hashes(pixels, fitted, size), min_side, mode, notes + more)
    except Exception as e:  # one bad file must never stop an ingest: it is listed instead
        return _skip_reason(e)


# ---- near-duplicate search --------------------------------------------------------------


class NearIndex:
    """Earlier kept images within `max_bits` pHash bits and `max_rmse` of thumbnail difference.

    Multi-index hashing: the 64 hash bits are cut into max_bits + 1 bands; hashes at most
    max_bits apart cannot differ in every band, so only images sharing some band value with
    the query are compared, not all pairs. pHash alone calls many distinct simple images near
    (on builtin:digits 3,094 of 5,000 have a neighbour within 6 bits), so a thumbnail RMSE
    confirms each candidate: resized, re-compressed copies measured below 3.2, distinct digits 7.2 and up.
    """

    def __init__(self, max_bits: int, max_rmse: float, thumb_pixels: int):
        edges = np.linspace(0, 64, max_bits + 2).round().astype(int)
        self.bands = [(int(a), (1 << int(b - a)) - 1) for a, b in zip(edges[:-1], edges[1:])]
        self.buckets: list[dict[int, list[int]]] = [{} for _ in self.bands]
        self.max_bits, self.max_rmse = max_bits, max_rmse
        self.hashes = np.zeros(1024, np.uint64)
        self.thumbs = np.zeros((1024, thumb_pixels), np.uint8)
        self.n = 0

    def find(self, h: int, thumb: np.ndarray) -> tuple[int, int, float] | None:
        """(index of the nearest earlier image, pHash bits apart, thumbnail RMSE), or None."""
        hits = [ids for (shift, mask), b in zip(self.bands, self.buckets) if (ids := b.get((h >> shift) & mask))]
        if not hits:
            return None
        idx = np.unique(np.concatenate(hits))
        bits = _POPCOUNT[(self.hashes[idx] ^ np.uint64(h)).view(np.uint8)].reshape(-1, 8).sum(1)
        idx, bits = idx[bits <= self.max_bits], bits[bits <= self.max_bits]
        if not len(idx):
            return None
        diff = self.thumbs[idx].astype(np.float32) - thumb.astype(np.float32)
        rmse = np.sqrt((diff * diff).mean(1))
        ok = rmse <= self.max_rmse
        if not ok.any():
            return None
        best = np.lexsort((idx[ok], bits[ok]))[0]  # fewest bits apart, then the earliest
        return int(idx[ok][best]), int(bits[ok][best]), round(float(rmse[ok][best]), 2)

    def add(self, h: int, thumb: np.ndarray) -> None:
        if self.n == len(self.hashes):
            self.hashes = np.resize(self.hashes, 2 * self.n)
            self.thumbs = np.resize(self.thumbs, (2 * self.n, self.thumbs.shape[1]))
        self.hashes[self.n], self.thumbs[self.n] = h, thumb
        for (shift, mask), b in zip(self.bands, self.buckets):
            b.setdefault((h >> shift) & mask, []).append(self.n)
        self.n += 1


# ---- inputs -----------------------------------------------------------------------------


@dataclass
class Inputs:
    names: list[str]  # how the report names each input: path relative to the folder
    tasks: list[Task]
    labels: np.ndarray  # int64, -1 when unlabeled
    classes: list[str]
    ignored: list[dict]
    layout: str


def scan_folder(root: Path, labels: str) -> Inputs:
    """Image files under `root` in sorted order; class = first sub-folder when labeled.

    Hidden files and folders are skipped; symlinked folders are followed once, so a link loop
    ends instead of recursing forever. Every file not taken is listed with its reason."""
    if not root.is_dir():
        raise DataError(f"image source must be a folder or builtin:digits, got {root}")
    files: list[str] = []
    ignored: list[dict] = []
    seen = {(root.stat().st_dev, root.stat().st_ino)}

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def unreadable_dir(e: OSError) -> None:
        ignored.append({"item": str(e.filename), "reason": f"folder not readable: {e.strerror}"})

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable_dir):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            try:
                st = p.stat()
            except OSError as e:
                ignored.append({"item": rel(p) + "/", "reason": f"folder not readable: {e.strerror}"})
                continue
            if d.startswith("."):
                ignored.append({"item": rel(p) + "/", "reason": "hidden folder"})
            elif (st.st_dev, st.st_ino) in seen:
                ignored.append({"item": rel(p) + "/", "reason": "folder already visited (symlink loop or repeated link)"})
            else:
                seen.add((st.st_dev, st.st_ino))
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            r = rel(here / f)
            if f.startswith("."):
                ignored.append({"item": r, "reason": "hidden file"})
            elif Path(f).suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append({"item": r, "reason": "not an image file name (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"})
            else:
                files.append(r)
    files.sort()
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    labeled = labels == "folders" or (labels == "auto" and any("/" in f for f in files))
    if labeled:
        outside = [f for f in files if "/" not in f]
        ignored += [{"item": f, "reason": "image outside any class folder (classes are sub-folder names)"} for f in outside]
        files = [f for f in files if "/" in f]
        if not files:
            raise DataError(f"no images inside class folders of {root} (labels=folders); use labels=none for a flat folder")
        classes = sorted({f.split("/", 1)[0] for f in files})
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[f.split("/", 1)[0]] for f in files], dtype=np.int64)
    else:
        classes, y = [], np.full(len(files), -1, dtype=np.int64)
    ignored.sort(key=lambda e: e["item"])
    return Inputs(files, [str(root / f) for f in files], y, classes, ignored, "class folders" if labeled else "flat")


def builtin_inputs(source: str) -> Inputs:
    name, b = get_builtin(source)
    images, labels, classes = b.load()
    return Inputs([f"{name}/{i:05d}" for i in range(len(images))], list(images), np.asarray(labels, np.int64),
                  list(classes), [], "built-in")


# ---- the pipeline -----------------------------------------------------------------------


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_chunks(tasks: list[Task], opts: ImageOptions) -> Iterator[list[Decoded | str]]:
    """Decoded chunks in input order. The pool decodes the next chunk while the caller handles
    this one, so at most two chunks are in memory."""
    fn = partial(decode, size=opts.size, gray=opts.channels == 1)
    chunks = [tasks[i:i + opts.chunk_size] for i in range(0, len(tasks), opts.chunk_size)]
    workers = min(opts.workers or _cpu_count(), len(tasks))
    if workers <= 1:
        for c in chunks:
            yield [fn(t) for t in c]
        return
    # fork on Linux: spawn and forkserver re-run the caller's __main__ in every worker, so a script
    # without an `if __name__ == "__main__":` guard would ingest again in each of them. The workers
    # only run Pillow and numpy, so a parent's threads (torch, a web server) cannot hold their locks.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        pending = None
        for c in chunks:
            submitted = pool.map_async(fn, c, chunksize=max(1, len(c) // (4 * workers)))
            if pending is not None:
                yield pending.get()
            pending = submitted
        if pending is not None:
            yield pending.get()


class _Listing:
    """A cleaning list capped at MAX_LISTED entries; `total` keeps the true count."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.total = 0

    def add(self, **entry) -> None:
        self.total += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(entry)


@dataclass
class Cleaned:
    """What survives cleaning, in input order; the pixels themselves wait in the spill shards."""

    kept: list[int] = field(default_factory=list)  # input indices
    keys: list[str] = field(default_factory=list)  # content hashes: the split keys
    chunk_of: list[int] = field(default_factory=list)  # spill shard of each kept image
    row_of: list[int] = field(default_factory=list)  # and its row there
    modes: dict[str, int] = field(default_factory=dict)
    all_gray: bool = True
    min_side: int | None = None
    skipped: _Listing = field(default_factory=_Listing)
    exact: _Listing = field(default_factory=_Listing)
    near: _Listing = field(default_factory=_Listing)
    changed: _Listing = field(default_factory=_Listing)


def clean(inputs: Inputs, opts: ImageOptions, spill: Path) -> Cleaned:
    """Decode chunk by chunk; drop unreadable files and duplicates of earlier images; spill the rest."""
    out = Cleaned()
    first_of: dict[str, int] = {}  # content hash -> input index of its first occurrence
    index = NearIndex(opts.near_duplicate_hamming, opts.near_duplicate_max_rmse, min(THUMB, opts.size) ** 2) \
        if opts.near_duplicate_hamming > 0 else None
    i = 0
    for chunk_no, results in enumerate(decode_chunks(inputs.tasks, opts)):
        rows = []
        for res in results:
            name, i = inputs.names[i], i + 1
            if isinstance(res, str):
                out.skipped.add(item=name, reason=res)
                continue
            if (first := first_of.get(res.sha)) is not None:
                out.exact.add(item=name, duplicate_of=inputs.names[first])
                continue
            first_of[res.sha] = i - 1
            if index is not None:
                if hit := index.find(res.phash, res.thumb):
                    out.near.add(item=name, near=inputs.names[out.kept[hit[0]]], phash_bits=hit[1], thumb_rmse=hit[2])
                    continue
                index.add(res.phash, res.thumb)
            out.kept.append(i - 1)
            out.keys.append(res.sha)
            out.chunk_of.append(chunk_no)
            out.row_of.append(len(rows))
            rows.append(res.pixels)
            out.modes[res.mode] = out.modes.get(res.mode, 0) + 1
            out.all_gray &= res.pixels.shape[0] == 1
            out.min_side = res.min_side if out.min_side is None else min(out.min_side, res.min_side)
            for note in res.notes:
                out.changed.add(item=name, change=note)
        if rows:
            c = max(r.shape[0] for r in rows)
            np.save(spill / f"{chunk_no:06d}.npy", np.stack([np.repeat(r, c, axis=0) if r.shape[0] != c else r for r in rows]))
    return out


def write_splits(cleaned: Cleaned, labels: np.ndarray, assignment: np.ndarray, channels: int, size: int,
                 spill: Path, writer: DatasetWriter) -> int:
    """Stream the spilled pixels into per-split shards of at most SHARD_BYTES; returns images per shard."""
    per_shard = max(1, SHARD_BYTES // (channels * size * size))
    chunks, rows = np.array(cleaned.chunk_of, np.int64), np.array(cleaned.row_of, np.int64)
    for split in SPLITS:
        idx = np.flatnonzero(assignment == split)
        for start in range(0, len(idx), per_shard):
            sel = idx[start:start + per_shard]
            images = np.empty((len(sel), channels, size, size), np.uint8)
            for c in np.unique(chunks[sel]):
                mine = chunks[sel] == c
                part = np.load(spill / f"{c:06d}.npy", mmap_mode="r")[rows[sel][mine]]
                images[mine] = np.repeat(part, channels, axis=1) if part.shape[1] != channels else part
            writer.write_image_shard(split, images, labels[sel])
    return per_shard


def prepare_images(source: str, cfg: IngestConfig, writer: DatasetWriter) -> Prepared:
    """Decode, normalise, de-duplicate, split and write `source` (a folder or builtin:digits)."""
    opts = cfg.image
    inputs = builtin_inputs(source) if source.startswith("builtin:") else scan_folder(Path(source), opts.labels)
    labeled = bool(inputs.classes)
    spill = writer.tmp / ".spill"  # removed before commit: not part of the dataset's files
    spill.mkdir()
    try:
        cl = clean(inputs, opts, spill)
        channels = opts.channels if opts.channels != "auto" else (1 if cl.kept and cl.all_gray else 3)
        labels = inputs.labels[cl.kept]
        assignment = assign_splits(cl.keys, labels if labeled else None, cfg.split)
        per_shard = write_splits(cl, labels, assignment, channels, opts.size, spill, writer)
    finally:
        shutil.rmtree(spill, ignore_errors=True)

    n_in = len(inputs.tasks)
    per_class = {c: int((labels == k).sum()) for k, c in enumerate(inputs.classes)} if labeled else None
    counts = {"input": n_in, "kept": len(cl.kept), "skipped": cl.skipped.total, "exact_duplicates": cl.exact.total,
              "near_duplicates": cl.near.total, "ignored": len(inputs.ignored), "normalised": cl.changed.total,
              "source_modes": dict(sorted(cl.modes.items()))}
    if per_class is not None:
        counts["per_class"] = per_class
    listings = {"skipped": cl.skipped, "exact_duplicates": cl.exact, "near_duplicates": cl.near, "normalised": cl.changed}
    cleaning: dict = {k: v.items for k, v in listings.items()}
    cleaning["ignored"] = inputs.ignored[:MAX_LISTED]
    not_listed = {k: v.total - len(v.items) for k, v in listings.items() if v.total > len(v.items)}
    if len(inputs.ignored) > MAX_LISTED:
        not_listed["ignored"] = len(inputs.ignored) - MAX_LISTED
    if not_listed:
        cleaning["not_listed"] = not_listed
    near = opts.near_duplicate_hamming > 0
    t = min(THUMB, opts.size)
    cleaning["settings"] = {
        "size": opts.size, "channels": channels, "channels_setting": opts.channels,
        "resize": "short side to size (Lanczos), then centre crop",
        "alpha": "composited on white", "sixteen_bit": "scaled to 8 bit as round(v / 257)",
        "exact_duplicates": "blake2b-128 of the normalised uint8 pixels",
        "near_duplicates": (f"pHash (imagehash, 64 bits) within {opts.near_duplicate_hamming} bits and {t}x{t} grayscale "
                            f"thumbnail RMSE <= {opts.near_duplicate_max_rmse}" if near else "off"),
        "keep": "the first in sorted path order; later copies are removed",
    }
    schema = {"channels": channels, "height": opts.size, "width": opts.size, "dtype": "uint8", "layout": "NCHW",
              "labels": "int64 index into classes, -1 = unlabeled", "images_per_shard": per_shard}
    stats = GateStats(
        n_examples=len(cl.kept), per_class=per_class,
        duplicate_share=(cl.exact.total + cl.near.total) / n_in, unreadable_share=cl.skipped.total / n_in,
        min_resolution=cl.min_side,
    )
    return Prepared(source=source_info(source, layout=inputs.layout), counts=counts, schema=schema,
                    split=split_summary(assignment, labels if labeled else None, inputs.classes, cfg.split),
                    cleaning=cleaning, gate_stats=stats, classes=inputs.classes)
