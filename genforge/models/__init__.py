"""Model families, found by the config's `model.family`.

A family is one module that the trainer, `genforge.runs` (generation, evaluation) and later the
registry and server use without knowing which family it is. It defines:

- `Config`: the pydantic model of its `model:` config section (with `family: Literal[...]`);
- `SampleConfig`: the pydantic model of the run's `sample:` section (generation defaults);
- `OPTIMIZERS`: optimizer name -> the module names it updates (a GAN has two optimizers);
- `EMA`: the module names whose exponential moving average is kept and used for sampling;
- `build(config, spec) -> dict[str, nn.Module]`: every module a checkpoint must hold;
- `train_step(modules, batch, opt) -> dict[str, Tensor]`: one step; calls `opt.step(name, loss)`
  for each optimizer it uses and returns detached scalars to log ("loss" first);
- `val_loss(modules, batch) -> dict[str, Tensor]` (optional): the held-out loss;
- `sample(modules, spec, n, *, labels, seed, options, batch_size) -> Tensor`: outputs.

The trainer owns device, seeding, data, optimizers, LR schedule, clipping, precision, EMA, logging,
checkpoints and DDP; a family never re-implements any of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch

from genforge.errors import ConfigError

FAMILIES = {"diffusion": "genforge.models.diffusion"}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"model.family must be one of {', '.join(sorted(FAMILIES))}, got {name!r}")
    return importlib.import_module(FAMILIES[name])


@dataclass(frozen=True)
class DataSpec:
    """What a family needs to know about its data to build itself; recorded with every run."""

    kind: str
    channels: int = 0
    height: int = 0
    width: int = 0
    classes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """0 means unconditional."""
        return len(self.classes)


class ImageBatch(NamedTuple):
    images: torch.Tensor  # uint8 (B, C, H, W)
    labels: torch.Tensor  # int64 (B,), -1 where unlabeled


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]: how image families and the evaluator see pixels."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded: the inverse of `to_unit` for generated images."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
