"""genforge's diffusion UNet against Hugging Face diffusers, in one run: training and DDIM-50 sampling speed.

    bash scripts/setup.sh bench                                    # installs the `bench` extra (diffusers)
    .venv/bin/python benchmarks/bench_diffusion.py --write         # -> benchmarks/results/diffusion.md
    .venv/bin/python benchmarks/bench_diffusion.py --quick         # a smoke run of every code path (seconds)
    .venv/bin/python benchmarks/bench_diffusion.py --device cuda   # on a GPU (same rows; bf16 rows use tensor cores)

Both networks are the same DDPM UNet at an equal parameter count: genforge's `UNet` is built from a
model config (genforge's defaults, or the `model:` section of `--config`), and `diffusers.UNet2DModel`
is given the same widths, blocks per level, attention levels, GroupNorm groups, head size and class
embedding, so the counts match (checked: the run stops if they differ by more than 10%).

Each contender runs the step its users run:
- genforge: the trainer's own pieces (`devices.place`, `devices.autocast`, `optim.make_optimizers` (fused
  AdamW), `optim.Optimizers` (backward, grad-norm clipping, step)) around the family's `train_step`;
  sampling is the family's `sample` (DDIM, eta 0) under the run's autocast, as `genforge generate` does.
- diffusers: the loop of its `train_unconditional.py` example (`DDPMScheduler.add_noise`, MSE on
  epsilon, `torch.optim.AdamW`, `clip_grad_norm_(1.0)`), and DDIM with `DDIMScheduler.step` under
  `torch.no_grad()`, classifier-free guidance done as its pipelines do (one batch of 2B).

Rows are timed A/B/A/B: every repetition runs each contender once, in a rotated order, so load from
other processes on a shared machine falls on all of them alike; the figure is the median over
repetitions, warm-up excluded. The quality check runs genforge's fp32 NCHW path and its faster
settings on the same weights and noise and reports the relative error of the network outputs and
of the DDIM samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import read_yaml
from genforge.models import Batch, DataSpec, SampleRequest, item_generators, to_uint8, to_unit
from genforge.models import diffusion as gd
from genforge.devices import autocast, place
from genforge.optim import Optimizers, make_optimizers
from genforge.runconfig import parse_run_config
from genforge.workspace import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "diffusion.md"

try:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
except ImportError:
    sys.exit("diffusers is missing: install the benchmark extra with `bash scripts/setup.sh bench` "
             "(or `pip install -e '.[bench]'` in a venv that already has torch)")


@dataclass(frozen=True)
class Setting:
    """How a network runs: float32 or bf16 autocast, NCHW or channels-last."""

    precision: str  # fp32 | bf16
    channels_last: bool

    @property
    def label(self) -> str:
        return f"{self.precision} {'channels-last' if self.channels_last else 'NCHW'}"


@dataclass
class Contender:
    name: str  # the row label
    lib: str  # genforge | diffusers
    setting: Setting
    train_step: Callable[[], None]
    sample: Callable[[int], None]  # one batch with this many DDIM steps
    train_s: list[float] = field(default_factory=list)  # wall seconds per timed block of steps
    sample_s: list[float] = field(default_factory=list)  # wall seconds per DDIM batch
    train_cpu_s: list[float] = field(default_factory=list)  # this process's CPU seconds, same blocks
    sample_cpu_s: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- the two networks

def genforge_config(path: str | None) -> gd.Config:
    if path is None:
        return gd.Config(family="diffusion")
    return gd.Config(**read_yaml(path)["model"])


def diffusers_unet(cfg: gd.Config, spec: DataSpec) -> UNet2DModel:
    """diffusers' UNet2DModel with genforge's layout: the same levels, widths, blocks and attention."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    return UNet2DModel(
        sample_size=spec.height, in_channels=spec.channels, out_channels=spec.channels,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.blocks,
        down_block_types=down, up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
        norm_num_groups=cfg.groups, attention_head_dim=cfg.head_dim, add_attention=cfg.mid_attention,
        dropout=cfg.dropout, num_class_embeds=spec.num_classes + 1 if spec.num_classes else None)


def diffusers_schedule(cfg: gd.Config) -> dict:
    """The DDPM/DDIM scheduler arguments that give genforge's noise schedule."""
    beta = "squaredcos_cap_v2" if cfg.schedule == "cosine" else "linear"
    return dict(num_train_timesteps=cfg.timesteps, beta_schedule=beta, prediction_type="epsilon")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def forward_flops(unet: nn.Module, spec: DataSpec, call: Callable) -> float:
    """FLOPs of one image's forward pass (torch's counter: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros(1, spec.channels, spec.height, spec.width)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        call(unet, x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    return float(fc.get_total_flops())


# ----------------------------------------------------------------------------- contenders

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def genforge_contender(cfg: gd.Config, spec: DataSpec, s: Setting, batch: Batch, noise: torch.Tensor,
                       args: argparse.Namespace, device: torch.device) -> Contender:
    torch.manual_seed(args.seed)
    modules = place(gd.build(cfg, spec, None), device, s.channels_last)
    run_config = parse_run_config({"data": {"dataset": "-"}, "model": cfg.model_dump(), "train": {
        "steps": 1, "batch_size": len(batch["images"]), "precision": s.precision, "channels_last": s.channels_last}})
    tc = run_config.train
    opt = Optimizers(make_optimizers(gd, run_config, modules, device), tc.grad_clip)
    labels = tuple(i % spec.num_classes for i in range(len(noise))) if spec.num_classes else None

    def train_step() -> None:
        modules["model"].train()
        with autocast(device, tc.precision):
            gd.train_step(modules, batch, opt, 0)

    def sample(steps: int) -> None:
        modules["model"].eval()
        options = gd.SampleConfig(sampler="ddim", steps=steps, eta=0.0, guidance=args.guidance)
        with torch.inference_mode(), autocast(device, tc.precision):
            gd.sample(modules, spec, None, SampleRequest.make(len(noise), args.seed, labels=labels), options)

    return Contender(f"genforge {s.label}", "genforge", s, train_step, sample)


def diffusers_contender(cfg: gd.Config, spec: DataSpec, s: Setting, batch: Batch, noise: torch.Tensor,
                        args: argparse.Namespace, device: torch.device) -> Contender:
    torch.manual_seed(args.seed)
    unet = diffusers_unet(cfg, spec).to(device)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    train_sched = DDPMScheduler(**diffusers_schedule(cfg))
    ddim = DDIMScheduler(**diffusers_schedule(cfg), clip_sample=True, set_alpha_to_one=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    K = spec.num_classes
    use_bf16 = s.precision == "bf16"

    def train_step() -> None:
        unet.train()
        clean = to_unit(batch["images"]).contiguous(memory_format=fmt)
        eps = torch.randn_like(clean)
        t = torch.randint(0, cfg.timesteps, (len(clean),), device=device)
        noisy = train_sched.add_noise(clean, eps, t)
        y = torch.where(torch.rand(len(clean), device=device) < cfg.cond_drop, K, batch["labels"]) if K else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = unet(noisy, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), eps.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def sample(steps: int) -> None:
        unet.eval()
        ddim.set_timesteps(steps)
        x = noise.to(device).contiguous(memory_format=fmt)
        guided = K and args.guidance != 1.0
        y = torch.arange(len(x), device=device) % K if K else None
        if guided:
            y = torch.cat([y, torch.full_like(y, K)])
        for t in ddim.timesteps:
            inp = torch.cat([x, x]) if guided else x
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = unet(inp, t, class_labels=y).sample.float()
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + args.guidance * (cond - uncond)
            x = ddim.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        to_uint8(x).cpu()

    return Contender(f"diffusers {s.label}", "diffusers", s, train_step, sample)


# ----------------------------------------------------------------------------- timing

def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of fn (CPU time: this process, all threads)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def run_interleaved(contenders: list[Contender], what: str, reps: int,
                    work: Callable[[Contender], Callable[[], None]], device: torch.device) -> None:
    """Rep r runs every contender once, starting at contender r (A B C, B C A, ...)."""
    n = len(contenders)
    for r in range(reps):
        for i in range(n):
            c = contenders[(r + i) % n]
            wall, cpu = timed(work(c), device)
            getattr(c, what + "_s").append(wall)
            getattr(c, what + "_cpu_s").append(cpu)
            print(f"  {what} rep {r + 1}/{reps}  {c.name:<32} {wall:7.2f} s wall {cpu:7.2f} s cpu  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)


def median_rate(seconds: list[float], items: int) -> tuple[float, float, float]:
    rates = [items / s for s in seconds]
    return statistics.median(rates), min(rates), max(rates)


# ----------------------------------------------------------------------------- quality

def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm())


def quality_check(cfg: gd.Config, spec: DataSpec, settings: list[Setting], args: argparse.Namespace,
                  device: torch.device) -> list[dict]:
    """genforge's fast settings against its fp32 NCHW path: the same weights, inputs and noise.

    Fresh weights would make every output exactly zero (the last conv of each block and of the
    network start at zero), so those layers get PyTorch's default init: every path contributes.
    """
    torch.manual_seed(args.seed + 1)
    ref_modules = gd.build(cfg, spec, None)
    for m in ref_modules["model"].modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    state = {k: v.clone() for k, v in ref_modules["model"].state_dict().items()}
    n = args.quality_n
    g = torch.Generator().manual_seed(args.seed + 2)
    x0 = torch.rand(n, spec.channels, spec.height, spec.width, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.linspace(0, cfg.timesteps - 1, n).round().long()
    y = torch.arange(n) % spec.num_classes if spec.num_classes else None
    noise = torch.randn(x0.shape, generator=g)
    options = gd.SampleConfig(sampler="ddim", steps=args.ddim_steps, eta=0.0, guidance=args.guidance)

    def outputs(s: Setting) -> tuple[torch.Tensor, torch.Tensor]:
        modules = gd.build(cfg, spec, None)
        modules["model"].load_state_dict(state, strict=False)
        model = place(modules, device, s.channels_last)["model"].eval()
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        a = model.abar.cpu()[t].view(-1, 1, 1, 1)
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * eps).to(device).contiguous(memory_format=fmt)
        with torch.inference_mode(), autocast(device, s.precision):
            pred = model.unet(xt, t.to(device), y.to(device) if y is not None else None).float().cpu()
            samples = model.sample(noise.to(device).contiguous(memory_format=fmt), y.to(device) if y is not None else None,
                                   options, item_generators(tuple(range(n)))).float().cpu()
        return pred, samples

    ref_pred, ref_samples = outputs(Setting("fp32", False))
    rows = []
    for s in settings:
        pred, samples = outputs(s)
        pix = to_uint8(samples).float() - to_uint8(ref_samples).float()
        rows.append({"setting": s.label, "eps_rel_err": rel_err(pred, ref_pred),
                     "sample_rel_err": rel_err(samples, ref_samples),
                     "sample_max_abs_levels": float(pix.abs().max()),
                     "sample_mean_abs_levels": float(pix.abs().mean())})
    return rows


# ----------------------------------------------------------------------------- machine

def machine(device: torch.device) -> dict:
    def lscpu(key: str) -> str:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return "?"
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(key + ":")), "?")

    def commit() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=ROOT, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    info = {"cpu": lscpu("Model name"), "cores": os.cpu_count(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "os": platform.platform(), "python": platform.python_version(),
            "versions": {p: version(p) for p in ("torch", "diffusers", "genforge")}, "git_commit": commit(),
            "threads": torch.get_num_threads(), "load_avg_before": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------- report

def table(results: dict) -> str:
    out = []
    for key, title in (("train", "Training"), ("sample", f"DDIM-{results['args']['ddim_steps']} sampling")):
        rows = results[key]
        base = next(r for r in rows if r["lib"] == "diffusers" and r["setting"] == "fp32 NCHW")
        best_d = max((r for r in rows if r["lib"] == "diffusers"), key=lambda r: r["median"])
        out += [f"**{title}** (images/s, median of {results['args'][key + '_reps']} interleaved repetitions; "
                f"batch {results['args']['batch' if key == 'train' else 'sample_batch']})", "",
                "| contender | images/s (median) | min - max | x diffusers fp32 NCHW (default) | x best diffusers row "
                "| images per CPU-second | GFLOP/s |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['name']} | {r['median']:.2f} | {r['min']:.2f} - {r['max']:.2f} | "
                       f"{r['median'] / base['median']:.2f} | {r['median'] / best_d['median']:.2f} | "
                       f"{r['per_cpu_s']:.2f} | {r['gflops']:.0f} |")
        out.append("")
    return "\n".join(out)


def quality_table(rows: list[dict], args: dict) -> str:
    out = [f"| genforge setting vs fp32 NCHW | epsilon rel. error | DDIM-{args['ddim_steps']} sample rel. error | "
           "sample max abs (levels of 255) | sample mean abs (levels) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['eps_rel_err']:.2e} | {r['sample_rel_err']:.2e} | "
                   f"{r['sample_max_abs_levels']:.0f} | {r['sample_mean_abs_levels']:.3f} |")
    return "\n".join(out)


def write_results(results: dict, command: str) -> None:
    m, a = results["machine"], results["args"]
    guided = ("one conditional forward pass of the batch per step" if a['guidance'] == 1.0 else
              "one forward pass of 2 x batch per step, conditional and unconditional, for both")
    sample_rows = ("" if a['sample_all'] or a['device'] == "cuda" else
                   "On CPU only genforge's default setting samples; its other settings are in the training table.")
    busy = m['load_avg_before'][0] > max(1.5, 0.5 * m['cores'])  # idle here reads 0-1 (the shell, the last run's tail)
    load_note = ("Other work shared the cores during this run: contention can slow the contenders unevenly even though "
                 "every repetition runs all of them in a rotated order (A/B/C, B/C/A, ...); rerun on an idle machine "
                 "before quoting these ratios." if busy else
                 "Nothing else was running: every repetition runs all contenders one after another in a rotated "
                 "order (A/B/C, B/C/A, ...).")
    text = f"""# Diffusion benchmark: genforge vs Hugging Face diffusers

Made by `{command}` on {results['date']} (it rewrites this file; see `benchmarks/README.md`).

## Machine and versions

- CPU: {m['cpu']}, {m['cores']} cores (`lscpu`; torch's CPU capability: {m['torch_cpu_capability']}); {m.get('gpu', 'no GPU')}
- Python {m['python']}, torch {m['versions']['torch']}, diffusers {m['versions']['diffusers']}, genforge {m['versions']['genforge']} (commit {m['git_commit']})
- device {a['device']}, `torch.set_num_threads({a['threads']})`; load average before / after: {m['load_avg_before'][0]:.2f} / {results['load_avg_after'][0]:.2f}
- {load_note}

## What was compared

- The same UNet: genforge `UNet` from {a['config'] or "genforge's default `model:` config"} ({results['model']}), and
  `diffusers.UNet2DModel` with the same levels, widths, blocks, attention, groups and class embedding.
  Parameters: genforge {results['params']['genforge']:,}, diffusers {results['params']['diffusers']:,}.
  Forward FLOPs per image: {results['flops_per_image'] / 1e9:.2f} GFLOP (both).
- Images {a['size']}x{a['size']}x{a['image_channels']}, {a['classes']} classes (class-conditional, 10% label dropout in training).
- Training step: forward, MSE on epsilon, backward, grad-norm clipping at 1.0, AdamW step; batch {a['batch']};
  warm-up steps: {a['warmup']}, then {a['train_reps']} repetitions of {a['train_steps']} step(s) each.
  genforge runs its trainer's pieces (fused AdamW, `Optimizers.step`) around `diffusion.train_step`;
  diffusers runs the loop of its `train_unconditional.py` example.
- Sampling: DDIM, {a['ddim_steps']} steps, eta 0, guidance {a['guidance']} ({guided}), batch {a['sample_batch']},
  {a['sample_reps']} repetitions after a warm-up. genforge: `diffusion.sample` under the run's autocast, as
  `genforge generate` runs it; diffusers: `DDIMScheduler.step` in a loop under `torch.no_grad()`.
  {sample_rows}
- Rows: diffusers as its users run it (fp32 NCHW) is the baseline; diffusers in bf16 autocast +
  channels-last and in fp32 channels-last are there for fairness; genforge's default config is fp32
  channels-last (`train.channels_last: true`, `train.precision: fp32`); its other settings are rows too.
- Columns: images/s is wall clock (median, and the range over repetitions); "x" columns are ratios
  genforge / diffusers of medians; images per CPU-second uses this process's CPU time (less sensitive
  to other processes taking the cores, though OpenMP threads that wait spin and count); GFLOP/s is
  the median rate times the FLOPs counted by `torch.utils.flop_counter` (3 x forward for a training step).

## Results

{table(results)}
## Quality: the fast settings do not change the outputs

Same weights (genforge's init with its zero-initialised layers re-drawn, so no output is trivially zero),
same inputs and noise; genforge's fp32 NCHW path is the reference. Epsilon: {a['quality_n']} noised images at
timesteps spread over [0, {results['timesteps'] - 1}]; samples: {a['quality_n']} DDIM-{a['ddim_steps']} samples with
guidance {a['guidance']} from the same starting noise. Relative error = ||x - x_ref|| / ||x_ref||; pixel
differences after the conversion to uint8.

{quality_table(results['quality'], a)}

Reading: fp32 channels-last (genforge's default, the row timed above as genforge) is the same
computation in another summation order: expect ~1e-6 relative and at most a level or so of 255. bf16
rounds every activation to 8 bits of mantissa (~1e-2 relative on epsilon); with these untrained weights
DDIM's 50 steps amplify that in a few pixels (max), while the mean stays a fraction of a level. bf16
is not genforge's CPU default; judge its sample quality on a trained run with the evaluation metrics.

## Raw results

```json
{json.dumps(results, indent=1)}
```
"""
    atomic_write_text(RESULTS, text)
    print(f"wrote {RESULTS}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--config", help="a run config whose `model:` section builds genforge's UNet (default: its defaults)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--image-channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10, help="0 = unconditional")
    p.add_argument("--batch", type=int, default=64, help="training batch")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps per contender")
    p.add_argument("--train-steps", type=int, default=2, help="steps per timed repetition")
    p.add_argument("--train-reps", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance for both; 1 = one conditional pass per step, else 2 x batch")
    p.add_argument("--sample-reps", type=int, default=3)
    p.add_argument("--sample-all", action="store_true",
                   help="sample with every genforge setting too (on CPU only its default, fp32 channels-last, by default)")
    p.add_argument("--quality-n", type=int, default=16, help="images in the quality check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every path runs, figures mean nothing")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT.parent)}")
    args = p.parse_args()
    if args.quick:
        args.batch, args.warmup, args.train_steps, args.train_reps = 4, 1, 1, 2
        args.sample_batch, args.ddim_steps, args.sample_reps, args.quality_n = 2, 3, 2, 2
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this torch build sees no CUDA GPU")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_diffusion.py " + " ".join(sys.argv[1:])

    cfg = genforge_config(args.config)
    spec = DataSpec("image", args.image_channels, args.size, args.size, tuple(str(i) for i in range(args.classes)))
    info = machine(device)
    print(json.dumps(info))

    # 1. equal networks
    g_params = n_params(gd.build(cfg, spec, None)["model"].unet)
    d_unet = diffusers_unet(cfg, spec)
    d_params = n_params(d_unet)
    print(f"parameters: genforge {g_params:,}  diffusers {d_params:,}  (ratio {g_params / d_params:.3f})")
    if abs(g_params / d_params - 1) > 0.10:
        sys.exit("the two networks differ by more than 10% in parameters; the comparison would not be fair")
    flops = forward_flops(gd.build(cfg, spec, None)["model"].unet, spec, lambda m, x, t, y: m(x, t, y if spec.num_classes else None))
    print(f"forward FLOPs per image: {flops / 1e9:.3f} GFLOP")

    # 2. the same data for every contender
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.batch, spec.channels, spec.height, spec.width), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, max(spec.num_classes, 1), (args.batch,), generator=g) if spec.num_classes else torch.full((args.batch,), -1)
    batch = {"images": images.to(device), "labels": labels.to(device)}
    noise = torch.randn((args.sample_batch, spec.channels, spec.height, spec.width), generator=g)

    fast = [Setting("fp32", True), Setting("bf16", True)]
    contenders = [diffusers_contender(cfg, spec, Setting("fp32", False), batch, noise, args, device),
                  diffusers_contender(cfg, spec, Setting("bf16", True), batch, noise, args, device),
                  diffusers_contender(cfg, spec, Setting("fp32", True), batch, noise, args, device),
                  genforge_contender(cfg, spec, Setting("fp32", True), batch, noise, args, device),
                  genforge_contender(cfg, spec, Setting("bf16", True), batch, noise, args, device),
                  genforge_contender(cfg, spec, Setting("fp32", False), batch, noise, args, device)]

    # 3. training, warm-up then interleaved repetitions
    print(f"training: batch {args.batch}, {args.warmup} warm-up steps, {args.train_reps} x {args.train_steps} timed steps")
    for c in contenders:
        for _ in range(args.warmup):
            c.train_step()

    def steps(c: Contender) -> Callable[[], None]:
        return lambda: [c.train_step() for _ in range(args.train_steps)]

    run_interleaved(contenders, "train", args.train_reps, steps, device)

    # 4. sampling
    samplers = [c for c in contenders if args.sample_all or device.type == "cuda" or c.lib == "diffusers"
                or c.setting == Setting("fp32", True)]
    print(f"sampling: DDIM-{args.ddim_steps}, batch {args.sample_batch}, guidance {args.guidance}, {args.sample_reps} repetitions")
    for c in samplers:  # warm-up: a short call builds every kernel the sampler uses
        c.sample(2)
    run_interleaved(samplers, "sample", args.sample_reps, lambda c: lambda: c.sample(args.ddim_steps), device)

    # 5. quality
    print("quality check ...", flush=True)
    quality = quality_check(cfg, spec, fast, args, device)

    def rows(key: str, items: int, flops_per_item: float) -> list[dict]:
        out = []
        for c in contenders:
            secs, cpu = getattr(c, key + "_s"), getattr(c, key + "_cpu_s")
            if secs:
                med, lo, hi = median_rate(secs, items)
                out.append({"name": c.name, "lib": c.lib, "setting": c.setting.label, "median": med, "min": lo, "max": hi,
                            "per_cpu_s": median_rate(cpu, items)[0], "gflops": med * flops_per_item / 1e9,
                            "seconds": secs, "cpu_seconds": cpu})
        return out

    passes = 2 if spec.num_classes and args.guidance != 1.0 else 1

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
               "load_avg_after": os.getloadavg(), "args": vars(args), "model": cfg.model_dump(),
               "timesteps": cfg.timesteps, "params": {"genforge": g_params, "diffusers": d_params},
               "flops_per_image": flops, "train": rows("train", args.batch * args.train_steps, 3 * flops),
               "sample": rows("sample", args.sample_batch, args.ddim_steps * passes * flops), "quality": quality}
    print()
    print(table(results))
    print(quality_table(quality, vars(args)))
    if args.json:
        atomic_write_json(Path(args.json), results)
    if args.write:
        write_results(results, command)


if __name__ == "__main__":
    main()
