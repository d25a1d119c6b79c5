"""genforge's image families against two peers on the built-in digits, scored by genforge's own evaluator.

    .venv/bin/python benchmarks/bench_peers_digits.py --write                  # 15 min per peer -> results/peers_digits.md
    .venv/bin/python benchmarks/bench_peers_digits.py --runs RUN_A RUN_B ...   # adds genforge runs' rows and FD ratios
    .venv/bin/python benchmarks/bench_peers_digits.py --quick                  # a smoke run of every code path (minutes)
    .venv/bin/python benchmarks/bench_peers_digits.py --peers diffusers-ddpm --ddpm-lr 2e-3 --ddpm-warmup 100
        # the DDPM alone with genforge's own LR and warm-up: at the example's 1e-4 with 500 warm-up steps a
        # 15-minute run (~600 steps) barely leaves its warm-up, and its samples are noise

The peers, each trained for the same wall-clock minutes on the same cores (`--minutes`, `--threads`):
- `diffusers-ddpm`: Hugging Face `UNet2DModel` with the layout of genforge's diffusion-digits UNet (same widths,
  blocks, attention, groups, head size: an equal parameter count), class-conditional with 10 class
  embeddings (no "no label" class, so no guidance), at 28x28 directly (3 levels = 2 downsamplings,
  28 -> 14 -> 7, as genforge does; no padding). Trained the way diffusers' `train_unconditional.py`
  example trains: `DDPMScheduler` (1000 steps, linear betas), MSE on epsilon, AdamW (lr 1e-4, betas
  0.95/0.999, weight decay 1e-6), grad-norm clipping at 1.0, 500 warm-up steps then a cosine LR,
  `EMAModel` (max decay 0.9999, warm-up, inv_gamma 1, power 3/4) as its documented command
  (`--use_ema`) runs it. Sampled from the EMA weights with `DDIMScheduler` (from the DDPM config),
  50 steps, eta 0.
- `dcgan`: the pytorch/examples `dcgan/main.py` networks (nz 100, ngf = ndf = 64, BatchNorm, 64x64
  output, 1 channel as its MNIST mode) and loop (BCE, Adam lr 2e-4, beta1 0.5, batch 64), on the
  digits resized to 64x64 (bilinear, as its `transforms.Resize(64)`). Unconditional, so conditional
  accuracy does not apply. Samples are made as the example makes them (BatchNorm in training mode,
  batches of 64) and resized to 28x28 (bicubic with antialiasing) for scoring; a reference row
  scores real digits through the same 28 -> 64 -> 28 resizing, so its cost is visible.

What is ours and not the examples': a wall-clock budget instead of epochs (the cosine LR follows each
peer's own clock, as genforge's trainer does with `train.minutes`), the peers trained in alternating
slices (`--slice-s`) so that load from other processes falls on both alike, and no data loader
(the digits are one tensor in memory for everyone).

Scoring is `genforge evaluate`'s: `ImageReference.for_dataset(dataset).score(images, requested, seed)`
against the train split, the real row a seeded subset of n held-out (val) images chosen as
`evaluate_run` chooses it. genforge's rows come from `runs/<id>/eval/metrics.json` (`genforge evaluate`
with the same `--n` and `--seed`); train them with `train.minutes` equal to `--minutes`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

try:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
except ImportError:
    sys.exit("diffusers is missing: install the benchmark extra with `bash scripts/setup.sh bench`")

from genforge.config import read_yaml
from genforge.data.store import Dataset, open_dataset
from genforge.evaluation.pipeline import ImageReference
from genforge.models import diffusion as gd
from genforge.models import to_uint8, to_unit
from genforge.runs import resolve_run
from genforge.workspace import atomic_write_text

try:  # bench_diffusion's record of the machine: lscpu model, cores, versions, git commit, load average
    from bench_diffusion import machine
except Exception as e:  # it imports much of genforge's training code; while that moves, keep the essentials
    _why = f"bench_diffusion.machine unavailable ({e})"

    def machine(device: torch.device) -> dict[str, Any]:
        from importlib.metadata import version
        return {"cpu": "?", "cores": os.cpu_count(), "versions": {p: version(p) for p in ("torch", "diffusers", "genforge")},
                "git_commit": "?", "threads": torch.get_num_threads(), "load_avg_before": os.getloadavg(), "note": _why}

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "peers_digits.md"
OUT = ROOT / "out" / "peers_digits"
QUICKSTART = ROOT.parent / "configs" / "diffusion-digits.yaml"  # the UNet the diffusers peer matches
GENFORGE_UNET_PARAMS = 2_736_353  # measured: diffusion-digits UNet, 1 channel, 10 classes (used if it cannot be built)
CLASSES = 10
PEERS_OF = {"diffusion": ("diffusers-ddpm",), "gan": ("dcgan",), "vae": ("diffusers-ddpm", "dcgan")}
TARGET = 2.0  # each genforge family at least this many times closer to the real row in FD than its peer


# ----------------------------------------------------------------------------- data

def load_digits() -> Dataset:
    """The workspace's `digits` dataset, ingested from the built-in source on first use."""
    try:
        return open_dataset("digits")
    except Exception:  # genforge's DataError when missing; ingest is idempotent anyway
        from genforge.data.ingest import ingest
        ingest("builtin:digits", "digits")
        return open_dataset("digits")


class Batches:
    """Shuffled epochs over tensors held in memory, with the peer's own generator (reproducible)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, seed: int):
        self.images, self.labels, self.batch = images, labels, batch
        self.g = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(images), generator=self.g), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > len(self.order):  # drop the ragged tail, start a new epoch
            self.order, self.pos = torch.randperm(len(self.images), generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.images[idx], self.labels[idx]


# ----------------------------------------------------------------------------- peer 1: diffusers DDPM

def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def diffusion_config() -> gd.Config:
    return gd.Config(**read_yaml(QUICKSTART)["model"])


def genforge_unet_params() -> tuple[int, str]:
    """Parameters of genforge's diffusion-digits UNet at 28x28x1 with 10 classes: the size the peer must match."""
    try:
        return n_params(gd.UNet(diffusion_config(), 1, CLASSES)), "built from configs/diffusion-digits.yaml"
    except Exception as e:  # the UNet's signature may move while others work on it
        return GENFORGE_UNET_PARAMS, f"hard-coded (building it failed: {type(e).__name__}: {e})"


def ddpm_unet(cfg: gd.Config) -> UNet2DModel:
    """UNet2DModel with the diffusion-digits UNet's layout (as bench_diffusion maps it), 28x28x1, 10 class embeddings.

    28 pixels need no padding: 3 levels downsample twice (28 -> 14 -> 7), as genforge's UNet does.
    genforge keeps an 11th "no label" embedding for guidance; the peer has none (one row of 128 fewer).
    """
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.blocks, down_block_types=down,
        up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)), norm_num_groups=cfg.groups,
        attention_head_dim=cfg.head_dim, add_attention=cfg.mid_attention, dropout=cfg.dropout,
        num_class_embeds=CLASSES)


class DDPMPeer:
    """diffusers' example training loop, one optimisation step at a time."""

    name, conditional = "diffusers-ddpm", True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace):
        torch.manual_seed(args.seed)
        self.unet = ddpm_unet(diffusion_config())
        self.params = n_params(self.unet)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=args.ddpm_lr, betas=(0.95, 0.999),
                                     weight_decay=1e-6, eps=1e-8)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        self.base_lr, self.warmup = args.ddpm_lr, args.ddpm_warmup
        self.data = Batches(images, labels, args.batch, args.seed)
        self.g = torch.Generator().manual_seed(args.seed + 1)
        self.steps, self.spent_s, self.budget_s = 0, 0.0, args.minutes * 60

    def lr(self) -> float:
        """Linear warm-up over steps, then cosine to zero over the peer's own share of the clock."""
        progress = min(self.spent_s / self.budget_s, 1.0)
        return self.base_lr * min(1.0, (self.steps + 1) / self.warmup) * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self) -> float:
        self.unet.train()
        x, y = self.data.next()
        clean = to_unit(x)  # (B, 1, 28, 28) in [-1, 1]
        noise = torch.randn(clean.shape, generator=self.g)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(clean),), generator=self.g)
        pred = self.unet(self.scheduler.add_noise(clean, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        return float(loss.detach())

    @torch.no_grad()
    def sample(self, n: int, labels: np.ndarray | None, seed: int, batch: int, steps: int) -> np.ndarray:
        """DDIM from the EMA weights, eta 0: all the noise is drawn up front from the seed."""
        self.ema.copy_to(self.unet.parameters())
        self.unet.eval()
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(steps)
        noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
        y = torch.from_numpy(labels)
        out = []
        for i in range(0, n, batch):
            x, yb = noise[i:i + batch], y[i:i + batch]
            for t in ddim.timesteps:
                eps = self.unet(x, t, class_labels=yb).sample
                x = ddim.step(eps, t, x, eta=0.0).prev_sample
            out.append(to_uint8(x))
        return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- peer 2: PyTorch-examples DCGAN

NZ, NGF, NDF, GAN_SIZE = 100, 64, 64, 64


def to_64(x: torch.Tensor) -> torch.Tensor:
    """28 -> 64 as the example's `transforms.Resize(64)` (bilinear) does for MNIST."""
    return F.interpolate(x, size=GAN_SIZE, mode="bilinear", align_corners=False)


def to_28(x: torch.Tensor) -> torch.Tensor:
    """64 -> 28 for scoring. Bicubic with antialiasing: of the antialiased resizes it costs real digits the
    least (evaluator FD of 1000 val images: 0.23 as they are, 0.68 via 64x64 bicubic, 1.54 area, 1.67 bilinear)."""
    return F.interpolate(x, size=28, mode="bicubic", align_corners=False, antialias=True)


def dcgan_init(m: nn.Module) -> None:
    """The example's init: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales, zero shifts."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def dcgan_generator(nc: int = 1) -> nn.Sequential:
    def up(cin: int, cout: int, stride: int, pad: int) -> list[nn.Module]:
        return [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    return nn.Sequential(
        *up(NZ, NGF * 8, 1, 0),         # (B, 512, 4, 4)
        *up(NGF * 8, NGF * 4, 2, 1),    # (B, 256, 8, 8)
        *up(NGF * 4, NGF * 2, 2, 1),    # (B, 128, 16, 16)
        *up(NGF * 2, NGF, 2, 1),        # (B, 64, 32, 32)
        nn.ConvTranspose2d(NGF, nc, 4, 2, 1, bias=False), nn.Tanh())  # (B, nc, 64, 64)


def dcgan_discriminator(nc: int = 1) -> nn.Sequential:
    def down(cin: int, cout: int, norm: bool) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), *([nn.BatchNorm2d(cout)] if norm else []),
                nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(
        *down(nc, NDF, False),          # (B, 64, 32, 32)
        *down(NDF, NDF * 2, True),      # (B, 128, 16, 16)
        *down(NDF * 2, NDF * 4, True),  # (B, 256, 8, 8)
        *down(NDF * 4, NDF * 8, True),  # (B, 512, 4, 4)
        nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(), nn.Flatten(0))  # (B,)


class DCGANPeer:
    """pytorch/examples dcgan/main.py's loop: D on real then fake, G against D's updated view."""

    name, conditional = "dcgan", False

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace):
        torch.manual_seed(args.seed)
        self.G, self.D = dcgan_generator(), dcgan_discriminator()
        self.G.apply(dcgan_init)
        self.D.apply(dcgan_init)
        self.params = n_params(self.G)
        self.params_d = n_params(self.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.bce = nn.BCELoss()
        self.data = Batches(images, labels, args.batch, args.seed)
        self.g = torch.Generator().manual_seed(args.seed + 1)
        self.steps, self.spent_s, self.budget_s = 0, 0.0, args.minutes * 60

    def step(self) -> float:
        self.G.train(), self.D.train()
        x, _ = self.data.next()
        real = to_64(to_unit(x))  # (B, 1, 64, 64)
        ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
        # 1. D: maximise log D(x) + log(1 - D(G(z)))
        self.D.zero_grad()
        err_real = self.bce(self.D(real), ones)
        err_real.backward()
        fake = self.G(torch.randn(len(real), NZ, 1, 1, generator=self.g))
        err_fake = self.bce(self.D(fake.detach()), zeros)
        err_fake.backward()
        self.opt_d.step()
        # 2. G: maximise log D(G(z)) (the non-saturating loss)
        self.G.zero_grad()
        err_g = self.bce(self.D(fake), ones)
        err_g.backward()
        self.opt_g.step()
        return float(err_g.detach())

    @torch.no_grad()
    def sample(self, n: int, labels: np.ndarray | None, seed: int, batch: int, steps: int) -> np.ndarray:
        """As the example samples: BatchNorm on batch statistics (training mode), batches of 64; then 64 -> 28."""
        self.G.train()
        z = torch.randn((n, NZ, 1, 1), generator=torch.Generator().manual_seed(seed))
        out = [self.G(z[i:i + 64]) for i in range(0, n, 64)]
        return to_uint8(to_28(torch.cat(out))).numpy()


# ----------------------------------------------------------------------------- training and scoring

def train_interleaved(peers: list, slice_s: float) -> None:
    """Every peer gets its own budget of wall seconds, spent in alternating slices (A, B, A, B, ...)."""
    while any(p.spent_s < p.budget_s for p in peers):
        for p in peers:
            if p.spent_s >= p.budget_s:
                continue
            slice_end = min(p.spent_s + slice_s, p.budget_s)
            while p.spent_s < slice_end:
                t0 = time.perf_counter()
                loss = p.step()
                p.spent_s += time.perf_counter() - t0
                p.steps += 1
            print(f"  {p.name:<15} step {p.steps:6d}  {p.spent_s / 60:5.2f} / {p.budget_s / 60:.2f} min  "
                  f"loss {loss:.4f}  load {os.getloadavg()[0]:.1f}", flush=True)


def save_grid(images: np.ndarray, path: Path, cols: int = 10) -> None:
    """uint8 (N, 1, H, W) -> one PNG, `cols` per row (class i % 10 in column i for the conditional peer)."""
    n, _, h, w = images.shape
    grid = np.zeros((math.ceil(n / cols) * h, cols * w), np.uint8)
    for i, im in enumerate(images):
        grid[i // cols * h:(i // cols + 1) * h, i % cols * w:(i % cols + 1) * w] = im[0]
    Image.fromarray(grid).save(path)


def real_row(dataset: Dataset, reference: ImageReference, n: int, seed: int) -> dict[str, Any]:
    """The held-out reference row, the same seeded subset `evaluate_run` takes at this n and seed."""
    real, labels = dataset.images("val")
    keep = np.sort(np.random.default_rng(seed).permutation(len(real))[:n])
    return {"name": "real held-out (val)", "kind": "reference", **reference.score(real[keep], labels[keep], seed)}


def resized_real_row(dataset: Dataset, reference: ImageReference, n: int, seed: int) -> dict[str, Any]:
    """The real row through the DCGAN's 28 -> 64 -> 28 resizing: what the resizing alone costs it."""
    real, labels = dataset.images("val")
    keep = np.sort(np.random.default_rng(seed).permutation(len(real))[:n])
    big = to_64(to_unit(torch.from_numpy(real[keep])))
    back = to_uint8(to_28(big)).numpy()
    return {"name": "real via 64x64 (dcgan resize)", "kind": "reference", **reference.score(back, labels[keep], seed)}


def peer_row(peer, reference: ImageReference, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """Sample n images with a fixed seed (timed), then score them exactly as `genforge evaluate` does."""
    requested = (np.arange(args.n) % CLASSES).astype(np.int64) if peer.conditional else None
    t0 = time.perf_counter()
    images = peer.sample(args.n, requested, args.seed, args.sample_batch, args.ddim_steps)
    sample_s = time.perf_counter() - t0
    row = {"name": peer.name, "kind": "peer", "params": peer.params, "train_s": round(peer.spent_s, 1),
           "steps": peer.steps, "sample_img_s": args.n / sample_s,
           **reference.score(images, requested, args.seed)}
    return row, images


def genforge_rows(refs: list[str], n: int, dataset_ref: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The samples rows of genforge runs' `eval/metrics.json`, with the run's family; notes for what is missing."""
    rows, notes = [], []
    for ref in refs:
        try:
            path = resolve_run(ref)
        except Exception as e:
            notes.append(f"run {ref!r}: not found ({e})")
            continue
        metrics_path = path / "eval" / "metrics.json"
        if not metrics_path.is_file():
            notes.append(f"run {path.name}: no eval/metrics.json; run `genforge evaluate {path.name} --n {n}` first")
            continue
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
        m = json.loads(metrics_path.read_text(encoding="utf-8"))
        run_n = (m.get("options") or {}).get("n")
        if run_n != n:
            notes.append(f"run {path.name}: scored at n={run_n}, this table at n={n}; FD and KID depend on n")
        if m.get("dataset") != dataset_ref:
            notes.append(f"run {path.name}: scored on {m.get('dataset')}, the peers on {dataset_ref}")
        sampling_s = (m.get("timings") or {}).get("sampling_s")
        training = m.get("training") or {}
        for r in m.get("rows", []):
            if r.get("kind") == "samples":
                rows.append({**r, "kind": f"genforge {info.get('family', '?')}", "family": info.get("family"),
                             "params": training.get("params"), "train_s": training.get("wall_s"),
                             "steps": training.get("steps"),
                             "sample_img_s": run_n / sampling_s if run_n and sampling_s else None})
    return rows, notes


# ----------------------------------------------------------------------------- report

LEAD = ("name", "kind", "params", "train_s", "steps", "sample_img_s")
LEGACY = ("fd", "kid", "kid_std", "precision", "recall", "classifier_score", "class_coverage", "conditional_accuracy")


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """Rows scored before the evaluator figures were renamed `evaluator_*` read like rows after it."""
    return {(f"evaluator_{k}" if k in LEGACY and f"evaluator_{k}" not in row else k): v for k, v in row.items()}


def fd(row: dict[str, Any]) -> float | None:
    """The evaluator FD (under either name)."""
    return next((row[k] for k in ("evaluator_fd", "fd") if row.get(k) is not None), None)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table; the metric columns are whatever keys score() returned, in order of appearance."""
    keys = list(LEAD) + [k for r in rows for k in r if k not in LEAD and k != "family"]
    keys = list(dict.fromkeys(keys))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]], real_fd: float | None) -> tuple[str, list[dict[str, Any]]]:
    """peer FD / genforge FD per pair, and the same over the excess above the real row's FD."""
    peers = {r["name"]: r for r in rows if r["kind"] == "peer" and fd(r) is not None}
    found = []
    for r in rows:
        family, gen_fd = r.get("family"), fd(r)
        candidates = [peers[p] for p in PEERS_OF.get(family, ()) if p in peers]
        if not candidates or gen_fd is None:
            continue
        peer = min(candidates, key=fd)  # the better peer (the VAE's pair)
        ratio = fd(peer) / gen_fd if gen_fd > 0 else math.inf
        excess = ((fd(peer) - real_fd) / (gen_fd - real_fd) if real_fd is not None and gen_fd > real_fd else None)
        found.append({"genforge": r["name"], "family": family, "peer": peer["name"], "genforge_fd": gen_fd,
                      "peer_fd": fd(peer), "ratio": ratio, "excess_ratio": excess, "target_met": ratio >= TARGET})
    if not found:
        return "(no genforge rows to pair: pass `--runs` with evaluated diffusion / gan / vae runs)", found
    out = ["| genforge run | family | peer | genforge FD | peer FD | peer FD / genforge FD | "
           "(peer - real) / (genforge - real) | target >= 2 |", "|---|---|---|---:|---:|---:|---:|---|"]
    out += [f"| {p['genforge']} | {p['family']} | {p['peer']} | {p['genforge_fd']:.4g} | {p['peer_fd']:.4g} | "
            f"{p['ratio']:.2f} | {fmt(p['excess_ratio'])} | {'yes' if p['target_met'] else 'no'} |" for p in found]
    return "\n".join(out), found


def cpu_flags() -> dict[str, bool]:
    """bf16/AMX support decides whether bf16 pays off here; machine() does not record it."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return {}
    return {f: f in flags for f in ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")}


def write_results(text: str) -> None:
    """Append this run's section, so that quick looks and full runs sit side by side with their machines."""
    head = ("# genforge vs peers on the built-in digits\n\nEach section is one run of "
            "`benchmarks/bench_peers_digits.py --write` (see its docstring and `benchmarks/README.md`).\n")
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else head
    atomic_write_text(RESULTS, old.rstrip("\n") + "\n\n" + text)
    print(f"wrote {RESULTS}")


def load_note(load: float, cores: int) -> str:
    if load > max(1.5, 0.5 * cores):  # as bench_diffusion judges it: idle here reads 0-1
        return (f"load {load:.1f} before the run: other work shared the cores, which slows the peers unevenly and "
                "cuts their steps in the budget; rerun on an idle machine before quoting these figures")
    return "nothing else was running (load average about 1 or less)"


def section(results: dict[str, Any], tables: tuple[str, str], notes: list[str]) -> str:
    m, a, pr = results["machine"], results["args"], results["params"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items()) or "unknown"
    lines = [f"## {results['date']}: {a['minutes']} min per model, n = {a['n']}{' (quick: figures mean nothing)' if a['quick'] else ''}",
             "", f"`{results['command']}`", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores; {flags}; `torch.set_num_threads({a['threads']})`",
             f"- load average before / after: {' '.join(f'{x:.2f}' for x in m['load_avg_before'])} / "
             f"{' '.join(f'{x:.2f}' for x in results['load_avg_after'])}",
             f"- torch {m['versions']['torch']}, diffusers {m['versions']['diffusers']}, genforge "
             f"{m['versions']['genforge']} (commit {m['git_commit']}); dataset {results['dataset']}",
             f"- parameters: genforge diffusion-digits UNet {pr['genforge_unet']:,} ({pr['genforge_unet_source']})"
             + (f", diffusers UNet2DModel {pr['diffusers-ddpm']:,}" if "diffusers-ddpm" in pr else "")
             + (f", DCGAN G {pr['dcgan']:,} (+ D {pr['dcgan_d']:,})" if "dcgan" in pr else ""),
             f"- peers trained: {a['peers']}; diffusers DDPM AdamW lr {a['ddpm_lr']:g}, {a['ddpm_warmup']} warm-up steps",
             f"- sampling: diffusers DDIM-{a['ddim_steps']} batch {a['sample_batch']}, no guidance; DCGAN batches of 64",
             f"- {load_note(m['load_avg_before'][0], m['cores'])}",
             "- columns: train_s = wall seconds of training steps; sample_img_s = n / wall seconds to generate n; the "
             "evaluator figures are `ImageReference.score`'s; peer FD / genforge FD >= 2 is the target (the last "
             "column but one subtracts the real row's FD from both, as FD at finite n is not 0 even for real images)", "",
             tables[0], "", tables[1], ""]
    lines += [f"- note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training minutes per peer")
    p.add_argument("--n", type=int, default=1000, help="images scored per row (also the real row)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch", type=int, default=64, help="training batch for both peers")
    p.add_argument("--slice-s", type=float, default=30.0, help="seconds each peer trains before the other's turn")
    p.add_argument("--peers", default="diffusers-ddpm,dcgan",
                   help="comma-separated peers to train (one alone, e.g. to rerun it with other settings)")
    p.add_argument("--ddpm-lr", type=float, default=1e-4, help="diffusers example default")
    p.add_argument("--ddpm-warmup", type=int, default=500, help="LR warm-up steps (diffusers example default)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--sample-batch", type=int, default=64, help="DDIM batch (genforge evaluate's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="*", default=[], help="genforge run ids or paths (evaluated) to add and pair")
    p.add_argument("--quick", action="store_true", help="0.3 min per peer, n = 100: checks every path")
    p.add_argument("--write", action="store_true", help=f"append a section to {RESULTS.relative_to(ROOT.parent)}")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.n, args.slice_s = 0.3, 100, 6.0
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_peers_digits.py " + " ".join(sys.argv[1:])
    info = {**machine(torch.device("cpu")), "cpu_flags": cpu_flags()}
    print(json.dumps(info))
    if info["load_avg_before"][0] > 1.5:
        print(f"warning: load average {info['load_avg_before'][0]:.1f} before the run; other work shares the cores")

    # 1. data and the evaluator (trained once per dataset version, then cached in the workspace)
    dataset = load_digits()
    images, labels = dataset.images("train")
    t0 = time.perf_counter()
    reference = ImageReference.for_dataset(dataset)
    print(f"dataset {dataset.ref}: {len(images)} train images; evaluator ready in {time.perf_counter() - t0:.1f} s")
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    # 2. the peers, trained for the same minutes in alternating slices
    g_params, g_source = genforge_unet_params()
    kinds = {c.name: c for c in (DDPMPeer, DCGANPeer)}
    names = [n for n in args.peers.split(",") if n]
    if not names or set(names) - set(kinds):
        sys.exit(f"--peers: choose from {', '.join(kinds)}, got {args.peers!r}")
    peers = [kinds[n](x, y, args) for n in names]
    params = {p.name: p.params for p in peers} | {"dcgan_d": p.params_d for p in peers if p.name == "dcgan"}
    print(f"parameters: genforge UNet {g_params:,} ({g_source}); peers {params}")
    print(f"training each peer for {args.minutes} min, slices of {args.slice_s:.0f} s")
    train_interleaved(peers, args.slice_s)

    # 3. sample and score, beside the real row and genforge's runs
    rows = [real_row(dataset, reference, args.n, args.seed), resized_real_row(dataset, reference, args.n, args.seed)]
    OUT.mkdir(parents=True, exist_ok=True)
    for peer in peers:
        row, samples = peer_row(peer, reference, args)
        rows.append(row)
        save_grid(samples[:100], OUT / f"{peer.name}.png")
    run_rows, notes = genforge_rows(args.runs, args.n, dataset.ref)
    rows = [normalise(r) for r in rows + run_rows]
    main_table = table(rows)
    ratio_table, pairs = ratios(rows, fd(rows[0]))
    if any(r["name"] == "dcgan" for r in rows):
        notes.append("dcgan is unconditional: conditional accuracy does not apply")
    print("\n" + main_table + "\n\n" + ratio_table + "\n")
    for n in notes:
        print("note:", n)
    print(f"sample grids: {OUT}")

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
               "machine": info, "load_avg_after": os.getloadavg(), "args": vars(args), "dataset": dataset.ref,
               "evaluator": reference.evaluator.meta if reference.evaluator else None,
               "params": {"genforge_unet": g_params, "genforge_unet_source": g_source, **params},
               "rows": rows, "pairs": pairs}
    if args.write:
        raw = "```json\n" + json.dumps(results, indent=1, default=str) + "\n```\n"
        write_results(section(results, (main_table, ratio_table), notes) + "\n<details><summary>raw</summary>\n\n" + raw + "\n</details>\n")


if __name__ == "__main__":
    main()
