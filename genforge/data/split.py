"""Deterministic, seeded train/val/test split, stratified by class where there are labels.

The assignment depends only on each example's content key, its label and the seed, never on
file order, so the same data always lands in the same split (and the same dataset version).
"""

from __future__ import annotations

import hashlib

import numpy as np

from genforge.data.options import SplitOptions

SPLIT_NAMES = np.array(["train", "val", "test"])


def _order(keys: list[str], seed: int) -> np.ndarray:
    """A seeded, order-independent permutation: sort by hash(seed, key)."""
    ranks = [hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest() for k in keys]
    return np.array(sorted(range(len(keys)), key=ranks.__getitem__), dtype=np.int64)


def _allocate(n: int, val: float, test: float) -> tuple[int, int]:
    """How many of n go to val and test; each non-zero fraction gets at least one example
    once a group has three or more, so small classes still appear in every split."""
    n_val, n_test = int(round(n * val)), int(round(n * test))
    if n >= 3:
        n_val = max(n_val, 1) if val > 0 else 0
        n_test = max(n_test, 1) if test > 0 else 0
    while n_val + n_test >= n and (n_val or n_test):  # train keeps at least one
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(keys: list[str], labels: np.ndarray | None, opts: SplitOptions) -> np.ndarray:
    """Return an array of 'train' / 'val' / 'test', one per key."""
    n = len(keys)
    out = np.full(n, "train", dtype=object)
    if n == 0:
        return out.astype(str)
    groups: list[np.ndarray]
    if labels is not None and opts.stratify and (np.asarray(labels) >= 0).any():
        labels = np.asarray(labels)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    else:
        groups = [np.arange(n)]
    for idx in groups:
        order = idx[_order([keys[i] for i in idx], opts.seed)]
        n_val, n_test = _allocate(len(order), opts.val, opts.test)
        out[order[:n_val]] = "val"
        out[order[n_val:n_val + n_test]] = "test"
    return out.astype(str)


def split_summary(assignment: np.ndarray, labels: np.ndarray | None, classes: list[str], opts: SplitOptions) -> dict:
    sizes = {s: int((assignment == s).sum()) for s in SPLIT_NAMES}
    info: dict = {"seed": opts.seed, "fractions": {"val": opts.val, "test": opts.test}, "stratified": bool(labels is not None and opts.stratify and classes), "sizes": sizes}
    if labels is not None and classes:
        info["per_class"] = {s: {c: int(((assignment == s) & (labels == i)).sum()) for i, c in enumerate(classes)} for s in SPLIT_NAMES}
    return info
