"""Image metrics on plain arrays, so the CLI, the registry and the service compute them the same way.

Set-versus-set metrics take feature arrays (N, D) from any network: genforge's own evaluator
(`evaluator.py`) or the standard Inception (`fid.py`); the name of a figure must say which.
References: FID, Heusel et al. 2017 (arXiv 1706.08500); KID, Binkowski et al. 2018 (arXiv
1801.01401); precision/recall, Kynkaanniemi et al. 2019 (arXiv 1904.06991); Inception Score,
Salimans et al. 2016; near-copy test after Carlini et al. 2023 (arXiv 2301.13188).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be a (N, D) array with N >= 2, got shape {x.shape}")
    return x


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance: all FD needs, and what a cache of reference statistics stores."""
    x = _as_features(x, "features")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_eigh(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (negatives from round-off clipped to 0) and eigenvectors of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return np.clip(w, 0.0, None), v


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^1/2 for covariances S1, S2, through symmetric eigendecompositions only.

    S1 S2 is similar to S1^1/2 S2 S1^1/2, which is symmetric PSD, so the trace is the sum of the
    square roots of its eigenvalues. Unlike scipy's general `sqrtm` of S1 S2 this has no imaginary
    round-off, stays finite for singular covariances (few samples, dead features) without an
    offset, and uses no deprecated API (`sqrtm(..., disp=False)` fails from SciPy 1.18).
    """
    w, v = _psd_eigh(sigma1)
    root1 = (v * np.sqrt(w)) @ v.T
    return float(np.sqrt(_psd_eigh(root1 @ sigma2 @ root1)[0]).sum())


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the Frechet distance of two Gaussians."""
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between two feature sets (FID when the features are the standard Inception pool3)."""
    return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, mean and std over random subsets.

    Unlike FD it has no bias in the sample count, so it compares sets of different sizes fairly.
    """
    a, b = _as_features(a, "a"), _as_features(b, "b")
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    ta, tb = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    values = []
    for _ in range(subsets):
        x = ta[torch.from_numpy(rng.choice(len(a), m, replace=False))]
        y = tb[torch.from_numpy(rng.choice(len(b), m, replace=False))]
        # float32 kernels (fast), float64 sums (the MMD is a small difference of large sums)
        kxx, kyy, kxy = ((p @ q.T / d + 1).pow(3).double() for p, q in ((x, x), (y, y), (x, y)))
        # dropping the diagonals of kxx and kyy is what makes the estimate unbiased
        mmd = ((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd.item())
    return float(np.mean(values)), float(np.std(values))


def _pairwise_chunks(a: np.ndarray, b: np.ndarray, chunk: int = 1024):
    """Distance rows of a to all of b, a chunk at a time: memory stays O(chunk * len(b))."""
    tb = torch.as_tensor(b, dtype=torch.float64)
    for i in range(0, len(a), chunk):
        yield torch.cdist(torch.as_tensor(a[i:i + chunk], dtype=torch.float64), tb)


def _kth_neighbour_radius(x: np.ndarray, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point (index k skips the point itself)."""
    return torch.cat([d.kthvalue(k + 1, dim=1).values for d in _pairwise_chunks(x, x)])


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: torch.Tensor) -> float:
    """Share of points within the ball of at least one centre."""
    inside = torch.cat([(d <= radii[None, :]).any(dim=1) for d in _pairwise_chunks(points, centres)])
    return inside.double().mean().item()


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.: each set's manifold is the union of balls reaching each point's k-th neighbour.

    Precision: share of fake points inside the real manifold (fidelity).
    Recall: share of real points inside the fake manifold (diversity); a collapsed set scores ~0.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall needs more than k={k} points per set, got {len(real)} and {len(fake)}")
    precision = _share_inside(fake, real, _kth_neighbour_radius(real, k))
    recall = _share_inside(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall


def classifier_score(probs: np.ndarray) -> float:
    """Inception-Score style: exp(E_x KL(p(y|x) || p(y))), from 1 (one class or unsure) to K (sharp and balanced)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def class_coverage(pred: np.ndarray, num_classes: int, class_shares: np.ndarray | None = None,
                   min_fraction: float = 0.5) -> float:
    """Share of classes that receive at least `min_fraction` of their expected share of predictions.

    The expected share is the class's share in the training data (uniform when not given). Half of
    it is required, not one sample: a few stray misclassified images must not count as a class.
    """
    pred = np.asarray(pred)
    shares = np.full(num_classes, 1.0 / num_classes) if class_shares is None else np.asarray(class_shares, float)
    got = np.bincount(pred, minlength=num_classes)[:num_classes] / max(len(pred), 1)
    return float(np.mean(got >= min_fraction * shares))


def conditional_accuracy(pred: np.ndarray, requested: np.ndarray) -> float:
    """Share of conditional samples that the evaluator labels as the class they were asked for."""
    return float(np.mean(np.asarray(pred) == np.asarray(requested)))


def nearest_train_ratio(samples: np.ndarray, train: np.ndarray, *, neighbours: int = 50,
                        chunk: int = 512) -> np.ndarray:
    """Per sample: pixel L2 distance to the nearest training image / mean distance to the `neighbours` nearest.

    Relative, not absolute (Carlini et al. 2023): digit '1's sit close to each other in pixel space,
    so an absolute threshold would flag honest ones; a copy is much closer to one training image
    than to that image's neighbourhood. Images are compared as float pixels in [0, 1].
    """
    k = min(neighbours, len(train))
    t = torch.as_tensor(train.reshape(len(train), -1), dtype=torch.float32) / 255.0
    out = []
    for i in range(0, len(samples), chunk):
        s = torch.as_tensor(samples[i:i + chunk].reshape(-1, t.shape[1]), dtype=torch.float32) / 255.0
        d = torch.cdist(s, t).topk(k, dim=1, largest=False).values  # (B, k), ascending
        out.append((d[:, 0] / d.mean(1).clamp_min(1e-12)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


# On the 5,000 real MNIST digits (1,000 held out against 4,000 in train) the smallest ratio seen
# is 0.34; exact copies score 0 and copies with per-pixel noise of 5% of full scale score ~0.21.
MEMORISATION_RATIO = 0.25


def memorisation(samples: np.ndarray, train: np.ndarray, *, ratio: float = MEMORISATION_RATIO,
                 neighbours: int = 50) -> float:
    """Share of samples whose nearest training image is a near-copy (see `nearest_train_ratio`)."""
    return float(np.mean(nearest_train_ratio(samples, train, neighbours=neighbours) < ratio))
