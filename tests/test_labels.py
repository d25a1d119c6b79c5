"""AI-content labels on images (genforge.labels): the watermark's round trip and what it survives, its
silence on unmarked images, the PNG metadata, a C2PA manifest signed with the dev CA and validated by
c2pa's own Reader, `genforge verify`, and the writers that label every PNG they write.

Real MNIST digits stand in for generated ones: they are what the digit models imitate, mostly pure black
and white, the hardest case for a watermark (half of any change is clipped away)."""

import io
import json
import stat

import numpy as np
import pytest
from PIL import Image

from clirun import invoke
from genforge.errors import ConfigError
from genforge.labels import generation_tag, label_png, metadata, verify, watermark as wm
from genforge.labels.c2pa_manifest import load_signing, read_manifest
from genforge.labels.secret import key_path, workspace_key
from genforge.models import ImageSamples
from genforge.outputs import write_images
from imagesets import digits, shapes

try:
    import c2pa  # noqa: F401  (its native library loads here)

    C2PA_MISSING = None
except (ImportError, OSError) as e:
    C2PA_MISSING = f"c2pa-python cannot load on this platform: {e}"
needs_c2pa = pytest.mark.skipif(C2PA_MISSING is not None, reason=C2PA_MISSING or "")

KEY = bytes(range(32))


def marked(images: np.ndarray, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(N, 1, H, W) digits -> marked (H, W) images and the frame each carries."""
    rng = np.random.default_rng(seed)
    frames = [wm.frame(int(rng.integers(0, 2 ** 32)), int(rng.integers(0, 2 ** 32))) for _ in images]
    return [wm.embed(img[0], f, KEY) for img, f in zip(images, frames)], frames


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def resized(img: np.ndarray, resample=Image.Resampling.BICUBIC) -> np.ndarray:
    im = Image.fromarray(img)
    return np.asarray(im.resize((im.width // 2, im.height // 2), resample).resize(im.size, resample))


def test_frames_round_trip_and_a_wrong_bit_fails_the_crc():
    for model_hash, gid in ((0, 0), (2 ** 32 - 1, 2 ** 32 - 1), (0xDEADBEEF, 12345)):
        bits = wm.frame(model_hash, gid)
        assert len(bits) == 72 and wm.unframe(bits) == (model_hash, gid, True)
        flipped = bits.copy()
        flipped[5] ^= 1
        assert not wm.unframe(flipped)[2]
    with pytest.raises(Exception, match="generation id must be in"):
        wm.frame(0, 2 ** 32)


def test_embed_then_read_gives_the_payload_back_on_gray_and_rgb():
    x, _ = digits(8)
    images, frames = marked(x)
    for raw, img, f in zip(x, images, frames):
        r = wm.read(img, KEY)
        assert r.detected and r.crc_ok and (r.bits == f).all() and r.equaliser == "none"
        assert wm.psnr(raw[0], img) > 31  # pure black and white digits: ~35 dB on average, see the benchmark
    rgb, _ = shapes(3, size=32)
    for img in rgb.transpose(0, 2, 3, 1):
        f = wm.frame(7, 8)
        out = wm.embed(img, f, KEY)
        r = wm.read(out, KEY)
        assert out.shape == img.shape and r.detected and (r.bits == f).all() and wm.psnr(img, out) > 36
        d = out.astype(int) - img.astype(int)  # the same change in every channel, up to rounding: hues keep
        assert np.abs(d[..., 0] - d[..., 1]).max() <= 1 and np.abs(d[..., 1] - d[..., 2]).max() <= 1


def test_detected_after_jpeg_90_and_a_bilinear_resize():
    x, _ = digits(12)
    images, frames = marked(x, seed=1)
    after_jpeg = [wm.read(jpeg(img, 90), KEY) for img in images]
    assert all(r.detected for r in after_jpeg)
    assert np.mean([(r.bits == f).mean() for r, f in zip(after_jpeg, frames)]) > 0.95
    # ~0.95 of resized digits in the benchmark; Pillow's default bicubic clips its overshoot and is far harder
    assert sum(wm.read(resized(img, Image.Resampling.BILINEAR), KEY).detected for img in images) >= 10


def test_detected_after_pillows_default_bicubic_resize():
    """The embedder anticipates a 0.5x bicubic down-and-back (the overshoot it clips at saturated strokes
    used to hide the mark: ~0.15 of real digits were detected); generated digits, softer, reach ~0.96-1."""
    x, _ = digits(12)
    images, frames = marked(x, seed=1)
    reads = [wm.read(resized(img), KEY) for img in images]
    assert sum(r.detected for r in reads) >= 6
    assert all(wm.read(img, KEY).crc_ok for img in images)  # the clean payload still decodes, from the image as is


def test_silent_on_unmarked_images_other_keys_and_blank_ones():
    x, _ = digits(300)
    p = np.array([wm.read(img[0], KEY).p_value for img in x])
    assert (p <= wm.DEFAULT.p_threshold).sum() == 0
    assert 0.02 < (p <= 0.1).mean() < 0.25  # roughly calibrated: about 10% below 0.1 (Bonferroni makes it fewer)
    images, _ = marked(x[:10])
    assert not any(wm.read(img, bytes(32)).detected for img in images)
    for value in (0, 128, 255):
        assert not wm.read(np.full((28, 28), value, np.uint8), KEY).detected


def test_workspace_key_is_made_once_owner_only_and_checked(workspace):
    key = workspace_key()
    assert workspace_key() == key and len(key) == 32
    assert stat.S_IMODE(key_path().stat().st_mode) == 0o600
    key_path().write_text("not a key")
    with pytest.raises(ConfigError, match="restore it from a backup"):
        workspace_key()
    key_path().unlink()
    with pytest.raises(ConfigError, match="has no watermark key"):
        workspace_key(create=False)


def test_generate_writer_labels_every_png_and_verify_reads_them(tmp_path):
    x, y = digits(6)
    write_images(ImageSamples(x, tuple(int(v) for v in y)), tmp_path / "gen", {"run": "run-1", "checkpoint": "step-0000300"})
    record = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert len(set(record["generation_ids"])) == 6
    for i, gid in enumerate(record["generation_ids"]):
        img = Image.open(tmp_path / "gen" / f"sample-{i:04d}.png")
        fields = metadata.read_fields(img)
        assert fields["ai_generated"] == "true" and fields["model"] == "run-1" and fields["version"] == "step-0000300"
        assert fields["generation_id"] == gid and fields["created"].endswith("+00:00")
        assert 31 < wm.psnr(x[i, 0], np.asarray(img)) < 60  # the raw sample plus the mark, nothing else
    result = verify(tmp_path / "gen" / "sample-0003.png")
    assert result["watermark"]["detected"] and result["watermark"]["matches_metadata"]
    assert result["watermark"]["generation_tag"] == f"{generation_tag(record['generation_ids'][3]):08x}"
    assert result["c2pa"] is None and load_signing() is None  # no certificate configured: no manifest (the default)
    assert verify(tmp_path / "gen" / "grid.png")["watermark"]["detected"]

    Image.open(tmp_path / "gen" / "sample-0003.png").save(tmp_path / "copy.jpg", quality=90)
    out = invoke("verify", str(tmp_path / "copy.jpg")).output
    assert "watermark: present" in out and "metadata:  none" in out and "AI-generated: yes" in out
    Image.fromarray(x[0, 0]).save(tmp_path / "real.png")
    out = invoke("verify", str(tmp_path / "real.png")).output
    assert "watermark: not found" in out and "AI-generated: no label found" in out


def test_too_small_images_keep_their_metadata_without_a_watermark(tmp_path):
    labelled = label_png(np.zeros((8, 8, 1), np.uint8), "tiny", "1")
    (tmp_path / "small.png").write_bytes(labelled.png)
    result = verify(tmp_path / "small.png")
    assert not result["watermark"]["readable"] and result["metadata"]["watermark"].startswith("none")
    assert result["ai_generated"]


@needs_c2pa
def test_c2pa_manifest_signed_with_the_dev_ca_validates_and_is_trusted_with_its_ca(tmp_path):
    invoke("labels", "dev-ca")
    signing = load_signing()
    labelled = label_png(digits(1)[0][0].transpose(1, 2, 0), "digits", "4")
    untrusted = read_manifest(labelled.png, "image/png", None)
    assert untrusted["validation_state"] == "Valid" and untrusted["failures"] == ["signingCredential.untrusted"]
    trusted = read_manifest(labelled.png, "image/png", signing.trust_anchors)
    assert trusted["validation_state"] == "Trusted" and not trusted["failures"]
    assert trusted["generation"]["generation_id"] == labelled.generation_id and trusted["generation"]["model"] == "digits"
    assert stat.S_IMODE(signing.key.stat().st_mode) == 0o600

    (tmp_path / "signed.png").write_bytes(labelled.png)
    out = invoke("verify", str(tmp_path / "signed.png")).output
    assert "c2pa:      Trusted" in out and "matches the metadata" in out
    reencoded = io.BytesIO()
    Image.open(io.BytesIO(labelled.png)).save(reencoded, format="PNG")  # any re-encode drops the manifest
    assert read_manifest(reencoded.getvalue(), "image/png", signing.trust_anchors) is None
    tampered = bytearray(labelled.png)
    idat = labelled.png.index(b"IDAT")
    tampered[idat + 8] ^= 0xFF
    assert read_manifest(bytes(tampered), "image/png", signing.trust_anchors)["validation_state"] == "Invalid"
