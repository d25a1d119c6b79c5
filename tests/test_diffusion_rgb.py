"""Conditional correctness on RGB (slow): a conditional model trained on coloured circles, squares and
triangles draws the class it is asked for, as judged by a classifier trained on the real shapes."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from genforge.runs import load_run, parse_run_config
from genforge.train import train
from imagesets import SHAPES, shapes, write_images

CONFIG = {
    "name": "shapes",
    "data": {"dataset": "shapes"},
    "model": {"family": "diffusion", "channels": [32, 64, 128], "blocks": 1, "attention": [False, False, True]},
    "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "log_every": 100,
              "val_every": 500, "checkpoint_every": 500},
    "sample": {"steps": 25, "guidance": 4.0},
}
PER_CLASS = 60


def shape_classifier(x: np.ndarray, y: np.ndarray) -> nn.Module:
    """A small CNN on the real shapes (colours vary, so it must look at the outline)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 3))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    xt, yt = torch.from_numpy(x).float() / 127.5 - 1, torch.from_numpy(y)
    for epoch in range(12):
        for idx in torch.randperm(len(xt)).split(64):
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = net(torch.from_numpy(x).float() / 127.5 - 1).argmax(1).numpy()
    return float((pred == y).mean())


@pytest.mark.slow
def test_conditional_rgb_shapes_are_the_requested_class():
    t0 = time.time()
    x, y = shapes(3300, size=32, seed=0)
    write_images("shapes", x, y, list(SHAPES), val=300)
    judge = shape_classifier(x[:3000], y[:3000])
    real_acc = accuracy(judge, x[3000:], y[3000:])
    assert real_acc >= 0.96, f"the judge itself is unreliable: {real_acc:.3f} on real held-out shapes"

    run = load_run(train(parse_run_config(CONFIG)))
    t_train = time.time() - t0
    labels = [k for k in range(3) for _ in range(PER_CLASS)]
    images = run.sample_images(len(labels), labels=labels, seed=0)
    acc = accuracy(judge, images, np.array(labels))
    per_class = [accuracy(judge, images[k * PER_CLASS:(k + 1) * PER_CLASS], np.full(PER_CLASS, k)) for k in range(3)]
    print(f"\nRGB shapes 32x32: judge on real held-out {real_acc:.3f}; generated samples labelled as requested "
          f"{acc:.3f} (per class {', '.join(f'{n} {a:.2f}' for n, a in zip(SHAPES, per_class))}); "
          f"final train loss {run.info['final_loss']:.4f}; data+judge+train {t_train:.0f}s, total {time.time() - t0:.0f}s")
    assert acc >= 0.9
