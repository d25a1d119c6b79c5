"""Image ingest: every kind of messy input handled and reported, duplicates removed, output deterministic."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from genforge.config import load_config
from genforge.data.images import NearIndex, decode, normalise
from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.errors import DataError

SIZE = 32
LENIENT = ["gate.min_examples=1", "gate.min_per_class=1", "gate.max_unreadable_share=null",
           "gate.max_duplicate_share=null", "image.workers=1", f"image.size={SIZE}"]


def cfg(*extra: str) -> IngestConfig:
    return load_config(IngestConfig, None, LENIENT + list(extra))


def synth(seed: int, w: int = 96, h: int = 80) -> Image.Image:
    """A distinct, structured RGB image: gradient background and a few shapes."""
    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    im = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(h, 0).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(w // 6, w // 2)), y0 + int(rng.integers(h // 6, h // 2))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    return im


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def jpeg_copy(im: Image.Image, scale: float, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def all_images(ref: str) -> np.ndarray:
    ds = open_dataset(ref)
    return np.concatenate([ds.images(s)[0] for s in ("train", "val", "test")])


def contains(images: np.ndarray, pixels: np.ndarray) -> bool:
    c = images.shape[1]
    want = np.repeat(pixels, c, axis=0) if pixels.shape[0] != c else pixels
    return bool((images == want[None]).all(axis=(1, 2, 3)).any())


@pytest.fixture
def messy(tmp_path) -> Path:
    """Two classes of good images plus every kind of trouble the ingest must handle."""
    root = tmp_path / "messy"
    for k in range(6):
        save(synth(k), root / "red" / f"r{k}.png")
        save(synth(100 + k), root / "blue" / f"b{k}.jpg", quality=95)
    save(synth(200), root / "red" / "r_webp.webp", lossless=True)
    save(synth(201), root / "red" / "R_UPPER.PNG")
    save(synth(202), root / "blue" / "b_bmp.bmp")
    # unreadable: corrupt, truncated, zero bytes, text named .png
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    good = io.BytesIO()
    synth(203).save(good, "PNG")
    (root / "red" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "blue" / "empty.png").write_bytes(b"")
    (root / "blue" / "notes.png").write_text("this is not an image\n")
    # exact duplicates: a byte copy, and the same pixels in another format
    (root / "red" / "r0_copy.png").write_bytes((root / "red" / "r0.png").read_bytes())
    save(Image.open(root / "red" / "r1.png"), root / "red" / "r1_as.bmp")
    # near-duplicates: resized and re-compressed JPEG copies
    save(jpeg_copy(synth(2), 0.5, 80), root / "red" / "r2_small.jpg")
    save(jpeg_copy(synth(103), 2.0, 70), root / "blue" / "b3_big.jpg")
    # modes: palette with transparency, RGBA, 16-bit, grayscale+alpha, EXIF-rotated, animated GIF
    pal = synth(300).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save(pal, root / "blue" / "palette.png")
    rgba = synth(301).convert("RGBA")
    a = np.array(rgba)
    a[:, : a.shape[1] // 2, 3] = 0  # left half fully transparent
    save(Image.fromarray(a), root / "blue" / "rgba.png")
    ramp = (np.linspace(0, 65535, 48)[None, :] * np.ones((48, 1))).astype(np.uint16)
    ramp[24:, :] = ramp[24:, ::-1]  # bottom half runs the other way: structure for the hashes
    save(Image.fromarray(ramp), root / "red" / "gray16.png")
    la = synth(302).convert("LA")
    save(la, root / "red" / "gray_alpha.png")
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, 30:] = 255  # stored: left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: top black, bottom white
    save(Image.fromarray(stored), root / "blue" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    frames = [synth(303).convert("P"), synth(304).convert("P")]
    frames[0].save(root / "blue" / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    # not taken at all: hidden, non-image names, a stray root image, a symlink loop
    (root / "blue" / ".DS_Store").write_bytes(b"\0\0")
    (root / "README.txt").write_text("messy test folder")
    save(synth(400), root / "stray.png")
    os.symlink("..", root / "red" / "loop")
    return root


def test_messy_folder_each_case_handled_and_reported(messy):
    res = ingest(str(messy), "messy", cfg())
    m = res.manifest
    c, cl = m.counts, m.cleaning
    by_item = lambda key: {e["item"]: e for e in cl[key]}  # noqa: E731

    skipped = by_item("skipped")
    assert set(skipped) == {"red/corrupt.jpg", "red/truncated.png", "blue/empty.png", "blue/notes.png"}
    assert "truncated" in skipped["red/truncated.png"]["reason"]
    assert "0 bytes" in skipped["blue/empty.png"]["reason"]
    assert "not a readable image" in skipped["blue/notes.png"]["reason"]
    assert {e["item"]: e["duplicate_of"] for e in cl["exact_duplicates"]} == {"red/r0_copy.png": "red/r0.png", "red/r1_as.bmp": "red/r1.png"}
    near = by_item("near_duplicates")
    assert {k: v["near"] for k, v in near.items()} == {"red/r2_small.jpg": "red/r2.png", "blue/b3_big.jpg": "blue/b3.jpg"}
    assert all(v["phash_bits"] <= 6 and v["thumb_rmse"] <= 5 for v in near.values())

    changes = {(e["item"], e["change"].split(":")[0]) for e in cl["normalised"]}
    assert {("blue/palette.png", "P with transparency"), ("blue/rgba.png", "RGBA"), ("red/gray16.png", "I;16"),
            ("red/gray_alpha.png", "LA"), ("blue/rotated.jpg", "EXIF orientation 6 applied"),
            ("blue/anim.gif", "animated")} <= changes
    ignored = by_item("ignored")
    assert ignored["README.txt"]["reason"].startswith("not an image file name")
    assert ignored["blue/.DS_Store"]["reason"] == "hidden file"
    assert "outside any class folder" in ignored["stray.png"]["reason"]
    assert "symlink loop" in ignored["red/loop/"]["reason"]

    n_inputs = 6 + 6 + 3 + 4 + 2 + 2 + 6  # good, other formats, unreadable, exact, near, modes
    assert c["input"] == n_inputs and c["skipped"] == 4 and c["exact_duplicates"] == 2 and c["near_duplicates"] == 2
    assert c["kept"] == n_inputs - 8 == m.split["sizes"]["train"] + m.split["sizes"]["val"] + m.split["sizes"]["test"]
    assert m.classes == ["blue", "red"] and sum(c["per_class"].values()) == c["kept"]
    figures = {r["rule"]: r["figure"] for r in m.gate["rules"]}
    assert m.gate["passed"] and figures["max_unreadable_share"] == 4 / n_inputs and figures["max_duplicate_share"] == 4 / n_inputs
    assert m.data_schema["channels"] == 3 and m.data_schema["height"] == m.data_schema["width"] == SIZE

    # The kept pixels are the normalised images, and they are in the dataset.
    images = all_images(m.ref)
    assert images.shape == (c["kept"], 3, SIZE, SIZE)
    rgba = decode(str(messy / "blue/rgba.png"), SIZE, False)
    assert (rgba.pixels[:, :, :12] == 255).all() and contains(images, rgba.pixels)  # transparent -> white
    g16 = decode(str(messy / "red/gray16.png"), SIZE, False)
    ramp8 = ((np.asarray(Image.open(messy / "red/gray16.png")).astype(np.int64) + 128) // 257).astype(np.uint8)
    assert g16.pixels.shape[0] == 1 and np.array_equal(g16.pixels, normalise(Image.fromarray(ramp8), SIZE, False)[0])
    assert g16.pixels.min() <= 5 and g16.pixels.max() >= 250 and contains(images, g16.pixels)  # full 16-bit range used
    rot = decode(str(messy / "blue/rotated.jpg"), SIZE, False)
    assert rot.pixels[:, :8].mean() < 30 and rot.pixels[:, -8:].mean() > 225 and contains(images, rot.pixels)
    assert not (messy / ".spill").exists() and not any(f["path"].startswith(".") for f in m.files)


def test_same_folder_gives_byte_identical_shards_whatever_the_chunks_and_workers(messy):
    a = ingest(str(messy), "m", cfg())
    b = ingest(str(messy), "m", cfg("image.workers=2", "image.chunk_size=16"))
    assert b.manifest.version == a.manifest.version and not b.created
    assert [f["sha256"] for f in a.manifest.files] == [f["sha256"] for f in b.manifest.files]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="elsewhere workers are spawned and scripts need the guard")
def test_a_script_without_main_guard_ingests_once_with_a_pool(messy, tmp_path, workspace):
    script = tmp_path / "plain_script.py"
    script.write_text(
        "from genforge.config import load_config\nfrom genforge.data.ingest import ingest\n"
        "from genforge.data.options import IngestConfig\n"
        f"cfg = load_config(IngestConfig, None, {LENIENT + ['image.workers=2']!r})\n"
        f"print('ingested', ingest({str(messy)!r}, 's', cfg).manifest.version)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GENFORGE_HOME": str(workspace)})
    assert out.returncode == 0 and out.stdout.count("ingested") == 1, out.stdout + out.stderr


def test_changed_data_gives_a_new_version(messy):
    a = ingest(str(messy), "m", cfg())
    save(synth(999), messy / "red" / "new.png")
    b = ingest(str(messy), "m", cfg())
    assert b.created and b.manifest.version != a.manifest.version and b.manifest.counts["kept"] == a.manifest.counts["kept"] + 1


def test_flat_folder_is_unlabeled_and_gray_folder_is_one_channel(tmp_path):
    for k in range(5):
        save(synth(k).convert("L"), tmp_path / "flat" / f"{k}.png")
    save(synth(9).convert("L").convert("RGB"), tmp_path / "flat" / "sub" / "rgb_but_gray.jpg", quality=100)
    m = ingest(str(tmp_path / "flat"), "flat", cfg("image.labels=none")).manifest
    assert m.classes == [] and "per_class" not in m.counts and m.source["layout"] == "flat"
    images, labels = open_dataset("flat").images("train")
    assert (labels == -1).all() and images.shape[1] == 1 and m.data_schema["channels"] == 1
    forced = ingest(str(tmp_path / "flat"), "flat3", cfg("image.labels=none", "image.channels=3")).manifest
    assert forced.data_schema["channels"] == 3 and forced.counts["kept"] == m.counts["kept"]


def test_channels_1_converts_colour_to_luma(tmp_path):
    for k in range(4):
        save(synth(k), tmp_path / "c" / "a" / f"{k}.png")
    m = ingest(str(tmp_path / "c"), "c", cfg("image.channels=1")).manifest
    images = all_images(m.ref)
    assert images.shape[1] == 1
    expected = np.asarray(synth(0).convert("L"))
    assert contains(images, normalise(Image.fromarray(expected), SIZE, False)[0])


def test_near_duplicate_removal_can_be_switched_off(messy):
    m = ingest(str(messy), "m", cfg("image.near_duplicate_hamming=0")).manifest
    assert m.counts["near_duplicates"] == 0 and m.cleaning["settings"]["near_duplicates"] == "off"


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        ingest(str(tmp_path / "none"), "x", cfg(), force=True)


def test_near_index_finds_exactly_what_brute_force_finds():
    """Multi-index hashing must miss nothing within the distance and report nothing beyond it."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    flips = [np.uint64(1) << np.uint64(b) for b in range(64)]
    hashes = []
    for h in base:  # clusters: each base hash and a few copies with 1..12 bits flipped
        hashes.append(int(h))
        for _ in range(2):
            x = h
            for b in rng.choice(64, int(rng.integers(1, 13)), replace=False):
                x ^= flips[b]
            hashes.append(int(x))
    thumb = np.zeros(4, np.uint8)
    for t in (1, 3, 6, 10):
        idx, kept = NearIndex(t, 255.0, 4), []
        for h in hashes:
            dist = [bin(h ^ k).count("1") for k in kept]
            expect = min(dist) if dist and min(dist) <= t else None
            hit = idx.find(h, thumb)
            assert (hit[1] if hit else None) == expect
            if hit is None:
                idx.add(h, thumb)
                kept.append(h)


def test_thumbnail_check_keeps_distinct_but_similar_images():
    """Two images whose pHashes agree but whose pixels differ are both kept."""
    idx = NearIndex(6, 5.0, 4)
    idx.add(0xFF, np.array([0, 0, 0, 0], np.uint8))
    assert idx.find(0xFF, np.array([40, 0, 0, 0], np.uint8)) is None
    assert idx.find(0xFE, np.array([2, 0, 0, 0], np.uint8)) == (0, 1, 1.0)


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_each_format_decodes(tmp_path, fmt, suffix):
    p = save(synth(1) if fmt != "GIF" else synth(1).convert("P"), tmp_path / f"x.{suffix}", fmt)
    d = decode(str(p), SIZE, False)
    assert not isinstance(d, str) and d.pixels.shape == (3, SIZE, SIZE) and d.min_side == 80


def test_truncated_is_detected_for_every_format(tmp_path):
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        buf = io.BytesIO()
        (synth(2).convert("P") if fmt == "GIF" else synth(2)).save(buf, fmt)
        p = tmp_path / f"t.{fmt.lower()}"
        p.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.8)])
        assert isinstance(decode(str(p), SIZE, False), str), fmt


def test_builtin_digits(workspace):
    res = ingest("builtin:digits", "digits", cfg("image.workers=0", "gate.min_per_class=10"))
    m = res.manifest
    assert m.counts["input"] == 5000 and m.counts["kept"] == 5000
    assert m.counts["per_class"] == {str(d): 500 for d in range(10)}
    assert m.split["sizes"] == {"train": 4000, "val": 500, "test": 500}
    figures = {r["rule"]: r["figure"] for r in m.gate["rules"]}
    assert m.data_schema["channels"] == 1 and m.gate["passed"] and figures["min_resolution"] == 28
    x, y = open_dataset("digits").images("val")
    assert x.shape == (500, 1, SIZE, SIZE) and np.bincount(y).tolist() == [50] * 10
