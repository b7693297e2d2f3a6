"""MoCo v2 / v3: the queue (order, wrap-around, once per optimizer step), the loss against its parts,
the momentum schedules, shuffle-BN's split batch norm, and the heads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from selfsup.encoders import ENCODERS
from selfsup.errors import ConfigError
from selfsup.losses import info_nce, l2_normalize
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.moco import KeyQueue, MoCoV2, MoCoV3, shuffle_permutation, shuffle_seed
from selfsup.split_batchnorm import SplitBatchNorm, convert_split_batchnorm
from selfsup.sync_batchnorm import convert_sync_batchnorm
from selfsup.train.schedules import cosine_momentum

WIDTH, BATCH = 6, 4


def _encoder() -> nn.Module:
    return ENCODERS.create("mlp", in_features=WIDTH, hidden_dim=12, num_layers=2)


def _mocov2(**options: object) -> MoCoV2:
    torch.manual_seed(0)
    defaults: dict[str, object] = {"hidden_dim": 16, "projection_dim": 8, "queue_size": 32}
    return METHODS.get("mocov2")(encoder=_encoder(), **{**defaults, **options})


def _views(seed: int, batch: int = BATCH) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views(inputs=[torch.randn(batch, WIDTH, generator=g) for _ in range(2)])


# --------------------------------------------------------------------------- queue


def test_queue_write_wraps_around() -> None:
    queue = KeyQueue(5, 2)
    queue.ptr.fill_(3)
    keys = torch.arange(8.0).view(4, 2)
    queue.enqueue(keys)
    assert torch.equal(queue.keys[[3, 4, 0, 1]], keys)
    assert int(queue.ptr) == 2


def test_a_write_longer_than_the_queue_keeps_the_last_keys_in_place() -> None:
    queue = KeyQueue(3, 1)
    queue.ptr.fill_(1)
    queue.enqueue(torch.arange(7.0)[:, None])  # rows 1, 2, 0, 1, 2, 0, 1 receive 0..6
    assert queue.keys.squeeze(1).tolist() == [5.0, 6.0, 4.0]
    assert int(queue.ptr) == (1 + 7) % 3


def test_initial_queue_is_unit_vectors_and_storable() -> None:
    queue = KeyQueue(10, 4)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(10))
    assert set(queue.state_dict()) == {"keys", "ptr"}


def test_accumulated_micro_batches_are_enqueued_in_order_once_per_step() -> None:
    method = _mocov2(base_momentum=1.0, final_momentum=1.0)
    before = method.queue.keys.clone()
    micro = [_views(1), _views(2)]
    expected = []
    for views in micro:
        expected.append(l2_normalize(method.key(views.inputs[1])))  # the key encoder of this step
        method(views, StepInfo(0, 10)).loss.backward()
    assert torch.equal(method.queue.keys, before) and int(method.queue.ptr) == 0
    method.on_optimizer_step(StepInfo(0, 10))
    assert int(method.queue.ptr) == 2 * BATCH
    torch.testing.assert_close(method.queue.keys[: 2 * BATCH], torch.cat(expected))
    assert torch.equal(method.queue.keys[2 * BATCH :], before[2 * BATCH :])


def test_symmetric_enqueues_view_one_then_view_two() -> None:
    method = _mocov2(symmetric=True, base_momentum=1.0, final_momentum=1.0)
    views = _views(3)
    k1, k2 = (l2_normalize(method.key(x)) for x in views.inputs)
    method(views, StepInfo(0, 10))
    method.on_optimizer_step(StepInfo(0, 10))
    assert int(method.queue.ptr) == 2 * BATCH
    torch.testing.assert_close(method.queue.keys[: 2 * BATCH], torch.cat([k1, k2]))


def test_the_loss_of_a_step_uses_the_queue_before_that_step() -> None:
    method = _mocov2(base_momentum=1.0, final_momentum=1.0)  # a frozen key encoder: only the queue moves
    views = _views(4)
    step = StepInfo(0, 10)
    first = method(views, step).loss
    second = method(views, step).loss  # a second micro-batch of the same step: the same queue
    torch.testing.assert_close(second, first)
    queue_before = method.queue.keys.clone()
    q = method.projector(method.encoder(views.inputs[0]).pooled)
    k = method.key(views.inputs[1])
    torch.testing.assert_close(first, info_nce(q, k, queue_before, 0.2))
    method.on_optimizer_step(step)
    after = method(views, StepInfo(1, 10)).loss
    assert not torch.allclose(after, first)
    torch.testing.assert_close(after, info_nce(q, k, method.queue.keys, 0.2))


def test_forward_in_eval_mode_stashes_nothing() -> None:
    method = _mocov2()
    method.eval()
    method(_views(5), StepInfo(0, 10))
    method.on_optimizer_step(StepInfo(0, 10))
    assert int(method.queue.ptr) == 0


# --------------------------------------------------------------------------- momentum


def test_mocov2_momentum_is_constant_by_default_and_cosine_as_an_option() -> None:
    method = _mocov2()
    method.on_optimizer_step(StepInfo(3, 10))
    assert method.last_momentum == pytest.approx(0.999)
    method = _mocov2(base_momentum=0.99, final_momentum=0.999)
    method.on_optimizer_step(StepInfo(5, 10))
    assert method.last_momentum == pytest.approx(cosine_momentum(5, 10, 0.99, 0.999))


def test_mocov2_key_encoder_follows_the_ema() -> None:
    method = _mocov2(base_momentum=0.5, final_momentum=0.5)
    key = {n: p.clone() for n, p in method.key.module.named_parameters()}
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    method.on_optimizer_step(StepInfo(0, 10))
    for name, value in method.key.module.named_parameters():
        if name.startswith("projector."):
            torch.testing.assert_close(value, key[name] + 0.5)


def test_mocov3_momentum_follows_the_authors_update_at_the_next_iteration() -> None:
    torch.manual_seed(0)
    method = MoCoV3(encoder=_encoder(), hidden_dim=16, projection_dim=8)
    for s in (0, 4, 9):
        method.on_optimizer_step(StepInfo(s, 10))
        # main_moco.py: m = 1 - (1 - m0)(1 + cos(pi t))/2 at iteration t = s + 1
        expected = 1 - 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (s + 1) / 10))) * (1 - 0.99)
        assert method.last_momentum == pytest.approx(float(expected))


# --------------------------------------------------------------------------- MoCo v3 loss and heads


def test_mocov3_loss_is_two_tau_times_both_directions() -> None:
    torch.manual_seed(0)
    method = MoCoV3(encoder=_encoder(), hidden_dim=16, projection_dim=8, temperature=0.3)
    views = _views(6)
    loss = method(views, StepInfo(0, 10)).loss
    x1, x2 = views.inputs
    q1 = method.predictor(method.projector(method.encoder(x1).pooled))
    q2 = method.predictor(method.projector(method.encoder(x2).pooled))
    k1, k2 = method.key(x1), method.key(x2)
    expected = 2 * 0.3 * (info_nce(q1, k2, temperature=0.3) + info_nce(q2, k1, temperature=0.3))
    torch.testing.assert_close(loss, expected)


def test_mocov3_heads_are_the_authors_mlps() -> None:
    torch.manual_seed(0)
    vit = MoCoV3(encoder=_encoder(), hidden_dim=16, projection_dim=8)
    linears = [m for m in vit.projector.layers if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert isinstance(vit.projector.layers[-1], nn.BatchNorm1d) and not vit.projector.layers[-1].affine
    assert isinstance(vit.predictor.layers[-1], nn.BatchNorm1d)
    assert all(m.bias is None for m in vit.predictor.layers if isinstance(m, nn.Linear))
    resnet = MoCoV3(
        encoder=_encoder(), hidden_dim=16, projection_dim=8, projector_layers=2, predictor_last_bn=False
    )
    assert len([m for m in resnet.projector.layers if isinstance(m, nn.Linear)]) == 2
    last = resnet.predictor.layers[-1]
    assert isinstance(last, nn.Linear) and last.bias is None


def test_mocov2_head_is_linear_relu_linear_with_biases() -> None:
    method = _mocov2()
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in method.projector if isinstance(m, nn.Linear))


# --------------------------------------------------------------------------- shuffle-BN


def test_split_batchnorm_equals_batchnorm_per_group() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    split = convert_split_batchnorm(copy.deepcopy(bn), num_splits=2)
    assert isinstance(split, SplitBatchNorm)
    out = split(x)
    references = [copy.deepcopy(bn) for _ in range(2)]
    expected = torch.cat([ref(chunk) for ref, chunk in zip(references, x.chunk(2), strict=True)])
    torch.testing.assert_close(out, expected)
    # Running statistics: the mean over the groups of what each group's BatchNorm would record.
    torch.testing.assert_close(
        split.running_mean, (references[0].running_mean + references[1].running_mean) / 2
    )
    torch.testing.assert_close(split.running_var, (references[0].running_var + references[1].running_var) / 2)
    split.eval(), bn.eval()
    bn.running_mean.copy_(split.running_mean), bn.running_var.copy_(split.running_var)
    torch.testing.assert_close(split(x), bn(x))


def test_split_batchnorm_survives_the_trainers_sync_bn_conversion() -> None:
    method = _mocov2(key_bn="shuffle", bn_splits=2)
    convert_sync_batchnorm(method)
    splits = [m for m in method.key.module.modules() if isinstance(m, SplitBatchNorm)]
    assert len(splits) == 2  # the mlp encoder's two batch norms; the MoCo v2 head has none


def test_split_batchnorm_rejects_uneven_groups() -> None:
    split = SplitBatchNorm(3, num_splits=3)
    with pytest.raises(ValueError, match="equal groups"):
        split(torch.randn(8, 3))
    with pytest.raises(ValueError, match="more than 1 value"):
        SplitBatchNorm(3, num_splits=4)(torch.randn(4, 3))


def test_shuffle_bn_keys_equal_batchnorm_over_the_permuted_groups_by_hand() -> None:
    method = _mocov2(key_bn="shuffle", bn_splits=2)
    views = _views(7, batch=8)
    step = StepInfo(3, 10)
    reference = copy.deepcopy(method._query_branch())  # ordinary BatchNorm, the key's weights at step 0
    method(views, step)
    keys = method.queue._pending[0]  # view 2's normalized keys of this micro-batch
    order = shuffle_permutation(8, shuffle_seed(3, 0, 1))
    shuffled = views.inputs[1][order]
    by_hand = torch.cat([reference(group) for group in shuffled.chunk(2)])
    expected = torch.empty_like(by_hand)
    expected[order] = by_hand
    torch.testing.assert_close(keys, l2_normalize(expected))
    # ...and not the keys of one BatchNorm over the whole batch.
    assert not torch.allclose(keys, l2_normalize(reference(views.inputs[1])), atol=1e-3)


def test_shuffle_permutations_differ_between_steps_micro_batches_and_views() -> None:
    seeds = {shuffle_seed(s, m, v) for s in range(3) for m in range(3) for v in range(2)}
    assert len(seeds) == 18
    assert torch.equal(torch.sort(shuffle_permutation(9, 5)).values, torch.arange(9))
    assert torch.equal(shuffle_permutation(9, 5), shuffle_permutation(9, 5))


def test_shuffle_bn_batch_must_divide_into_groups() -> None:
    method = _mocov2(key_bn="shuffle", bn_splits=3)
    with pytest.raises(ConfigError, match="bn_splits"):
        method(_views(8, batch=8), StepInfo(0, 10))


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="key_bn"):
        _mocov2(key_bn="local")
    with pytest.raises(ConfigError, match="momentum"):
        _mocov2(base_momentum=0.9, final_momentum=0.5)
    with pytest.raises(ConfigError, match="queue_size"):
        _mocov2(queue_size=0)
