"""Devices and precision: where modules run and in which float format, for training and sampling alike."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import nn

from genforge.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """`auto` -> bf16 where the hardware runs it natively, fp32 elsewhere; returns (precision, why).

    CPUs without avx512_bf16 or AMX emulate bf16 at about a quarter of fp32's speed (measured here),
    so bf16 there is slower, not faster. Under bf16 on a CPU with AMX, `kernels.Linear` still computes
    its small products in fp32, where AMX's fixed cost per call outweighs it (`kernels.MIN_BF16_MACS`)."""
    if precision != "auto":
        return precision, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} runs bf16 natively"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no native bf16"
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if native:
        return "bf16", f"the CPU lists {', '.join(native)}"
    return "fp32", "the CPU has no avx512_bf16 or AMX, so bf16 would be emulated (about 4x slower)"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for; float32 otherwise (no loss scaling is needed with bf16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def flush_denormals(on: bool) -> None:
    """Whether this thread's CPU arithmetic flushes subnormal floats (under 1.2e-38 in fp32 and bf16) to zero.

    x86 computes on a subnormal input or result in microcode, many times slower than on a normal
    float, and training makes them: Adam's first moment of a weight whose gradient is exactly 0 (the
    weights of a dead ReLU unit) shrinks by beta1 every step into the subnormal range, where rounding
    holds it above 0 for good. On txhousing's TVAE (batch 500), 45% of its weights' first moments were
    subnormal after 2,000 steps, and a step slowed from 4.0 to 5.1 ms over training with them, 4.0-4.7 without
    (one thread, 2-core Xeon); the whole fit (4,129 steps) took 18.1-18.3 s flushed, 20.5-20.6 s not. Nothing
    a network computes depends on a value that small (OpenVINO's CPU runtime has the same switch,
    `denormals_optimization`); `train.flush_denormals: false` keeps IEEE subnormals.

    The flag is per thread: an OpenMP worker started after this call inherits it, one already running
    keeps its own. The trainer sets it first, before `train.threads` sizes torch's pool, and leaves it
    set after the fit (torch has no getter for the previous state to restore)."""
    torch.set_flush_denormal(on)


def place(modules: dict[str, nn.Module], device: torch.device, channels_last: bool) -> dict[str, nn.Module]:
    for m in modules.values():
        m.to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)  # only 4-d weights change
    return modules
