"""Image ingest at scale: throughput and peak memory on a generated folder of 50,000 images.

    python benchmarks/bench_ingest.py --write       # 10,000 and 50,000 images -> benchmarks/results/ingest.md
    python benchmarks/bench_ingest.py --n 2000      # a quick look: figures printed, results file left alone

The folder is generated once under benchmarks/out/ (ignored by git) and reused: PNG and JPEG,
64 to 256 px a side, 10 classes, with planted exact copies (2%), resized and re-compressed JPEG
copies (2%) and truncated files (0.1%), so the run also checks what cleaning finds at scale.
Peak RSS is sampled every 50 ms over this process and all its children (the decoding pool) and
summed; shared pages count once per process, so the sum overestimates the real footprint.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
RESULTS = ROOT / "results" / "ingest.md"
CLASSES = 10


# ---- the folder -------------------------------------------------------------------------


def synth(i: int) -> tuple[Image.Image, int]:
    """Image i and its class: a class-tinted gradient with random shapes, 64..256 px a side."""
    rng = np.random.default_rng(i)
    label = i % CLASSES
    w, h = (int(v) for v in rng.integers(64, 257, 2))
    tint = np.array([(label * 25) % 256, (label * 70) % 256, (255 - label * 25) % 256])
    c0, c1 = (tint + rng.integers(-60, 60, 3)).clip(0, 255), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    im = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(h, 0).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            d.ellipse(box, fill=fill)
        elif shape == 1:
            d.rectangle(box, fill=fill)
        else:
            d.line(box, fill=fill, width=int(rng.integers(2, 8)))
    return im, label


def encode(im: Image.Image, jpeg: bool, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality) if jpeg else im.save(buf, "PNG")
    return buf.getvalue()


def write_one(args: tuple[Path, int]) -> str:
    """Write image i (or the planted copy / broken file at i); returns what was planted."""
    folder, i = args
    rng = np.random.default_rng(10_000_000 + i)
    if i % 50 == 49 or i % 50 == 24:  # a copy of the image before it, in the same class folder
        src, label = synth(i - 1)
        if i % 50 == 49:  # encoded exactly as its source was: the same bytes
            jpeg = (i - 1) % 2 == 1
            data, kind, suffix = encode(src, jpeg, 90), "exact", "jpg" if jpeg else "png"
        else:
            s = float(rng.choice([0.5, 0.75, 1.5]))
            small = src.resize((max(8, int(src.width * s)), max(8, int(src.height * s))), Image.Resampling.BICUBIC)
            data, kind, suffix = encode(small, True, int(rng.integers(70, 95))), "near", "jpg"
    else:
        im, label = synth(i)
        jpeg = i % 2 == 1
        data, kind, suffix = encode(im, jpeg, 90), "image", "jpg" if jpeg else "png"
        if i % 1000 == 500:
            data, kind = data[: len(data) // 2], "broken"
    path = folder / f"class_{label}" / f"{i:06d}.{suffix}"
    path.write_bytes(data)
    return kind


def planted_kind(name: str) -> str:
    """What write_one put at this path: image, exact, near or broken."""
    i = int(Path(name).stem)
    return "exact" if i % 50 == 49 else "near" if i % 50 == 24 else "broken" if i % 1000 == 500 else "image"


def make_folder(n: int) -> tuple[Path, dict[str, int]]:
    folder = OUT / f"images-{n}"
    done = folder / ".complete.json"  # hidden: the ingest skips it
    if done.exists():
        return folder, json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True)
    t0 = time.perf_counter()
    with mp.Pool() as pool:
        kinds = pool.map(write_one, [(folder, i) for i in range(n)], chunksize=256)
    planted = {k: kinds.count(k) for k in ("image", "exact", "near", "broken")}
    done.write_text(json.dumps(planted))
    print(f"generated {n} images in {time.perf_counter() - t0:.0f} s: {planted}", flush=True)
    return folder, planted


# ---- measuring --------------------------------------------------------------------------


class PeakRss:
    """Peak of (this process + all children) RSS, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.total, self.main = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.total, self.main = max(self.total, total), max(self.main, me.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_ingest(folder: Path, name: str, overrides: list[str]) -> dict:
    from genforge.config import load_config
    from genforge.data.ingest import ingest
    from genforge.data.options import IngestConfig

    cfg = load_config(IngestConfig, None, overrides)
    base = psutil.Process().memory_info().rss
    load0 = os.getloadavg()[0]
    cpu0 = psutil.cpu_times()
    with PeakRss() as peak:
        t0 = time.perf_counter()
        res = ingest(str(folder), name, cfg)
        seconds = time.perf_counter() - t0
    cpu1 = psutil.cpu_times()
    busy = lambda t: t.user + t.system + t.nice  # noqa: E731
    m = res.manifest
    data_bytes = sum(f["bytes"] for f in m.files)
    return {
        "images_in": m.counts["input"], "kept": m.counts["kept"], "seconds": round(seconds, 1),
        "images_per_s": round(m.counts["input"] / seconds, 1),
        "peak_rss_total_mib": round(peak.total / 2**20), "peak_rss_main_mib": round(peak.main / 2**20),
        "rss_before_mib": round(base / 2**20), "dataset_mib": round(data_bytes / 2**20, 1),
        "machine_cpu_busy_share": round((busy(cpu1) - busy(cpu0)) / (psutil.cpu_count() * seconds), 2),
        "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "counts": {k: m.counts[k] for k in ("skipped", "exact_duplicates", "near_duplicates", "per_class")},
        "found_by_planted_kind": {key: _tally(planted_kind(e["item"]) for e in m.cleaning[key])
                                  for key in ("skipped", "exact_duplicates", "near_duplicates")},
        "split": m.split["sizes"], "version": m.version, "gate_passed": m.gate["passed"],
        "config": {k: m.config["image"][k] for k in ("size", "chunk_size", "workers", "near_duplicate_hamming", "near_duplicate_max_rmse")},
    }


def _tally(kinds) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return out


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu, "cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("genforge", "numpy", "pillow", "imagehash", "scipy", "safetensors")},
        "git_commit": commit,
    }


def to_markdown(info: dict, runs: list[dict], planted: dict[str, int]) -> str:
    lines = [
        "# Image ingest benchmark",
        "",
        f"Made by `{info['command']}`: a generated folder (PNG and JPEG, 64-256 px, 10 classes,",
        "planted duplicates and truncated files) ingested with the default config (32x32, workers = all cores).",
        "Peak RSS sums this process and every child (the decoding pool); shared pages are counted once per",
        "process, so it overstates the real footprint. `machine CPU busy` is the whole machine's CPU use during",
        "the run (other users included): on a shared machine the figures are a lower bound.",
        "",
        "| images | kept | seconds | images/s | peak RSS, all processes (MiB) | peak RSS, main (MiB) | RSS before (MiB) | dataset (MiB) | machine CPU busy | load avg before/after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(f"| {r['images_in']:,} | {r['kept']:,} | {r['seconds']} | {r['images_per_s']} | {r['peak_rss_total_mib']} | "
                     f"{r['peak_rss_main_mib']} | {r['rss_before_mib']} | {r['dataset_mib']} | {r['machine_cpu_busy_share']:.0%} | "
                     f"{r['load_avg_1min_before']} / {r['load_avg_1min_after']} |")
    big = runs[-1]
    found = big["found_by_planted_kind"]
    near_other = {k: v for k, v in found["near_duplicates"].items() if k != "near"}
    lines += [
        "",
        f"Cleaning on the {big['images_in']:,}-image folder, planted vs found: truncated files {planted['broken']} planted, "
        f"{found['skipped'].get('broken', 0)} of them skipped ({big['counts']['skipped']} skipped in all); exact copies "
        f"{planted['exact']} planted, {found['exact_duplicates'].get('exact', 0)} found ({big['counts']['exact_duplicates']} in all); "
        f"resized and re-compressed JPEG copies {planted['near']} planted, {found['near_duplicates'].get('near', 0)} found as "
        f"near-duplicates, plus {sum(near_other.values())} other near-duplicate pairs ({near_other}): distinct generated images "
        "that look alike once centre-cropped to a square (e.g. two plain gradients).",
        "",
        "## Machine",
        "",
        "```json",
        json.dumps(info, indent=2),
        "```",
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps({"planted": planted, "runs": runs}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000], help="folder sizes to ingest (the largest is generated)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="ingest config override a.b=value")
    ap.add_argument("--write", action="store_true", help="rewrite benchmarks/results/ingest.md with these figures")
    args = ap.parse_args()

    os.environ["GENFORGE_HOME"] = str(OUT / "workspace")
    shutil.rmtree(OUT / "workspace", ignore_errors=True)
    big, planted = make_folder(max(args.n))
    runs = []
    for n in sorted(args.n):
        folder = big
        if n < max(args.n):  # the first n files of the big folder, hard-linked: no second generation
            folder = OUT / f"images-{max(args.n)}-first-{n}"
            if not folder.exists():
                for p in sorted(big.glob("class_*/*"), key=lambda p: p.name)[:n]:
                    (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
                    os.link(p, folder / p.parent.name / p.name)
        r = run_ingest(folder, f"bench{n}", args.overrides)
        print(json.dumps(r), flush=True)
        runs.append(r)
    shutil.rmtree(OUT / "workspace", ignore_errors=True)
    if args.write:
        from genforge.workspace import atomic_write_text

        info = {"command": " ".join(["python", "benchmarks/bench_ingest.py", *sys.argv[1:]]), **machine()}
        atomic_write_text(RESULTS, to_markdown(info, runs, planted))
        print(f"results: {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
