"""Device and precision decisions: fp32 by default on CPUs, bf16 only when asked, clear device errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from selfsup.errors import DeviceError
from selfsup.train import runtime


def test_auto_precision_is_fp32_on_every_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for flags in (frozenset(), frozenset({"avx512_bf16"}), frozenset({"amx_bf16", "avx512_bf16"})):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        assert runtime.resolve_precision("auto", torch.device("cpu")) is None
        assert runtime.resolve_precision("fp32", torch.device("cpu")) is None


def test_bf16_on_cpu_is_explicit_and_warns_on_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"amx_bf16", "avx512_bf16"}))
    with pytest.warns(UserWarning, match="oneDNN issue #5717"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.resolve_precision("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.resolve_precision("auto", cuda) is None
    with pytest.raises(DeviceError, match="does not support bf16"):
        runtime.resolve_precision("bf16", cuda)


def test_device_errors_are_user_errors() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA device"):
            runtime.resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        runtime.resolve_device("gpu0")
    with pytest.raises(DeviceError, match="not supported"):
        runtime.resolve_device("meta")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
