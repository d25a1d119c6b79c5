"""genforge's own evaluator network: a small classifier trained on a labeled dataset's train split.

Standard FID needs an ImageNet Inception that is optional here and slow on a CPU, and it knows
nothing of a user's classes. This network is trained in seconds on the data itself, so its
features give FD/KID/precision/recall and its predictions give the classifier score, class
coverage and the accuracy of conditional samples. Figures from it are keyed `evaluator_*` and
labelled "evaluator", never "FID": they compare runs on the same dataset version, not with papers.
It is cached by dataset version (and by its own settings) under `<workspace>/evaluators/`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from genforge.data.store import Dataset
from genforge.errors import DataError
from genforge.models import to_unit
from genforge.workspace import atomic_write_json, atomic_write_with, home

FORMAT = "genforge-evaluator/1"


@dataclass(frozen=True)
class EvaluatorConfig:
    width: int = 32         # channels of the first conv; doubled twice
    feature_dim: int = 128  # size of the feature vector the set metrics use
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps([FORMAT, asdict(self)]).encode()).hexdigest()[:10]


class EvaluatorNet(nn.Module):
    """Three 3x3 convs (stride 2, 2, 1), pooled to a 4x4 grid, one hidden layer: any image size.

    The 4x4 grid keeps where strokes are (a global average would lose it: a 6 and a 9 pool alike);
    the early strides keep training to seconds on a CPU.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.hidden = nn.Linear(4 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x).flatten(1)  # (B, 4w * 16)
        return F.relu(self.hidden(h))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K) logits


def _to_input(images: np.ndarray) -> torch.Tensor:
    return to_unit(torch.from_numpy(np.ascontiguousarray(images)))


class Evaluator:
    """A trained EvaluatorNet plus what it was trained on."""

    def __init__(self, net: EvaluatorNet, meta: dict):
        self.net = net.eval()
        self.meta = meta

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def class_shares(self) -> np.ndarray:
        return np.asarray(self.meta["class_shares"])

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, C, H, W) -> (features (N, D), class probabilities (N, K)).

        Features are scaled to a mean square of 1 on the train split, so FD and KID read on a
        similar scale whatever the dataset.
        """
        feats, probs = [], []
        for i in range(0, len(images), batch_size):
            f = self.net.features(_to_input(images[i:i + batch_size]))
            feats.append(f.double().numpy() * self.meta.get("feature_scale", 1.0))
            probs.append(F.softmax(self.net.head(f), dim=1).double().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def train_evaluator(images: np.ndarray, labels: np.ndarray, num_classes: int,
                    config: EvaluatorConfig = EvaluatorConfig()) -> EvaluatorNet:
    """Plain seeded AdamW on cross-entropy; a few epochs suffice for a feature extractor."""
    torch.manual_seed(config.seed)
    net = EvaluatorNet(images.shape[1], num_classes, config.width, config.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr)
    x, y = _to_input(images), torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(config.batch_size):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def evaluator_dir(dataset: Dataset, config: EvaluatorConfig) -> Path:
    return home() / "evaluators" / dataset.name / dataset.version / config.key()


def load_or_train_evaluator(dataset: Dataset, config: EvaluatorConfig = EvaluatorConfig()) -> Evaluator:
    """The evaluator for this dataset version: from the cache, else trained now and cached."""
    num_classes = len(dataset.classes)
    folder = evaluator_dir(dataset, config)
    weights, meta_path = folder / "evaluator.safetensors", folder / "evaluator.json"
    if weights.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        net = EvaluatorNet(meta["channels"], num_classes, config.width, config.feature_dim)
        net.load_state_dict(load_file(str(weights)))
        return Evaluator(net, meta)

    images, labels = dataset.images("train")
    if num_classes < 2 or len(images) == 0 or (labels < 0).any():
        raise DataError(f"the evaluator network needs a labeled dataset with at least 2 classes; "
                        f"{dataset.ref} has {num_classes} classes and {int((labels < 0).sum())} unlabeled train images")
    t0 = time.perf_counter()
    net = train_evaluator(images, labels, num_classes, config)
    train_features, _ = Evaluator(net, {}).embed(images)
    val_images, val_labels = dataset.images("val")
    val_acc = None
    if len(val_images):
        _, probs = Evaluator(net, {}).embed(val_images)
        val_acc = float(np.mean(probs.argmax(1) == val_labels))
    meta = {
        "format": FORMAT, "dataset": dataset.ref, "config": asdict(config), "channels": int(images.shape[1]),
        "num_classes": num_classes, "classes": list(dataset.classes),
        "class_shares": (np.bincount(labels, minlength=num_classes) / len(labels)).tolist(),
        "train_images": int(len(images)), "val_accuracy": val_acc,
        "feature_scale": float(1.0 / np.sqrt(np.mean(train_features ** 2) + 1e-12)),
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_with(weights, lambda p: save_file({k: v.contiguous() for k, v in net.state_dict().items()}, p))
    atomic_write_json(meta_path, meta)
    return Evaluator(net, meta)
