"""Training runs on disk: the run config, the run directory, and loading a run to generate from it.

`runs/<run-id>/` holds config.yaml (the validated run config), run.json (what was trained on, status,
timings), metrics.jsonl, checkpoints/ (see genforge.checkpoint), samples/ and eval/. This module is
what the evaluator, the registry and the server use; the trainer writes the same layout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from PIL import Image
from pydantic import BaseModel, Field, create_model, model_validator
from torch import nn

from genforge.checkpoint import Checkpoint, latest_checkpoint, load_modules
from genforge.config import StrictModel, apply_overrides, read_yaml, validate
from genforge.errors import ConfigError, ModelError
from genforge.models import FAMILIES, DataSpec, get_family
from genforge.workspace import atomic_write_json, atomic_write_with, runs_dir

RUN_FORMAT = "genforge-run/1"
SAMPLES_FORMAT = "genforge-samples/1"


# ----------------------------------------------------------------------------- the run config

class DataConfig(StrictModel):
    dataset: str  # "name" (the newest version) or "name@version"
    train_split: str = "train"
    val_split: str = "val"


class TrainConfig(StrictModel):
    """The loop's settings. The budget: steps or epochs, and/or minutes of wall clock; training ends
    at whichever comes first, and the LR schedule follows whichever is further along."""

    steps: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=64, ge=1)  # global: split across DDP processes
    lr: float = Field(default=1e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)  # on weight matrices and kernels, not biases/norms
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(default=1.0, ge=0)  # max global grad norm; 0 = no clipping
    ema: float = Field(default=0.999, ge=0, lt=1)  # EMA decay; 0 = no EMA
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast; fast on GPUs and CPUs with AMX/avx512_bf16
    channels_last: bool = True  # NHWC convolutions: much faster on CPU (oneDNN) and tensor cores
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun picks the GPU of each process)
    threads: int | None = Field(default=None, ge=1)  # CPU threads per process; None: torch's default
    seed: int = 0
    log_every: int = Field(default=50, ge=1)
    val_every: int = Field(default=500, ge=0)  # 0 = no validation
    val_items: int = Field(default=512, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"set steps or epochs, not both (got steps={self.steps}, epochs={self.epochs})")
        if self.steps is None and self.epochs is None and self.minutes is None:
            raise ValueError("set a budget: steps, epochs or minutes (or steps/epochs plus a minutes limit)")
        return self


class RunConfig(StrictModel):
    """A run config; `run_config_type(family)` gives the subclass whose model/sample are typed."""

    name: str = Field(default="run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    data: DataConfig
    model: StrictModel
    train: TrainConfig
    sample: StrictModel


@functools.cache
def run_config_type(family: str) -> type[RunConfig]:
    fam = get_family(family)
    return create_model(f"RunConfig_{family}", __base__=RunConfig,
                        model=(fam.Config, ...), sample=(fam.SampleConfig, fam.SampleConfig()))


def parse_run_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    family = data.get("model", {}).get("family") if isinstance(data.get("model"), dict) else None
    if not family:
        raise ConfigError(f"invalid {source}: 'model.family' is required (one of: {', '.join(sorted(FAMILIES))})")
    return validate(run_config_type(family), data, source=source)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """YAML file + `--set a.b=value` overrides -> the validated, family-typed run config."""
    return parse_run_config(apply_overrides(read_yaml(path), overrides), source=str(path))


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------- devices and precision

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for; float32 otherwise (no loss scaling is needed with bf16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def place(modules: dict[str, nn.Module], device: torch.device, channels_last: bool) -> dict[str, nn.Module]:
    for m in modules.values():
        m.to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)  # only 4-d weights change
    return modules


# ----------------------------------------------------------------------------- run directories

def new_run_id(name: str) -> str:
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{uuid.uuid4().hex[:4]}"


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if info.get("format") == RUN_FORMAT else None


def list_runs() -> list[tuple[Path, dict[str, Any]]]:
    """Every run directory with a readable run.json, oldest first."""
    root = runs_dir()
    runs = [(p, info) for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and (info := _read_info(p))]
    return sorted(runs, key=lambda r: (r[1].get("started_at", ""), r[0].name))


def resolve_run(ref: str | Path) -> Path:
    """A run id, a unique prefix of one, "latest", or a path to a run directory -> its directory."""
    p = Path(ref)
    if p.is_dir() and _read_info(p):
        return p.resolve()
    runs = list_runs()
    if not runs:
        raise ModelError(f"no runs in {runs_dir()}; train one with `genforge train CONFIG`")
    if str(ref) == "latest":
        return runs[-1][0]
    exact = [path for path, _ in runs if path.name == str(ref)]
    hits = exact or [path for path, _ in runs if path.name.startswith(str(ref))]
    if len(hits) != 1:
        names = ", ".join(path.name for path, _ in runs[-10:])
        raise ModelError(f"{'no' if not hits else 'more than one'} run matches {str(ref)!r} (recent runs: {names})")
    return hits[0]


def write_info(path: Path, info: dict[str, Any]) -> None:
    atomic_write_json(path / "run.json", info)


# ----------------------------------------------------------------------------- a loaded run

@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    config: RunConfig
    _modules: dict[str, nn.Module] | None = field(default=None, repr=False)
    _checkpoint: Checkpoint | None = field(default=None, repr=False)
    _device: torch.device | None = field(default=None, repr=False)

    id = property(lambda self: self.path.name)
    family = property(lambda self: self.info["family"])
    dataset_ref = property(lambda self: self.info["dataset"])

    @property
    def data_spec(self) -> DataSpec:
        s = self.info["data_spec"]
        return DataSpec(s["kind"], s["channels"], s["height"], s["width"], tuple(s["classes"]))

    def metrics(self) -> list[dict[str, Any]]:
        """Parsed metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
        p = self.path / "metrics.jsonl"
        out = []
        for line in p.read_text(encoding="utf-8").splitlines() if p.is_file() else []:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
            self._checkpoint = latest_checkpoint(self.path / "checkpoints", warn)
            if self._checkpoint is None:
                raise ModelError(f"run {self.id} has no complete checkpoint yet")
        return self._checkpoint

    def modules(self, device: str = "auto") -> dict[str, nn.Module]:
        """The family's modules with the newest good checkpoint's weights (EMA where kept), in eval mode."""
        if self._modules is None:
            fam = get_family(self.family)
            ckpt = self.checkpoint()
            modules = fam.build(self.config.model, self.data_spec)
            load_modules(ckpt, modules)
            if ckpt.has("ema.safetensors"):
                load_modules(ckpt, {k: modules[k] for k in fam.EMA}, "ema.safetensors")
            self._device = pick_device(device)
            self._modules = place(modules, self._device, self.config.train.channels_last)
            for m in self._modules.values():
                m.eval()
        return self._modules

    def sample_images(self, n: int, labels: list[int] | None = None, seed: int = 0, steps: int | None = None,
                      guidance: float | None = None, sampler: str | None = None, batch_size: int = 64,
                      eta: float | None = None) -> np.ndarray:
        """uint8 (N, C, H, W). `labels=None` cycles the classes of a conditional model."""
        if not 1 <= n <= 100_000:
            raise ModelError(f"n must be between 1 and 100000, got {n}")
        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        given = {k: v for k, v in dict(steps=steps, guidance=guidance, sampler=sampler, eta=eta).items() if v is not None}
        options = validate(type(self.config.sample), {**self.config.sample.model_dump(), **given}, source="sample options")
        modules = self.modules()
        with autocast(self._device, self.config.train.precision):
            out = get_family(self.family).sample(modules, self.data_spec, n, labels=labels, seed=seed,
                                                 options=options, batch_size=batch_size)
        return out.numpy()


def load_run(ref: str | Path) -> Run:
    path = resolve_run(ref)
    info = _read_info(path)
    config = parse_run_config(read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))
    return Run(path, info, config)


# ----------------------------------------------------------------------------- writing samples

def image_grid(images: np.ndarray, labels: list[int] | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) uint8 -> one (rows*H', cols*W', C) image: a row per class when several
    classes are present, else a near-square grid."""
    n, c, h, w = images.shape
    if labels is not None and len(set(labels)) > 1:
        classes = sorted(set(labels))
        cells = [[i for i in range(n) if labels[i] == k] for k in classes]
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


def write_samples(images: np.ndarray, out: Path, labels: list[int] | None, meta: dict[str, Any]) -> Path:
    """grid.png, sample-0000.png ... and samples.json (what made them), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        atomic_write_with(out / f"sample-{i:04d}.png", lambda p, a=img: to_pil(a.transpose(1, 2, 0)).save(p, format="PNG"))
    grid = image_grid(images, labels)
    atomic_write_with(out / "grid.png", lambda p: to_pil(grid).save(p, format="PNG"))
    atomic_write_json(out / "samples.json", {"format": SAMPLES_FORMAT, "count": len(images), "labels": labels, **meta})
    return out / "grid.png"


def generate(ref: str, n: int, *, labels: list[int] | None = None, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None, eta: float | None = None,
             out: Path | None = None, batch_size: int = 64) -> Path:
    """What `genforge generate` does: sample from a run and write the PNGs. Returns the grid's path."""
    run = load_run(ref)
    images = run.sample_images(n, labels=labels, seed=seed, steps=steps, guidance=guidance, sampler=sampler,
                               batch_size=batch_size, eta=eta)
    if run.data_spec.num_classes and labels is None:
        labels = [i % run.data_spec.num_classes for i in range(n)]
    opts = {k: v for k, v in dict(steps=steps, guidance=guidance, sampler=sampler, eta=eta).items() if v is not None}
    if out is None:
        tag = "-".join(f"{k}{v}" for k, v in opts.items())
        label_tag = f"-label{labels[0]}" if labels and len(set(labels)) == 1 else ""
        out = run.path / "samples" / f"n{n}-seed{seed}{label_tag}{'-' + tag if tag else ''}"
    meta = {"run": run.id, "checkpoint": run.checkpoint().path.name, "seed": seed, "options": opts}
    return write_samples(images, out, labels, meta)
