"""Every registered method × every registered encoder of a modality it serves honours the Method contract.

Parametrized over the registries, so a newly registered method or encoder (or modality) is tested
here the moment it exists. Everything is built through selfsup.build from the tiny data set of the
encoder's modality; sizes are kept tiny (CI has two CPU cores).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from tiny_data import build_parts, combinations, make_views

from selfsup.augment import VIEW_POLICIES
from selfsup.errors import SelfsupError
from selfsup.methods import METHODS, MethodOutput, StepInfo, Views
from selfsup.modalities import MODALITIES

pairs = pytest.mark.parametrize(("method_name", "encoder_name"), combinations())
STEP = StepInfo(step=0, total_steps=10)


@pairs
def test_forward_backward_and_state(method_name: str, encoder_name: str) -> None:
    method, policy, _, data = build_parts(method_name, encoder_name)
    views = make_views(policy, data)
    assert views.labels is not None and torch.equal(views.labels, data.labels)
    assert views.indices is not None and torch.equal(views.indices, torch.arange(len(data)))
    out = method(views, STEP)
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
    # Nothing reaches a teacher, a queue or any stop-gradient branch.
    leaked = [n for n, p in method.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not leaked, f"frozen parameters with a gradient: {leaked[:5]}"
    method.before_optimizer_step(STEP)
    method.on_optimizer_step(STEP)
    # The state dict must be storable with safetensors (no shared storage, tensors only).
    state = method.state_dict()
    restored = load_bytes(save_bytes({k: v.contiguous() for k, v in state.items()}))
    assert set(restored) == set(state)


@pairs
def test_parameter_groups_cover_every_trainable_parameter_once(method_name: str, encoder_name: str) -> None:
    method, _, _, _ = build_parts(method_name, encoder_name)
    groups = method.parameter_groups(weight_decay=0.1)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable


@pytest.mark.parametrize("method_name", METHODS.names())
def test_default_view_policies_are_registered_for_known_modalities(method_name: str) -> None:
    policies = METHODS.get(method_name).default_view_policies
    assert policies, f"{method_name} names no view policy for any modality"
    for modality, policy in policies.items():
        assert modality in MODALITIES
        assert VIEW_POLICIES.metadata(policy)["modality"] == modality


@pairs
def test_loss_is_deterministic_and_permutation_invariant(method_name: str, encoder_name: str) -> None:
    a, policy, _, data = build_parts(method_name, encoder_name)
    b, _, _, _ = build_parts(method_name, encoder_name)
    views = make_views(policy, data)
    loss = a(views, STEP).loss
    assert torch.equal(loss, b(views, STEP).loss)
    order = torch.randperm(views.batch_size, generator=torch.Generator().manual_seed(1))

    def permute(items: list | None) -> list | None:
        return None if items is None else [None if x is None else x[order] for x in items]

    permuted = Views(
        inputs=[x[order] for x in views.inputs],
        num_global=views.num_global,
        padding_masks=permute(views.padding_masks),
        masks=permute(views.masks),
        labels=None if views.labels is None else views.labels[order],
        indices=None if views.indices is None else views.indices[order],
        crop_starts=permute(views.crop_starts),
        aux={name: value[order] for name, value in views.aux.items()},
    )
    torch.testing.assert_close(b(permuted, STEP).loss, loss, rtol=1e-5, atol=1e-6)


@pairs
def test_a_batch_of_two_identical_samples_gives_a_finite_loss_and_gradients(
    method_name: str, encoder_name: str
) -> None:
    """The smallest batch, with both embeddings alike (a collapsed batch): no NaN / inf anywhere, or a
    clear error naming the batch (W-MSE cannot whiten two samples)."""
    method, policy, _, data = build_parts(method_name, encoder_name)
    twins = data.subset(torch.tensor([0, 0]))
    views = policy(twins.batch(torch.arange(2)), torch.Generator().manual_seed(0))
    try:
        out = method(views, STEP)
    except SelfsupError as error:  # the CLI prints it without a traceback
        assert "batch" in str(error)
        return
    assert torch.isfinite(out.loss), f"loss {out.loss}"
    out.loss.backward()
    bad = [n for n, p in method.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


@pairs
def test_state_changes_only_in_on_optimizer_step(method_name: str, encoder_name: str) -> None:
    """Buffers and frozen parameters (EMA teachers, queues, centers, prototypes' stop-gradient copies) stay
    as they are through any number of forward/backward passes (micro-batches) and change only in
    ``on_optimizer_step``, so gradient accumulation cannot change a method."""
    method, policy, _, data = build_parts(method_name, encoder_name)
    views = make_views(policy, data)

    def state() -> dict[str, torch.Tensor]:
        frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not p.requires_grad}
        buffers = {n: b.detach().clone() for n, b in method.named_buffers() if b.is_floating_point()}
        # BatchNorm running statistics follow every forward by design; they are not method state.
        statistics = ("running_mean", "running_var")
        return {n: v for n, v in {**frozen, **buffers}.items() if not n.endswith(statistics)}

    before = state()
    for _ in range(2):
        method(views, STEP).loss.backward()
    after = state()
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert not changed, f"state changed outside on_optimizer_step: {changed[:5]}"


@pytest.mark.parametrize("method_name", METHODS.names())
def test_method_options_are_plain_values(method_name: str) -> None:
    """Every option can come from YAML / key=value, so defaults must be plain data."""
    for name, parameter in METHODS.parameters(method_name).items():
        if name == "encoder":
            continue
        assert parameter.default is not parameter.empty, f"{method_name}.{name} needs a default"
        assert isinstance(parameter.default, int | float | str | bool | tuple | list | type(None))
