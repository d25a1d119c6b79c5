"""fp32 linear layers through oneDNN on the CPU, for training as well as inference.

PyTorch runs an fp32 `nn.Linear` on the CPU through MKL's sgemm, which takes its generic AVX2 path
on AMD processors. PyTorch also ships oneDNN, whose kernels use AVX-512 there. On a 2-core AMD EPYC
(Zen 5), one thread, a 500x300 by 300x256 product (a CTGAN layer at batch 500) took 775 us
through MKL and 357 us through oneDNN; the two backward products 823/361 and 868/413 us. No public
PyTorch API sends fp32 linears to oneDNN: its inductor compiler calls the op used here,
`torch.ops.mkldnn._linear_pointwise`, which also takes plain (and transposed) tensors. Hence this
small autograd function. Its backward is built from itself, so a second backward (CTGAN's
gradient penalty) runs through oneDNN as well.

oneDNN costs about 12 us more per call than MKL, which a product under MIN_MACS (rows x in x out)
does not earn back: those stay on F.linear, as does anything that is not fp32 on the CPU, or runs
under autocast.

MKL is Intel's library, and on Intel processors it is the faster one: on a 2-core Xeon with AVX-512
and AMX (2 threads), a 500x300 by 300x256 product took 449 us through MKL and 470 through oneDNN,
and the weight gradient's transposed product 561 against 800 us. So `linear` (training) uses oneDNN
only on AMD processors (`TRAINING`); elsewhere it is F.linear.

Under bf16 autocast, small products are computed in fp32 on CPUs with AMX (`SMALL_IN_FP32`). AMX's
bf16 kernels cost a fixed setup per call, and autocast casts each weight and fp32 input to bf16
first; MKL's fp32 is fast on these Intel processors. On a 2-core Xeon with AMX (one thread), forward
and backward of one layer (benchmarks/bench_linear.py, results/linear.md): 275x38 by 38x128 took 136 us
in fp32 and 193 under autocast, 27x256 by 256x256 (a CTGAN critic layer) 167 against 249, 256 by 1 (its
output) 48 against 145; at 270x393 by 393x256 autocast won, 670 against 1,234 us. The crossover lay
between 6.5 and 8 million multiply-adds (rows x in x out) in 21 shapes; products under MIN_BF16_MACS
stay fp32 there. On a CPU whose bf16
is avx512_bf16 without AMX (AMD EPYC), bf16 autocast was faster at every table size measured, so the
rule applies only where AMX is present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genforge.devices import cpu_flags

MIN_MACS = 100_000
MIN_BF16_MACS = 7_000_000
SMALL_IN_FP32 = "amx_bf16" in cpu_flags()

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The x86 vendor string (`AuthenticAMD`, `GenuineIntel`), or "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def trains_on_onednn(vendor: str) -> bool:
    """Whether `linear` should use oneDNN on this vendor's CPUs: where MKL's sgemm is the slower kernel."""
    return AVAILABLE and vendor == "AuthenticAMD"


TRAINING = trains_on_onednn(cpu_vendor())


def product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) @ w.T + b on oneDNN; w plain (out, in), a view of one, or reordered once by
    `torch.ops.mkldnn._reorder_linear_weight` (the GPT decoder's packed layers)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether oneDNN computes x (rows, in) @ w.T here: fp32 on the CPU, no autocast, enough work."""
    return AVAILABLE and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32 \
        and not torch.is_autocast_enabled("cpu") and x.shape[0] * w.numel() >= MIN_MACS


class _Linear(torch.autograd.Function):
    """x (rows, in) @ w (out, in).T + b, with the three products on oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return product(x, w, b)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = _Linear.apply(g, w.t(), None) if need_x else None  # g @ w
        gw = _Linear.apply(g.t(), x.t(), None) if need_w else None  # g.T @ x
        return gx, gw, g.sum(0) if need_b else None


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN where it is faster, and in fp32 where bf16 autocast would be slower
    (see the module's docstring)."""
    flat = x.reshape(-1, x.shape[-1])
    if SMALL_IN_FP32 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu") \
            and flat.shape[0] * w.numel() < MIN_BF16_MACS:
        with torch._C._DisableAutocast():  # torch.autocast(enabled=False) less its Python: 3.6 against 0.4 us a call
            return F.linear(x.to(w.dtype), w, b)
    if not (TRAINING and applies(flat, w)):
        return F.linear(x, w, b)
    y = _Linear.apply(flat, w, b)
    return y if x.dim() == 2 else y.view(*x.shape[:-1], w.shape[0])


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state dict keys) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
