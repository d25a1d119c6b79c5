"""The oneDNN linear layer: the same values and gradients as F.linear, second derivatives included
(CTGAN's gradient penalty), and a plain fallback where it does not apply."""

import platform

import pytest
import torch
import torch.nn.functional as F

from genforge import kernels

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="this torch has no oneDNN")


@pytest.fixture(autouse=True)
def _onednn_on_any_cpu(monkeypatch):
    """The layer's own behaviour is tested on every processor, not only where it is the default."""
    monkeypatch.setattr(kernels, "TRAINING", True)


def _pair(rows: int, i: int, o: int, bias: bool = True):
    g = torch.Generator().manual_seed(rows + i + o)
    x = torch.randn(rows, i, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(o, i, generator=g) / i ** 0.5).requires_grad_()
    b = torch.randn(o, generator=g).requires_grad_() if bias else None
    return x, w, b


@pytest.mark.parametrize("rows,i,o,bias", [(500, 300, 256, True), (50, 1500, 256, True), (64, 128, 128, False)])
def test_values_gradients_and_second_gradients_match_f_linear(rows, i, o, bias):
    x, w, b = _pair(rows, i, o, bias)
    assert rows * i * o >= kernels.MIN_MACS
    results = []
    for fn in (kernels.linear, F.linear):
        y = fn(x, w, b)
        (gx,) = torch.autograd.grad(y.tanh().sum(), x, create_graph=True)  # a gradient penalty's first pass
        penalty = ((gx.norm(dim=1) - 1) ** 2).mean()
        grads = torch.autograd.grad(penalty, [w, x] + ([b] if bias else []))
        results.append((y, gx, *grads))
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_module_keeps_nn_linear_state_and_steps_aside_when_it_does_not_apply():
    layer, plain = kernels.Linear(300, 256), torch.nn.Linear(300, 256)
    plain.load_state_dict(layer.state_dict())  # the same keys: checkpoints are interchangeable
    x = torch.randn(4, 10, 300)  # any leading shape
    assert torch.allclose(layer(x), plain(x), atol=1e-5)
    small = kernels.Linear(8, 4)
    assert small(torch.randn(3, 8)).grad_fn.name() != "_LinearBackward"  # under MIN_MACS: F.linear
    assert layer(torch.randn(500, 300)).grad_fn.name() == "_LinearBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(500, 300)).dtype == torch.bfloat16  # autocast: F.linear's bf16 path
    assert layer.double()(torch.randn(500, 300, dtype=torch.float64)).dtype == torch.float64


def test_onednn_trains_only_where_mkl_is_the_slower_kernel(monkeypatch):
    assert kernels.trains_on_onednn("AuthenticAMD")
    assert not kernels.trains_on_onednn("GenuineIntel") and not kernels.trains_on_onednn("")
    if platform.machine() == "x86_64" and platform.system() == "Linux":
        assert kernels.cpu_vendor() in ("AuthenticAMD", "GenuineIntel")
    monkeypatch.setattr(kernels, "TRAINING", False)
    assert kernels.Linear(300, 256)(torch.randn(500, 300)).grad_fn.name() != "_LinearBackward"


def test_small_products_stay_fp32_under_bf16_autocast_where_amx_is(monkeypatch):
    """Under the multiply-add threshold the product is fp32 (values and gradients of F.linear in fp32),
    a bf16 input included; above it, and on CPUs without AMX, autocast's bf16 as before."""
    monkeypatch.setattr(kernels, "TRAINING", False)
    monkeypatch.setattr(kernels, "SMALL_IN_FP32", True)
    small, large = kernels.Linear(38, 128), kernels.Linear(393, 256)
    assert 275 * 38 * 128 < kernels.MIN_BF16_MACS <= 270 * 393 * 256
    x = torch.randn(275, 38, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = small(x)
        h = small(x.bfloat16())  # the previous layer's bf16 output: computed in fp32 all the same
        assert large(torch.randn(270, 393)).dtype == torch.bfloat16
    assert y.dtype == h.dtype == torch.float32
    assert torch.equal(y, F.linear(x, small.weight, small.bias))
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)  # a penalty's double backward runs too
    assert torch.allclose(gx, 2 * y @ small.weight, rtol=1e-5, atol=1e-5)
    torch.autograd.grad(gx.square().sum(), small.weight)
    monkeypatch.setattr(kernels, "SMALL_IN_FP32", False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert small(x).dtype == torch.bfloat16
