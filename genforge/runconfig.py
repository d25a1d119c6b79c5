"""The run config: what to train on, which family and model, how to train, how to sample by default.

`parse_run_config` types the `model:` and `sample:` sections by the family named in `model.family`
and checks `train.optimizers` against the optimizers that family declares.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from genforge.config import StrictModel, apply_overrides, read_yaml, validate
from genforge.errors import ConfigError
from genforge.models import FAMILIES, get_family


class DataConfig(StrictModel):
    dataset: str  # "name" (the newest version) or "name@version"
    source: str | None = None  # what `genforge run` ingests as `dataset` when it is missing (builtin:digits, a path)
    train_split: str = "train"
    val_split: str = "val"


class OptimizerOverride(StrictModel):
    """Per-optimizer settings over the family's defaults (a GAN's two learning rates, CTGAN's betas)."""

    lr: float | None = Field(default=None, gt=0)
    betas: tuple[float, float] | None = None
    weight_decay: float | None = Field(default=None, ge=0)


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
    optimizers: dict[str, OptimizerOverride] = {}  # by the family's optimizer names
    grad_clip: float = Field(default=1.0, ge=0)  # max global grad norm; 0 = no clipping
    ema: float = Field(default=0.999, ge=0, lt=1)  # EMA decay; 0 = no EMA
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware runs it natively
    channels_last: bool = True  # NHWC convolutions: much faster on CPU (oneDNN) and tensor cores
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun picks the GPU of each process)
    threads: int | None = Field(default=None, ge=1)  # CPU threads per process; None: torch's default
    flush_denormals: bool = True  # CPU floats under 1.2e-38 computed as 0: see devices.flush_denormals
    seed: int = 0
    init_from: str | None = None  # a run (id, prefix, path) or checkpoint folder to start from: fine-tuning
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


class EvaluateConfig(StrictModel):
    """How `genforge run` evaluates; a promotion compares versions evaluated with equal options."""

    n: int | None = Field(default=None, ge=1)  # samples scored; None: the evaluator's default for the kind
    seed: int = 0


class Rule(StrictModel):
    """One promotion rule on a figure recorded for a version (its evaluation's, or one added later)."""

    metric: str = Field(min_length=1)  # e.g. evaluator_fd, perplexity, human_review
    min: float | None = None
    max: float | None = None
    max_regression: float | None = Field(default=None, ge=0)  # at most this share worse than the champion
    higher_is_better: bool | None = None  # None: known from the metric's name (fd, perplexity: lower)

    @model_validator(mode="after")
    def _something(self) -> "Rule":
        if self.min is None and self.max is None and self.max_regression is None:
            raise ValueError(f"rule on {self.metric!r} checks nothing: set min, max or max_regression")
        return self


class PromotionPolicy(StrictModel):
    rules: list[Rule] = []


class RegistryConfig(StrictModel):
    """What `genforge register` and `genforge run` record, and the gate a version must pass to be champion."""

    name: str | None = None  # the registered model; None: the config's name
    promote: bool = False  # `genforge run` asks for promotion after registering
    policy: PromotionPolicy = PromotionPolicy()
    intended_use: str = "Generating synthetic examples like the training data, for prototyping and augmentation."
    limitations: str = ("Reproduces the patterns, gaps and biases of its training data; trained briefly on one "
                        "dataset; not checked by a person. Label generated content as AI-generated.")
    licence: str | None = None  # the terms this model is offered under (the card shows the data's own)
    weights_licence: str | None = None  # of imported weights this model starts from, when not the data's


class RunConfig(StrictModel):
    """A run config; `run_config_type(family)` gives the subclass whose model/sample are typed."""

    name: str = Field(default="run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    data: DataConfig
    model: StrictModel
    train: TrainConfig
    sample: StrictModel
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()


@functools.cache
def run_config_type(family: str) -> type[RunConfig]:
    fam = get_family(family)
    return create_model(f"RunConfig_{family}", __base__=RunConfig,
                        model=(fam.Config, ...), sample=(fam.SampleConfig, fam.SampleConfig()))


def parse_run_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    family = data.get("model", {}).get("family") if isinstance(data.get("model"), dict) else None
    if not family:
        raise ConfigError(f"invalid {source}: 'model.family' is required (one of: {', '.join(sorted(FAMILIES))})")
    config = validate(run_config_type(family), data, source=source)
    declared = get_family(family).optimizers(config.model)
    unknown = sorted(set(config.train.optimizers) - set(declared))
    if unknown:
        raise ConfigError(f"invalid {source}: train.optimizers has {', '.join(map(repr, unknown))}; the {family} family's "
                          f"optimizers are: {', '.join(declared)}")
    for field in ("lr", "betas", "weight_decay"):  # a train.* value that no optimizer would use is an error, not ignored
        users = [name for name, spec in declared.items()
                 if getattr(spec, field) is None and getattr(config.train.optimizers.get(name), field, None) is None]
        changed = getattr(config.train, field) != TrainConfig.model_fields[field].default  # (a stored config sets all)
        if changed and not users:
            raise ConfigError(f"invalid {source}: train.{field} is not used: every optimizer of the {family} family "
                              f"({', '.join(declared)}) has its own; set train.optimizers.<name>.{field} instead")
    return config


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """YAML file + `--set a.b=value` overrides -> the validated, family-typed run config."""
    return parse_run_config(apply_overrides(read_yaml(path), overrides), source=str(path))


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumped configs, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} (run: {a!r}, now: {b!r})"]


# What `--resume` may change: the budget and anything else about how training goes on, and sampling
# defaults. The model, the data and the start point (init_from) would make a different model.
RESUMABLE_CHANGES = ("train.", "sample.", "evaluate.", "registry.", "data.source")
FIXED_ON_RESUME = ("train.init_from", "train.seed", "train.batch_size")


def check_resume_changes(stored: RunConfig, now: RunConfig) -> list[str]:
    """The changes `now` makes to a run's stored config; raises ConfigError for any that would change
    the model or its data (or make the continuation a different run: seed, batch size, start point)."""
    diffs = config_diff(stored.model_dump(mode="json"), now.model_dump(mode="json"))
    refused = [d for d in diffs if not d.startswith(RESUMABLE_CHANGES) or d.startswith(FIXED_ON_RESUME)]
    if refused:
        raise ConfigError("--resume continues a run with its model and data; these changes would make another run "
                          "(start a new one instead): " + "; ".join(refused))
    return diffs
