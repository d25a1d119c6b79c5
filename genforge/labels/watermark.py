"""An invisible watermark for small generated images: spread-transform dither modulation (STDM) in the
low-frequency DCT of the luma, keyed by a per-workspace secret.

Why not plain additive spread spectrum: on 28x28 pixels a blind correlator also sees the host image's
own projection onto the keyed pattern (about 200 levels for a digit), while PSNR 38 dB allows a mark of
about 90 in total norm, so the host drowns it. STDM is spread spectrum with informed embedding (Chen and
Wornell 2001, "Quantization index modulation"): each coded bit has a keyed pseudo-random +-1 pattern over
the band (orthonormalised), and the embedder moves the image's projection onto it to the nearest point of
a keyed, dithered lattice for that bit, so the host cancels instead of adding noise. Detection and
decoding both correlate with the keyed patterns; detection is a z-test of how close the projections sit
to the keyed lattices (uniform on a real image, whatever it shows, because the dither is secret).

Robustness: the band is the low frequencies a 0.5x resize keeps; JPEG quantises those finely. A lattice
code is sensitive to gain, so decoding also tries equalisers for common down-and-back resampling. What a
resize does to the sync projections is mostly the host's doing, not the mark's: aliasing of a digit's
sharp edges and, for bicubic, the clipping of its overshoot at saturated strokes (5-12 levels rms, a
third of the sync step). The embedder knows the host, so it applies the ANTICIPATED attacks to its own
result (JPEG 90, bicubic and bilinear 0.5x and back) and moves each sync projection off its lattice point
by the shift that best balances the readings of the image as it is and as attacked: informed embedding
against the expected attacks. The reader is unchanged, so images marked before still verify.
Not handled: crops, rotation and other geometric changes (the patterns live in the image's own DCT
frame, so a different size or offset reads as unmarked), and images below 16 pixels a side.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn, idctn

from genforge.errors import DataError

FORMAT = "genforge-wm/1"
MIN_SIDE = 16
MAX_BAND = 400  # coefficients; a 28x28 image has 137 in its band
LUMA = np.array([0.299, 0.587, 0.114])  # JPEG's luma, so a JPEG encoder sees the mark where we put it


@dataclass(frozen=True)
class MarkSpec:
    """What is embedded, where, and how strongly; the embedder and the reader must agree on all of it."""

    model_bits: int = 32  # hash of "model@version"
    id_bits: int = 32  # generation id
    crc_bits: int = 8  # confirms a decoded payload (CRC-8 over model hash + id)
    sync_bits: int = 24  # keyed known bits: detection rests on them (and on the payload's lattice)
    radius: float = 0.45  # band: relative DCT frequencies 0 < |(u/H, v/W)| <= radius, what a 0.5x resize keeps
    step: float = 16.0  # payload lattice step per projection, in luma levels (orthonormal DCT); costs ~ step^2/12 each
    sync_step: float = 40.0  # the sync bits' step: larger buys detection under stronger noise
    sync_radius: float = 0.25  # the sync bits live below this relative frequency, where resampling barely reaches
    p_threshold: float = 1e-4  # detection: Bonferroni p-value over the equalisers tried

    @property
    def frame_bits(self) -> int:
        return self.model_bits + self.id_bits + self.crc_bits


DEFAULT = MarkSpec()


@dataclass(frozen=True)
class Reading:
    """What a read found. `bits` is the decoded frame (model hash, id, CRC), meaningful when `crc_ok`."""

    detected: bool
    p_value: float
    z: float
    bits: np.ndarray
    crc_ok: bool
    equaliser: str


@dataclass(frozen=True)
class _Layout:
    rows: np.ndarray  # (n,) band coefficient indices
    cols: np.ndarray
    patterns: np.ndarray  # (M, n) orthonormal rows: one keyed direction per coded bit
    steps: np.ndarray  # (M,) lattice step of each projection: sync first, then payload
    dither: np.ndarray  # (M,) keyed lattice offsets in [0, step)
    sync: np.ndarray  # (sync_bits,) keyed known bits
    repeats: int  # each frame bit is carried by `repeats` projections (as many as the band holds), combined softly


# ----------------------------------------------------------------------------- payload


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07): detects a wrong decode; the lattice statistic, not this, decides presence."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def model_hash(model: str, version: str) -> int:
    """32 bits naming a model version: the image carries this, not the name."""
    return int.from_bytes(hashlib.sha256(f"{model}@{version}".encode()).digest()[:4], "big")


def frame(model_hash32: int, generation_id: int, spec: MarkSpec = DEFAULT) -> np.ndarray:
    """The coded payload bits, most significant first: model hash, generation id, CRC."""
    if not (0 <= generation_id < 1 << spec.id_bits and 0 <= model_hash32 < 1 << spec.model_bits):
        raise DataError(f"generation id must be in [0, 2^{spec.id_bits}) and model hash in [0, 2^{spec.model_bits}), "
                        f"got {generation_id} and {model_hash32}")
    value = (model_hash32 << spec.id_bits) | generation_id
    nbytes = (spec.model_bits + spec.id_bits + 7) // 8
    value = (value << spec.crc_bits) | (crc8(value.to_bytes(nbytes, "big")) & ((1 << spec.crc_bits) - 1))
    return np.array([(value >> i) & 1 for i in range(spec.frame_bits - 1, -1, -1)], np.int64)


def unframe(bits: np.ndarray, spec: MarkSpec = DEFAULT) -> tuple[int, int, bool]:
    """(model hash, generation id, CRC matches) from decoded frame bits."""
    value = int("".join(str(int(b)) for b in bits), 2)
    crc, payload = value & ((1 << spec.crc_bits) - 1), value >> spec.crc_bits
    nbytes = (spec.model_bits + spec.id_bits + 7) // 8
    ok = crc == crc8(payload.to_bytes(nbytes, "big")) & ((1 << spec.crc_bits) - 1)
    return payload >> spec.id_bits, payload & ((1 << spec.id_bits) - 1), ok


# ----------------------------------------------------------------------------- keyed layout


def _luma(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3) -> (H, W) float luma."""
    x = image.astype(np.float64)
    if x.ndim == 2:
        return x
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] == 3:
        return x @ LUMA
    raise DataError(f"watermarks are for grayscale or RGB images, got {x.shape[-1]} channels")


def _band(h: int, w: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The band's DCT indices, lowest frequencies first; at most MAX_BAND of them, so a large image (a grid)
    is marked in its lowest frequencies instead of costing minutes."""
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r2 = (u / h) ** 2 + (v / w) ** 2  # relative frequency: the band scales with the image
    keep = (r2 > 0) & (r2 <= radius ** 2)
    order = np.argsort(r2[keep], kind="stable")[:MAX_BAND]
    return u[keep][order], v[keep][order]


def _down_and_back(img: Image.Image, scale: float, resample: Image.Resampling) -> np.ndarray:
    small = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return np.asarray(img.resize(small, resample).resize(img.size, resample))


EQUALISERS = {f"resize{s}-{f.name.lower()}": (s, f) for s in (0.5, 0.75)
              for f in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)}
# what the embedder anticipates, with weights: the image as it is (payload and sync have margin to spare
# there), JPEG 90 and the 0.5x down-and-back resizes images meet most (Pillow's default bicubic, bilinear)
ANTICIPATED = (("none", 0.3), ("jpeg90", 0.5), ("resize0.5-bicubic", 1.0), ("resize0.5-bilinear", 0.7))


@functools.lru_cache(maxsize=64)
def _equaliser(h: int, w: int, radius: float, name: str) -> np.ndarray:
    """Band -> band inverse of the resampling `name`, from what it does to each band basis image."""
    rows, cols = _band(h, w, radius)
    if name == "none":
        return np.eye(len(rows))
    scale, resample = EQUALISERS[name]
    a = np.empty((len(rows), len(rows)))
    for j, (r, c) in enumerate(zip(rows, cols)):
        basis = np.zeros((h, w))
        basis[r, c] = 1.0
        back = _down_and_back(Image.fromarray(idctn(basis, norm="ortho").astype(np.float32), mode="F"), scale, resample)
        a[:, j] = dctn(back.astype(np.float64), norm="ortho")[rows, cols]
    lam = 1e-2  # Tikhonov: don't blow up noise where the resampling left almost nothing
    return np.linalg.solve(a.T @ a + lam * np.eye(len(rows)), a.T)


def _equalisers(h: int, w: int, radius: float) -> tuple[tuple[str, np.ndarray], ...]:
    """The reader's hypotheses: no resampling, then each down-and-back resampling in EQUALISERS."""
    return tuple((name, _equaliser(h, w, radius, name)) for name in ("none", *EQUALISERS))


@functools.lru_cache(maxsize=32)
def _layout(key: bytes, h: int, w: int, spec: MarkSpec) -> _Layout:
    if min(h, w) < MIN_SIDE:
        raise DataError(f"images below {MIN_SIDE} pixels a side cannot carry the watermark, got {w}x{h}")
    if spec.sync_bits < 8:
        raise DataError(f"sync_bits must be at least 8 (detection rests on them), got {spec.sync_bits}")
    rows, cols = _band(h, w, spec.radius)
    low = (rows / h) ** 2 + (cols / w) ** 2 <= spec.sync_radius ** 2
    n = len(rows)
    if n < spec.sync_bits + spec.frame_bits or low.sum() < spec.sync_bits:
        raise DataError(f"a {w}x{h} image has {n} band coefficients ({low.sum()} below the sync radius), too few for "
                        f"{spec.sync_bits} sync and {spec.frame_bits} payload bits: use fewer bits or larger radii")
    repeats = (n - spec.sync_bits) // spec.frame_bits
    m = spec.sync_bits + repeats * spec.frame_bits
    seed = hmac.new(key, f"{FORMAT}|{h}x{w}|{spec}".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(list(seed))
    signs = rng.choice([-1.0, 1.0], size=(n, m))
    signs[~low, :spec.sync_bits] = 0.0
    q, _ = np.linalg.qr(signs)  # (n, m) orthonormal; QR keeps the sync columns inside the low frequencies
    steps = np.where(np.arange(m) < spec.sync_bits, spec.sync_step, spec.step)
    dither = rng.uniform(0, 1, m) * steps
    sync = rng.integers(0, 2, spec.sync_bits)
    return _Layout(rows, cols, q.T.copy(), steps, dither, sync, repeats)


# ----------------------------------------------------------------------------- embed / read


def _coded(lay: _Layout, bits: np.ndarray) -> np.ndarray:
    return np.concatenate([lay.sync, np.tile(bits, lay.repeats)])


def _attacked(img: Image.Image, name: str) -> np.ndarray:
    """The image as the anticipated `name` leaves it: as it is, JPEG 90, or a down-and-back resize."""
    if name == "none":
        return np.asarray(img)
    if name == "jpeg90":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return np.asarray(Image.open(buf))
    return _down_and_back(img, *EQUALISERS[name])


def _anticipated_shift(lay: _Layout, marked: np.ndarray, target: np.ndarray, k: int, spec: MarkSpec) -> np.ndarray:
    """Per sync projection, the shift off its lattice point (in luma levels) that minimises the weighted
    sum of 1 - cos(lattice phase) over the ANTICIPATED readings, each with the reader's equaliser for it:
    a grid search, as the phases wrap."""
    h, w = marked.shape[:2]
    img = Image.fromarray(marked[..., 0] if marked.ndim == 3 and marked.shape[-1] == 1 else marked)
    steps = lay.steps[:k]
    grid = np.linspace(-0.5, 0.5, 65)[:-1]  # shifts, in steps
    cost = np.zeros((k, len(grid)))
    for name, weight in ANTICIPATED:
        band = dctn(_luma(_attacked(img, name)), norm="ortho")[lay.rows, lay.cols]
        eq = _equaliser(h, w, spec.radius, name if name in EQUALISERS else "none")
        moved = (lay.patterns[:k] @ (eq @ band) - target[:k]) / steps
        cost += weight * (1 - np.cos(2 * np.pi * (grid[None, :] + moved[:, None])))
    return grid[np.argmin(cost, axis=1)] * steps


def embed(image: np.ndarray, bits: np.ndarray, key: bytes, spec: MarkSpec = DEFAULT, iterations: int = 200,
          rounds: int = 3) -> np.ndarray:
    """(H, W, C) uint8 -> the same with `bits` (a frame) embedded, the same change in every channel (hues keep).

    The change is the smallest that puts every projection on its target while every pixel stays in
    0..255 (Dykstra's alternating projections): digits are mostly pure black and white, where half of any
    plain +-pattern would be clipped away and the rest would have to be louder. The sync targets then
    take `rounds` of anticipated shifts (_anticipated_shift): clipping makes a resize's effect move a
    little with the mark, so it is measured again on each result."""
    if image.dtype != np.uint8:
        raise DataError(f"watermarks are embedded in uint8 images, got {image.dtype}")
    h, w = image.shape[:2]
    lay = _layout(key, h, w, spec)
    x = image.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    lo, hi = -x.min(axis=-1), 255.0 - x.max(axis=-1)  # the luma change d must keep every channel in range
    luma = _luma(x)

    def project(d: np.ndarray) -> np.ndarray:
        return lay.patterns @ dctn(luma + d, norm="ortho")[lay.rows, lay.cols]

    def onto_targets(d: np.ndarray, target: np.ndarray) -> np.ndarray:  # orthogonal projection onto {project = target}
        coef = np.zeros((h, w))
        coef[lay.rows, lay.cols] = lay.patterns.T @ (target - project(d))
        return d + idctn(coef, norm="ortho")

    def solve(target: np.ndarray) -> np.ndarray:
        d, p, q = np.zeros((h, w)), np.zeros((h, w)), np.zeros((h, w))
        for _ in range(iterations):
            a = onto_targets(d + p, target)
            p = d + p - a
            d_next = np.clip(a + q, lo, hi)
            q = a + q - d_next
            if np.abs(d_next - d).max() < 0.05:
                d = d_next
                break
            d = d_next
        for _ in range(5):  # rounding to integers moves the projections a little: settle them
            d = np.clip(np.round(d), lo, hi)
            if np.abs(target - project(d)).max() < spec.step / 50:
                break
            d = np.clip(onto_targets(d, target), lo, hi)
        return d

    def marked(d: np.ndarray) -> np.ndarray:
        out = np.clip(np.round(x + d[..., None]), 0, 255).astype(np.uint8)
        return out[..., 0] if image.ndim == 2 else out

    k = spec.sync_bits
    offset = lay.dither + _coded(lay, bits) * lay.steps / 2
    s = project(np.zeros((h, w)))
    target = offset + lay.steps * np.round((s - offset) / lay.steps)  # nearest lattice point of each coded bit
    d = solve(target)  # from zero each time: Dykstra finds the feasible change nearest its start
    for _ in range(rounds):
        shift = _anticipated_shift(lay, marked(d), target, k, spec)
        target = target.copy()
        target[:k] = shift + offset[:k] + lay.steps[:k] * np.round((s[:k] - shift - offset[:k]) / lay.steps[:k])
        d = solve(target)
    return marked(d)


def read(image: np.ndarray, key: bytes, spec: MarkSpec = DEFAULT) -> Reading:
    """Detect and decode. Detection: z = sum of cos(lattice phase) over the projections / sqrt(M/2), ~N(0, 1)
    on an unmarked image, over the sync projections and over all of them; the best of these and of the
    equalisers is kept and its p-value multiplied by their number (Bonferroni). The bits come from the
    equaliser whose statistic over all projections is best: the sync alone fits resampled readings too
    (the embedder anticipates them), while the payload tells which reading it survives."""
    h, w = image.shape[:2]
    lay = _layout(key, h, w, spec)
    band = dctn(_luma(image), norm="ortho")[lay.rows, lay.cols]
    k = spec.sync_bits
    z, equalisers, decode = -math.inf, _equalisers(h, w, spec.radius), None
    for name, eq in equalisers:
        phase = (lay.patterns @ (eq @ band) - lay.dither) / lay.steps  # bit 0 sits on integers, bit 1 on halves
        sync = np.cos(2 * np.pi * (phase[:k] - lay.sync / 2)).sum()
        full = (sync + np.cos(4 * np.pi * phase[k:]).sum()) / math.sqrt(len(phase) / 2)  # payload: either bit
        z = max(z, sync / math.sqrt(k / 2), full)  # the sync alone outlasts the payload under noise
        if decode is None or full > decode[0]:
            decode = (full, name, np.cos(2 * np.pi * phase[k:]).reshape(lay.repeats, spec.frame_bits).sum(0))
    _, name, soft = decode
    bits = (soft < 0).astype(np.int64)  # soft > 0: bit 0
    p = min(1.0, 2 * len(equalisers) * 0.5 * math.erfc(z / math.sqrt(2)))
    _, _, ok = unframe(bits, spec)
    return Reading(p <= spec.p_threshold, p, float(z), bits, ok, name)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
