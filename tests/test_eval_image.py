"""Image metrics on arrays with answers known in closed form."""

import numpy as np
import pytest

from genforge.evaluation import image

rng = np.random.default_rng(0)


def test_frechet_distance_closed_form():
    a = rng.normal(size=(4000, 4))
    assert image.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, means 3 apart on one axis: FD = 3^2
    shifted = a + np.array([3.0, 0, 0, 0])
    assert image.frechet_distance(a, shifted) == pytest.approx(9.0, rel=1e-6)
    # Gaussians N(0, I) and N(0, 4I) in 4-d: FD = 4 * (1 + 4 - 2 * 2) = 4
    assert image.frechet_distance_from_stats(np.zeros(4), np.eye(4), np.zeros(4), 4 * np.eye(4)) == pytest.approx(4.0)
    # a collapsed set (zero covariance) is handled, not NaN
    assert np.isfinite(image.frechet_distance(a, np.repeat(a[:1], 100, 0)))


def _random_covariance(d: int, n: int) -> np.ndarray:
    """Sample covariance of n correlated points: singular when n <= d, as with few samples."""
    return np.cov(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), rowvar=False)


def test_trace_sqrt_product_matches_sqrtm_and_closed_form():
    import warnings

    import scipy.linalg

    for d, n in ((8, 100), (64, 300), (64, 40)):  # the last two: full rank, then singular
        s1, s2 = _random_covariance(d, n), _random_covariance(d, n)
        with warnings.catch_warnings():  # sqrtm warns on singular input; it is only the yardstick here
            warnings.simplefilter("ignore")
            expected = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
        assert image.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-6), (d, n)
    # commuting covariances (one rotation, two spectra): Tr (S1 S2)^1/2 = sum sqrt(a_i b_i)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    a, b = rng.uniform(0, 5, 16), rng.uniform(0, 5, 16)
    a[:4] = 0.0  # rank-deficient, so tiny negative eigenvalues from round-off must be clipped
    assert image.trace_sqrt_product(q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-6)


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_otherwise():
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, _ = image.kernel_inception_distance(a, b, subsets=20, subset_size=300)
    diff, _ = image.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=300)
    assert abs(same) < 0.05 and diff > 1.0


def test_precision_recall_extremes():
    real = rng.normal(size=(300, 5))
    assert image.precision_recall(real, real.copy()) == (1.0, 1.0)
    p, r = image.precision_recall(real, real + 100.0)
    assert (p, r) == (0.0, 0.0)
    # one point repeated: inside the real manifold (precision 1) but reaching no real point beyond itself
    p, r = image.precision_recall(real, np.repeat(real[:1], 300, 0))
    assert p == 1.0 and r == pytest.approx(1 / 300)
    with pytest.raises(ValueError, match="more than k=3"):
        image.precision_recall(real[:3], real)


def test_classifier_score_coverage_and_accuracy():
    sharp = np.eye(10)[np.arange(1000) % 10]
    assert image.classifier_score(sharp) == pytest.approx(10.0, rel=1e-6)
    assert image.classifier_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    assert image.classifier_score(np.eye(10)[np.zeros(100, int)]) == pytest.approx(1.0)
    pred = np.array([0] * 50 + [1] * 45 + [2] * 5)  # class 2 gets 5%, under half of its 33% share
    assert image.class_coverage(pred, 3) == pytest.approx(2 / 3)
    assert image.class_coverage(pred, 3, class_shares=np.array([0.45, 0.45, 0.1])) == 1.0
    assert image.conditional_accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75


def test_memorisation_flags_copies_not_neighbours():
    train = rng.integers(0, 256, size=(200, 1, 8, 8), dtype=np.uint8)
    assert image.memorisation(train[:50], train) == 1.0
    noisy = np.clip(train[:50].astype(int) + rng.integers(-3, 4, size=(50, 1, 8, 8)), 0, 255).astype(np.uint8)
    assert image.memorisation(noisy, train) == 1.0
    fresh = rng.integers(0, 256, size=(50, 1, 8, 8), dtype=np.uint8)
    assert image.memorisation(fresh, train) == 0.0


def test_evaluator_is_cached_by_dataset_version_and_deterministic():
    from imagesets import digits, write_images

    from genforge.data.store import open_dataset
    from genforge.evaluation.evaluator import EvaluatorConfig, evaluator_dir, load_or_train_evaluator, train_evaluator

    x, y = digits(300)
    ds = open_dataset(write_images("few", x, y, [str(i) for i in range(10)], val=50))
    first = load_or_train_evaluator(ds)
    assert (evaluator_dir(ds, EvaluatorConfig()) / "evaluator.safetensors").is_file() and first.meta["dataset"] == ds.ref
    again = load_or_train_evaluator(ds)  # from the cache: same features
    assert np.array_equal(first.embed(x[:20])[0], again.embed(x[:20])[0])
    retrained = train_evaluator(x[:250], y[:250], 10)  # the train split again: same seed, same weights
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(retrained.state_dict().values(), first.net.state_dict().values()))


def test_unlabeled_dataset_measures_memorisation_only():
    from genforge.data.store import DatasetWriter, open_dataset
    from genforge.evaluation.pipeline import ImageReference

    w = DatasetWriter("plain", "image")
    images = rng.integers(0, 256, size=(60, 3, 8, 8), dtype=np.uint8)
    w.write_image_shard("train", images, np.full(60, -1))
    manifest, _ = w.commit()
    ref = ImageReference.for_dataset(open_dataset(manifest.ref))
    assert ref.evaluator is None and "no class labels" in ref.unavailable
    assert ref.score(images[:10]) == {"n": 10, "memorisation": 1.0}
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, 8, 8\) like the train split, got uint8 \(10, 1, 8, 8\)"):
        ref.score(images[:10, :1])
