"""Random numbers per row, drawn for a whole batch at once: a counter-based generator.

The family contract makes an item's output a function of its own seed, never of its batch-mates. The
image and text families keep that with one `torch.Generator` per item, which costs little beside a
denoising loop or a transformer; a table row costs microseconds, and a generator per row (and numpy's
SeedSequence per item for the rejection loop's candidates) took 60-75% of sampling time. Neither torch
nor numpy draws from a vector of seeds in one call, so this is written here: value j of stream s for
seed x is splitmix64's output function of key(x, s) + (j + 1) * golden, the sequence Java's
SplittableRandom draws for that key, computed for all rows and counters as one uint64 array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of x + golden: a bijection of uint64 that scatters neighbouring seeds
    (a new array; the steps run in place on it, a third faster than numpy's temporaries)."""
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        x = x + GOLDEN
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
            np.right_shift(x, np.uint64(shift), out=t)
            x ^= t
            if factor is not None:
                x *= np.uint64(factor)
    return x


def as_seeds(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """Seeds (any int, negative included) as uint64, their low 64 bits."""
    if isinstance(seeds, np.ndarray) and seeds.dtype == np.uint64:
        return seeds
    return np.array([int(s) & (2**64 - 1) for s in seeds], dtype=np.uint64)


def bits(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> np.ndarray:
    """uint64 (N, count): the first `count` values of stream `stream` of each row's seed. Streams keep
    a row's draws for different purposes (its z, its noise, ...) independent of each other."""
    key = mix(as_seeds(seeds) ^ mix(np.array([stream], dtype=np.uint64)))
    with np.errstate(over="ignore"):
        return mix(key[:, None] + np.arange(count, dtype=np.uint64) * GOLDEN)  # mix adds one more golden


def uniform(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> np.ndarray:
    """float64 (N, count) uniform on (0, 1), never 0 or 1: 32 random bits each (the two halves of
    one 64-bit value), centred in their cell."""
    half = bits(seeds, stream, (count + 1) // 2)
    u32 = half.view(np.uint32).reshape(len(half), -1)[:, :count]
    return (u32 + 0.5) * 2.0**-32


def normal(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> torch.Tensor:
    """float32 (N, count) standard normal, by Box-Muller on `uniform`'s: three times faster here than
    the inverse CDF in float64, and its tails reach 6.8 standard deviations."""
    half = (count + 1) // 2
    u = torch.from_numpy(uniform(seeds, stream, 2 * half)).float()
    r, angle = torch.sqrt(-2 * torch.log(u[:, :half])), (2 * torch.pi) * u[:, half:]
    return torch.cat([r * torch.cos(angle), r * torch.sin(angle)], 1)[:, :count]


def gumbel_of(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniforms u (clamped off 0 and 1, where a log is infinite): training's
    relaxed one-hot draw (`Segments.gumbel_softmax`) and sampling's Gumbel-max draws (`gumbel`)."""
    return -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))


def gumbel(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> torch.Tensor:
    """float32 (N, count) Gumbel(0, 1) noise from `uniform`'s: the argmax of logits plus it is a draw
    from softmax(logits)."""
    return gumbel_of(torch.from_numpy(uniform(seeds, stream, count))).float()


def categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """int64 (N,): row i's category drawn from its distribution probs[i] (rows need not sum to 1
    exactly) with its uniform u[i]."""
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), probs.shape[1] - 1)
