"""Model families and the one contract they all keep.

A family is one module (`diffusion.py`, `gan.py`, `vae.py`, later `gpt.py`, `tabular.py`) that the
trainer, `genforge.sampling` (generation, evaluation) and the registry and server use without
knowing which family it is or what kind of data it eats. `Family` below is that contract, typed;
`check_family` verifies a module keeps all of it, and the conformance test runs every registered
family through it, so a new family cannot half-implement it.

The trainer owns device, seeding, data order, optimizers, LR schedules, clipping, precision, EMA,
progress, metrics, checkpoints, exact resume and DDP; a family never re-implements any of them.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field, fields
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Union

import numpy as np
import torch
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    import pandas as pd

    from genforge.data.store import Dataset

FAMILIES = {"diffusion": "genforge.models.diffusion", "gan": "genforge.models.gan", "vae": "genforge.models.vae",
            "gpt": "genforge.models.gpt", "ctgan": "genforge.models.ctgan", "tvae": "genforge.models.tvae",
            "copula": "genforge.models.copula"}

Kind = Literal["image", "text", "table"]
Batch = dict[str, torch.Tensor]  # tensors with one common first dimension: the trainer indexes rows


# ----------------------------------------------------------------------------- what a family is given

@dataclass(frozen=True)
class Column:
    name: str
    type: str  # numeric | categorical | boolean | datetime (the data layer's inferred types)


@dataclass(frozen=True)
class DataSpec:
    """What a family needs to know about its data to build itself; saved with every run and checkpoint.

    Images: channels, height, width, classes. Text: vocab_size, block_size (and classes when labeled).
    Tables: columns. Fields another kind does not use stay at their empty defaults.
    """

    kind: Kind
    channels: int = 0
    height: int = 0
    width: int = 0
    classes: tuple[str, ...] = ()
    vocab_size: int = 0
    block_size: int = 0
    columns: tuple[Column, ...] = ()

    @property
    def num_classes(self) -> int:
        """0 means unconditional."""
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "classes": list(self.classes), "columns": [dict(c) for c in d["columns"]]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DataSpec":
        """By field name; an unknown field is an error (a newer genforge wrote it), a missing one its default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"data spec has fields this genforge does not know: {', '.join(unknown)}; upgrade genforge")
        return cls(**{**d, "classes": tuple(d.get("classes", ())),
                      "columns": tuple(Column(**c) for c in d.get("columns", ()))})


@dataclass(frozen=True)
class Fitted:
    """What a family learns from the data before its model exists (a tokenizer, a table transformer).

    Fitted once on a new run, saved beside it (`fitted.json` + `fitted.safetensors`, checksummed,
    never pickle) and reloaded unchanged by resume, fine-tuning, generation, evaluation and serving.
    `format` tags the content ("bpe-tokenizer/1"); `meta` is json, `tensors` any arrays.
    """

    format: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """One AdamW: the modules it updates and its own settings (None: the run's `train.lr`/`betas`/
    `weight_decay`). A run config may override any of them under `train.optimizers.<name>`."""

    modules: tuple[str, ...]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


class Optimizer(Protocol):
    """What `train_step` applies its losses with (the trainer's `Optimizers`)."""

    def step(self, name: str, loss: torch.Tensor) -> None:
        """Backward `loss`, synchronise gradients across processes, clip, and update optimizer `name`."""


# ----------------------------------------------------------------------------- sampling requests and outputs

def item_seeds(seed: int, n: int) -> tuple[int, ...]:
    """The seed of each of n items of a request made with `seed`: item i depends on (seed, i) only."""
    return tuple(int(s >> np.uint64(1)) for s in np.random.SeedSequence(seed).generate_state(n, np.uint64)) if n else ()


@dataclass(frozen=True)
class SampleRequest:
    """What to generate: one seed per item, so an item's output does not depend on which other items
    share its batch (a server merges requests; generation chunks them). Conditions per item, by kind:
    `labels` (class indices) for images, `prompts` for text, `conditions` (column -> value) for tables.
    `options` overrides fields of the run's `sample:` section; the family validates them."""

    seeds: tuple[int, ...]
    labels: tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    conditions: tuple[dict[str, Any], ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    start: int = 0  # the index of item 0 in the whole request, when this is a chunk of it

    @classmethod
    def make(cls, n: int, seed: int = 0, **kw: Any) -> "SampleRequest":
        return cls(item_seeds(seed, n), **kw)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def slice(self, start: int, stop: int) -> "SampleRequest":
        part = lambda xs: None if xs is None else xs[start:stop]  # noqa: E731
        return SampleRequest(self.seeds[start:stop], part(self.labels), part(self.prompts), part(self.conditions),
                             self.options, self.start + start)


@dataclass
class ImageSamples:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: tuple[int, ...] | None = None  # the class asked for, per image
    kind: Literal["image"] = "image"

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class TextSamples:
    texts: list[str]
    prompts: list[str] | None = None
    finish_reasons: list[str] | None = None  # "stop" | "length"
    completion_tokens: list[int] | None = None
    kind: Literal["text"] = "text"

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TableSamples:
    frame: "pd.DataFrame"
    kind: Literal["table"] = "table"

    def __len__(self) -> int:
        return len(self.frame)


Samples = Union[ImageSamples, TextSamples, TableSamples]


def concat_samples(parts: list[Samples]) -> Samples:
    """Samples of consecutive chunks of one request -> the samples of the whole request."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, ImageSamples):
        labels = None if first.labels is None else tuple(y for p in parts for y in p.labels)
        return ImageSamples(np.concatenate([p.images for p in parts]), labels)
    if isinstance(first, TextSamples):
        join = lambda name: None if getattr(first, name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return TextSamples(join("texts"), join("prompts"), join("finish_reasons"), join("completion_tokens"))
    import pandas as pd
    return TableSamples(pd.concat([p.frame for p in parts], ignore_index=True))


def split_samples(samples: Samples, counts: list[int]) -> list[Samples]:
    """The inverse of `concat_samples`: consecutive parts of `counts[i]` items (a merged batch back
    into the requests it was merged from)."""
    def part(a: int, b: int) -> Samples:
        if isinstance(samples, ImageSamples):
            return ImageSamples(samples.images[a:b], None if samples.labels is None else samples.labels[a:b])
        if isinstance(samples, TextSamples):
            cut = lambda xs: None if xs is None else xs[a:b]  # noqa: E731
            return TextSamples(samples.texts[a:b], cut(samples.prompts), cut(samples.finish_reasons),
                               cut(samples.completion_tokens))
        return TableSamples(samples.frame.iloc[a:b].reset_index(drop=True))
    bounds = np.cumsum([0, *counts])
    return [part(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------- the contract

class Family(Protocol):
    """The contract. A family module defines each member (module-level names and functions)."""

    Config: type[StrictModel]          # its `model:` section, with `family: Literal[<name>]`
    SampleConfig: type[StrictModel]    # its `sample:` section: generation defaults, overridable per request
    KINDS: tuple[Kind, ...]            # the data kinds it trains on
    EMA: tuple[str, ...]               # modules whose moving average is kept and used for sampling
    HEADLINE: str                      # the loss shown in progress and logs
    GRAD_SYNC: Literal["ddp", "optimizer"]  # "optimizer": gradients all-reduced in `opt.step` (double backward)
    TUNABLE: tuple[str, ...]           # `model:` fields a fine-tuning run (train.init_from) may change
    REQUEST_OPTIONS: tuple[str, ...]   # `sample:` fields a remote request may set (never one that reads files)

    def optimizers(self, config: Any) -> dict[str, OptimizerSpec]:
        """Optimizer name -> the modules it updates and its own settings."""

    def fit(self, config: Any, dataset: "Dataset", seed: int) -> tuple[DataSpec, Fitted | None]:
        """What must be learned from the data before the model exists; once per run. Whatever it draws
        at random comes from `seed`, the run's `train.seed`: a run's seed decides all its randomness."""

    def encode(self, config: Any, spec: DataSpec, fitted: Fitted | None, dataset: "Dataset", split: str) -> Batch:
        """A split as tensors with one first dimension; an incompatible dataset is a DataError."""

    def build(self, config: Any, spec: DataSpec, fitted: Fitted | None) -> dict[str, nn.Module]:
        """Every module a checkpoint holds."""

    def train_step(self, modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
        """One step: apply each loss with `opt.step(name, loss)`; return detached scalars to log."""

    def val_loss(self, modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
        """Held-out scalars and the weight of this batch in their mean (rows; tokens for text)."""

    def sample(self, modules: dict[str, nn.Module], spec: DataSpec, fitted: Fitted | None, request: SampleRequest,
               options: Any) -> Samples:
        """One output per item of `request`; item i depends only on request.seeds[i] and its condition."""

    def health(self, config: Any, window: dict[str, float]) -> str | None:
        """A warning for the log and the report when a logged window looks wrong (a GAN's winning
        discriminator), else None."""


_CONSTANTS = ("Config", "SampleConfig", "KINDS", "EMA", "HEADLINE", "GRAD_SYNC", "TUNABLE", "REQUEST_OPTIONS")
_FUNCTIONS = ("optimizers", "fit", "encode", "build", "train_step", "val_loss", "sample", "health")


def check_family(module: ModuleType) -> None:
    """Raise ModelError naming every member `module` lacks or defines with other parameters."""
    problems = [f"{name} is missing" for name in _CONSTANTS if not hasattr(module, name)]
    for name in _FUNCTIONS:
        fn = getattr(module, name, None)
        if not callable(fn):
            problems.append(f"{name}() is missing")
            continue
        want = [p for p in inspect.signature(getattr(Family, name)).parameters if p != "self"]
        got = list(inspect.signature(fn).parameters)
        if got != want:
            problems.append(f"{name}({', '.join(got)}) should take ({', '.join(want)})")
    unknown = set(getattr(module, "REQUEST_OPTIONS", ())) - set(getattr(getattr(module, "SampleConfig", None),
                                                                        "model_fields", {}))
    if unknown:
        problems.append(f"REQUEST_OPTIONS names fields SampleConfig lacks: {sorted(unknown)}")
    if getattr(module, "GRAD_SYNC", "ddp") not in ("ddp", "optimizer"):
        problems.append(f"GRAD_SYNC must be 'ddp' or 'optimizer', got {module.GRAD_SYNC!r}")
    if problems:
        raise ModelError(f"family {module.__name__} breaks the contract: " + "; ".join(problems))


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"model.family must be one of {', '.join(sorted(FAMILIES))}, got {name!r}")
    module = importlib.import_module(FAMILIES[name])
    check_family(module)
    return module  # type: ignore[return-value]


# ----------------------------------------------------------------------------- shared by the image families

def fit_images(config: Any, dataset: "Dataset", seed: int) -> tuple[DataSpec, None]:
    """Image families learn nothing before training: the spec is the images' shape and the classes."""
    images, _ = dataset.images("train")
    if len(images) == 0:
        raise DataError(f"dataset {dataset.ref} has no images in its train split")
    return DataSpec("image", *images.shape[1:], classes=tuple(dataset.classes)), None


def encode_images(config: Any, spec: DataSpec, fitted: None, dataset: "Dataset", split: str) -> Batch:
    """{"images": uint8 (N, C, H, W), "labels": int64 (N,), -1 where unlabeled}; the dataset must match
    the spec (a fine-tuning dataset must have the source run's image shape and classes)."""
    if dataset.kind != "image":
        raise DataError(f"this family trains on image datasets; {dataset.ref} holds {dataset.kind} data")
    images, labels = dataset.images(split)
    shape = (spec.channels, spec.height, spec.width)
    if len(images) and tuple(images.shape[1:]) != shape:
        raise DataError(f"dataset {dataset.ref} has images of shape {tuple(images.shape[1:])}; the model was built "
                        f"for {shape}: ingest with --set image.size={spec.height} (and the same channels)")
    if tuple(dataset.classes) != spec.classes:
        raise DataError(f"dataset {dataset.ref} has classes {list(dataset.classes)}; the model was built for "
                        f"{list(spec.classes)}")
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels.astype(np.int64))}


def check_labels(labels: tuple[int, ...] | None, n: int, num_classes: int) -> torch.Tensor | None:
    """The class per item of an image request, checked: None for an unconditional model; a conditional
    one without labels cycles its classes."""
    if num_classes == 0:
        if labels is not None:
            raise ModelError("this model is unconditional (its dataset has no classes); generate without labels")
        return None
    labels = tuple(i % num_classes for i in range(n)) if labels is None else labels
    if len(labels) != n:
        raise ModelError(f"labels must hold one class per image ({n}), got {len(labels)}")
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise ModelError(f"labels must be between 0 and {num_classes - 1}, got {bad[0]}")
    return torch.tensor(labels, dtype=torch.long)


def item_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    """One CPU generator per item, seeded with its seed: every random draw of item i comes from its own
    stream, which is what makes an item independent of its batch-mates."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def randn_items(generators: list[torch.Generator], shape: tuple[int, ...],
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(generators), *shape) standard normal draws, row i from generator i."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]: how image families and the evaluator see pixels."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded: the inverse of `to_unit` for generated images."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
