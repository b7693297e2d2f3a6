"""Device, precision and seeding decisions, made once per run.

Precision: ``auto`` means bf16 autocast on CUDA devices that support it and **fp32 on CPUs**. bf16 on
CPU is an explicit choice (``train.precision=bf16``): it is about 2.75x faster for a ResNet-18 on an
AVX512-BF16 CPU (bench/RESULTS.md) but not a safe default. On CPUs with AMX, oneDNN's bf16 matmul
kernels read past the valid K range of their inputs when K is not a multiple of 32 (e.g. a 7x7x3
ImageNet stem, K = 147) and rely on multiplying those bytes by zero; when the bytes left in memory
happen to hold NaN or Inf, ``NaN * 0`` leaks into the output (oneDNN issue #5717, fixed by PR #5723 in
July 2026, after the oneDNN 3.12 that PyTorch 2.13 ships). The garbage depends on what memory held
before, so runs are not repeatable and intermittently NaN. A warning repeats this when bf16 is
requested on such a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DeviceError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available) → a usable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for but this machine has no usable CUDA device "
                "(or PyTorch was built without CUDA); use --device cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DeviceError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX (where bf16 matmuls/convs run natively)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32 (see the module docstring for why CPUs get fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            raise DeviceError(f"{device} does not support bf16; use train.precision=fp32 (or auto)")
        return None
    if precision == "auto":
        return None
    if "amx_bf16" in cpu_flags():
        warnings.warn(
            "bf16 autocast on a CPU with AMX: oneDNN's AMX bf16 kernels can leak NaN from uninitialised "
            "memory (oneDNN issue #5717), making runs non-repeatable and intermittently NaN. Use "
            "train.precision=fp32. (Setting ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 before starting Python keeps "
            "oneDNN off the AMX kernels; that it avoids the bug is not verified here.)",
            stacklevel=2,
        )
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
