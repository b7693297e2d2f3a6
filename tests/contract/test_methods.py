"""Every registered method × every registered encoder honours the Method contract.

Parametrized over the registries, so a newly registered method or encoder is tested here the
moment it exists. Sizes are kept tiny (CI has two CPU cores).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from selfsup.augment import VIEW_POLICIES
from selfsup.encoders import ENCODERS
from selfsup.methods import METHODS, Method, MethodOutput, Views

# Small versions of each registered component (fallback: defaults).
SMALL_ENCODER = {
    "resnet18": {"width": 8},
    "resnet18_narrow": {"width": 8},
    "resnet50": {"width": 4},
    "small_cnn": {"width": 4},
}
SMALL_METHOD = {
    "simclr": {"hidden_dim": 32, "projection_dim": 16},
    "byol": {"hidden_dim": 32, "projection_dim": 16},
}


def build(method: str, encoder: str, seed: int = 0) -> Method:
    torch.manual_seed(seed)
    backbone = ENCODERS.create(encoder, **SMALL_ENCODER.get(encoder, {}))
    return METHODS.get(method)(encoder=backbone, **SMALL_METHOD.get(method, {}))


def make_views(method: Method, batch: int = 6, size: int = 16, seed: int = 0) -> Views:
    images = torch.randint(
        0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    policy = VIEW_POLICIES.create(method.default_view_policy, size=size)
    return policy(images, torch.Generator().manual_seed(seed))


pairs = pytest.mark.parametrize(
    ("method_name", "encoder_name"), [(m, e) for m in METHODS.names() for e in ENCODERS.names()]
)


@pairs
def test_forward_backward_and_state(method_name: str, encoder_name: str) -> None:
    method = build(method_name, encoder_name)
    views = make_views(method)
    out = method(views, step=0)
    assert isinstance(out, MethodOutput)
    assert out.loss.ndim == 0 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert (
        out.embeddings is not None
        and out.embeddings.shape[0] == views.batch_size
        and not out.embeddings.requires_grad
    )
    assert all(not v.requires_grad for v in out.logs.values())
    out.loss.backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("encoder."))
    method.on_optimizer_step(1, 10)
    # The state dict must be storable with safetensors (no shared storage, tensors only).
    state = method.state_dict()
    restored = load_bytes(save_bytes({k: v.contiguous() for k, v in state.items()}))
    assert set(restored) == set(state)


@pytest.mark.parametrize("method_name", METHODS.names())
def test_default_view_policy_is_registered(method_name: str) -> None:
    assert METHODS.get(method_name).default_view_policy in VIEW_POLICIES


@pytest.mark.parametrize("method_name", METHODS.names())
def test_loss_is_deterministic_and_permutation_invariant(method_name: str) -> None:
    a, b = build(method_name, "small_cnn"), build(method_name, "small_cnn")
    views = make_views(a)
    loss = a(views, 0).loss
    assert torch.equal(loss, b(views, 0).loss)
    order = torch.randperm(views.batch_size, generator=torch.Generator().manual_seed(1))
    permuted = Views(crops=[c[order] for c in views.crops], num_global=views.num_global)
    torch.testing.assert_close(b(permuted, 0).loss, loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method_name", METHODS.names())
def test_method_options_are_plain_values(method_name: str) -> None:
    """Every option can come from YAML / key=value, so defaults must be plain data."""
    for name, parameter in METHODS.parameters(method_name).items():
        if name == "encoder":
            continue
        assert parameter.default is not parameter.empty, f"{method_name}.{name} needs a default"
        assert isinstance(parameter.default, int | float | str | bool | tuple | list | type(None))
