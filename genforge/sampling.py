"""A trained model loaded from one checkpoint folder, and the one path every sample takes.

`load_model(folder)` needs nothing but the folder (model.json, fitted state, weights), so the CLI,
the evaluator, the registry and the server load a model the same way; `Model.sample(request)`
validates the family's options, cuts the request into batches and joins the outputs. Since every
item carries its own seed, the batch size never changes an output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genforge.checkpoint import Checkpoint, load_fitted, load_modules, open_checkpoint
from genforge.config import StrictModel, validate
from genforge.devices import autocast, pick_device, place, resolve_precision
from genforge.errors import ModelError
from genforge.models import DataSpec, Family, Fitted, SampleRequest, Samples, concat_samples, get_family

MAX_ITEMS = 100_000


@dataclass
class Model:
    family_name: str
    family: Family
    config: StrictModel           # the family's model config
    sample_defaults: StrictModel  # the run's `sample:` section
    spec: DataSpec
    fitted: Fitted | None
    modules: dict[str, nn.Module]
    device: torch.device
    precision: str
    checkpoint: Checkpoint

    def options(self, overrides: dict[str, Any]) -> StrictModel:
        """The run's sample defaults with a request's overrides, validated by the family."""
        return validate(type(self.sample_defaults), {**self.sample_defaults.model_dump(), **overrides},
                        source="sample options")

    def sample(self, request: SampleRequest, batch_size: int = 64) -> Samples:
        if not 1 <= request.n <= MAX_ITEMS:
            raise ModelError(f"n must be between 1 and {MAX_ITEMS}, got {request.n}")
        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        options = self.options(request.options)
        if self.spec.kind == "image" and self.spec.num_classes and request.labels is None:
            # the class cycle is the request's, not each chunk's: item i asks for class i mod K
            request = replace(request, labels=tuple(i % self.spec.num_classes for i in range(request.n)))
        if self.spec.kind == "table":  # one chunk: a uniqueness rule spans the request, and rows are cheap
            batch_size = request.n
        parts = []
        with torch.inference_mode(), autocast(self.device, self.precision):
            for start in range(0, request.n, batch_size):
                part = request.slice(start, start + batch_size)
                parts.append(self.family.sample(self.modules, self.spec, self.fitted, part, options))
        return concat_samples(parts)


def load_model(checkpoint: Checkpoint | str | Path, device: str = "auto") -> Model:
    """A model from its checkpoint folder alone: EMA weights where kept, in eval mode."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(Path(checkpoint))
    info = ckpt.model_info()
    family = get_family(info["family"])
    source = str(ckpt.path / "model.json")
    config = validate(family.Config, info["model"], source=source)
    sample_defaults = validate(family.SampleConfig, info["sample"], source=source)
    spec = DataSpec.from_json(info["data_spec"])
    fitted = load_fitted(ckpt.path, info["fitted"])
    modules = family.build(config, spec, fitted)
    load_modules(ckpt, modules)
    if ckpt.has("ema.safetensors"):
        load_modules(ckpt, {k: modules[k] for k in family.EMA}, "ema.safetensors")
    dev = pick_device(device)
    precision, _ = resolve_precision(info.get("precision", "fp32"), dev)
    place(modules, dev, info.get("channels_last", False))
    for m in modules.values():
        m.eval()
    return Model(info["family"], family, config, sample_defaults, spec, fitted, modules, dev, precision, ckpt)
