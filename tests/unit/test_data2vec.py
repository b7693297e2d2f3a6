"""data2vec against its definition (Baevski et al. 2022; fairseq examples/data2vec/models/data2vec_audio.py).

The loss on a hand-computed case, the instance norm over valid frames only, targets and loss equal to a
direct computation with the teacher, padding that never changes the loss, fairseq's EMA schedule and its
update once per optimizer step, no gradient into the teacher, the global normalisation under data
parallelism, and fairseq's collapse stop. A small token encoder defined here stands in for the speech
encoder; the last tests run the real wav2vec2 encoder when it is installed.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import selfsup.dist
from selfsup.encoders.base import Encoder, EncoderOutput, pool_hidden_state, pool_unmasked
from selfsup.errors import ConfigError
from selfsup.losses import data2vec_regression, data2vec_targets, instance_norm_over_time
from selfsup.losses.data2vec import mean_std, mean_std_from_moments
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.data2vec import CollapseError, Data2Vec, ema_decay_at

# -- a stand-in token encoder -------------------------------------------------------------------------


class _Block(nn.Module):
    """Post-LN block returning ``(output, ffn_output)``, the FFN output before dropout and residual."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor]:
        a = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        x = self.norm1(x + self.dropout(a))
        f = self.fc2(F.gelu(self.fc1(x)))
        return self.norm2(x + self.dropout(f)), f


class TokenEncoder(Encoder):
    """``(B, T, C)`` frames → Linear stem → masked frames replaced by ``mask_embedding`` → blocks.
    The generic path: only ``forward`` (data2vec then averages the block outputs)."""

    modality = "audio"
    mask_mode = "replace"

    def __init__(self, in_dim: int = 5, dim: int = 8, layers: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = dim, layers
        self.stem = nn.Linear(in_dim, dim)
        self.mask_embedding = nn.Parameter(torch.rand(dim))
        self.blocks = nn.ModuleList(_Block(dim, dropout) for _ in range(layers))

    def layer_id(self, name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 0  # stem, mask embedding

    def _local(self, x: Tensor, padding_mask: Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(features=x, projected=self.stem(x), padding_mask=padding_mask)

    def _context(
        self, projected: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> SimpleNamespace:
        h = projected
        if mask is not None:
            h = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(h.dtype), h)
        if padding_mask is not None:
            h = h.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        hidden, ffn = [h], []
        for block in self.blocks:
            h, f = block(h, padding_mask)
            hidden.append(h)
            ffn.append(f)
        out = EncoderOutput(pool_hidden_state(h, padding_mask), h, tuple(hidden), padding_mask)
        return SimpleNamespace(output=out, ffn_outputs=tuple(ffn))

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        local = self._local(x, padding_mask)
        return self._context(local.projected, padding_mask=local.padding_mask, mask=mask).output


class SplitTokenEncoder(TokenEncoder):
    """The same with the speech encoders' two halves (``ffn_outputs`` = fairseq's ``layer_results``)."""

    local_features = TokenEncoder._local
    contextualize = TokenEncoder._context


def _batch(lengths: list[int], total: int | None = None, seed: int = 0, in_dim: int = 5):
    """Frames ``(B, T, C)`` (random values at padding too), padding mask, and a mask on valid frames."""
    g = torch.Generator().manual_seed(seed)
    total = total or max(lengths)
    x = torch.randn(len(lengths), total, in_dim, generator=g)
    padding = torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]
    mask = (torch.rand(len(lengths), total, generator=g) < 0.5) & ~padding
    mask[:, 0] = True
    return x, padding, mask


def _views(x: Tensor, padding: Tensor | None, mask: Tensor) -> Views:
    return Views(inputs=[x], num_global=1, padding_masks=[padding], masks=[mask])


def _method(split: bool = True, seed: int = 0, dropout: float = 0.0, **options) -> Data2Vec:
    torch.manual_seed(seed)
    encoder = (SplitTokenEncoder if split else TokenEncoder)(dropout=dropout)
    options.setdefault("top_k", 2)
    return METHODS.create("data2vec", encoder=encoder, **options)


def _sgd_steps(method: Data2Vec, views: Views, steps: int, lr: float = 0.5) -> None:
    """A few optimizer steps with the teacher updated after each: student and teacher drift apart."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr)
    for k in range(steps):
        optimizer.zero_grad()
        method(views, StepInfo(k, 10)).loss.backward()
        optimizer.step()
        method.on_optimizer_step(StepInfo(k, 10))


def _instance_norm_reference(layer: Tensor, lengths: list[int]) -> Tensor:
    """F.instance_norm on each sample's valid frames alone (what a batch of one would give)."""
    out = torch.zeros_like(layer)
    for b, n in enumerate(lengths):
        out[b, :n] = F.instance_norm(layer[b : b + 1, :n].transpose(1, 2)).transpose(1, 2)[0]
    return out


# -- the pure functions -------------------------------------------------------------------------------


def test_regression_loss_on_a_hand_computed_case() -> None:
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 2.0]])
    # Squared errors per position: 0+1+4+9 = 14 and 1+1+0+4 = 6; sum 20; x 1/sqrt(4); / 2 positions.
    assert data2vec_regression(pred, target).item() == pytest.approx(5.0)
    assert data2vec_regression(pred, target, loss_scale=1.0).item() == pytest.approx(10.0)
    assert data2vec_regression(pred, target, normalizer=4.0).item() == pytest.approx(2.5)
    # Smooth L1 (beta 1): |d| = 0,1,2,3 -> 0, 0.5, 1.5, 2.5 and 1,1,0,2 -> 0.5, 0.5, 0, 1.5: 7 / 2 / 2.
    assert data2vec_regression(pred, target, loss_beta=1.0).item() == pytest.approx(1.75)
    # beta 2: 0.5 d^2 / 2 below 2, |d| - 1 above: 0 + .25 + 1 + 2 = 3.25 and .25 + .25 + 0 + 1 = 1.5.
    assert data2vec_regression(pred, target, loss_beta=2.0).item() == pytest.approx(4.75 / 2 / 2)


def test_regression_loss_gradient_and_no_gradient_into_the_target() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 16, generator=g, requires_grad=True)
    target = torch.randn(6, 16, generator=g, requires_grad=True)
    data2vec_regression(pred, target).backward()
    # d/dp of sum (p - t)^2 / sqrt(D) / N = 2 (p - t) / (sqrt(16) * 6)
    torch.testing.assert_close(pred.grad, 2 * (pred - target).detach() / (4 * 6))
    assert target.grad is None


def test_instance_norm_is_torch_without_padding_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, generator=g) * 3 + 1
    expected = F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(instance_norm_over_time(x), expected)
    lengths = [7, 4, 2]
    padding = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]
    out = instance_norm_over_time(x, padding)
    torch.testing.assert_close(out, _instance_norm_reference(x, lengths))
    assert torch.all(out[padding] == 0)
    # Other values at padding change nothing; fairseq's F.instance_norm over all frames would.
    other = x.masked_fill(padding.unsqueeze(-1), 50.0)
    torch.testing.assert_close(instance_norm_over_time(other, padding), out)
    assert not torch.allclose(F.instance_norm(other.transpose(1, 2)).transpose(1, 2)[1, :4], out[1, :4])


@pytest.mark.parametrize(
    "norms",
    [
        {},  # audio: instance norm per layer only
        {"instance_norm_target_layer": False, "layer_norm_target_layer": True},  # text
        {"instance_norm_target_layer": False, "layer_norm_targets": True},  # vision v1
        {"instance_norm_target_layer": True, "layer_norm_target_layer": True, "instance_norm_targets": True},
    ],
)
def test_targets_follow_fairseqs_order_of_normalisations(norms: dict[str, bool]) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = [6, 3]
    padding = torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None]
    layers = [torch.randn(2, 6, 5, generator=g) * (i + 1) for i in range(3)]
    options = {"instance_norm_target_layer": True, **norms}
    normed = []
    for layer in layers:
        if options["instance_norm_target_layer"]:
            layer = _instance_norm_reference(layer, lengths)
        if options.get("layer_norm_target_layer"):
            layer = F.layer_norm(layer, (5,))
        normed.append(layer)
    expected = sum(normed) / 3
    if options.get("layer_norm_targets"):
        expected = F.layer_norm(expected, (5,))
    if options.get("instance_norm_targets"):
        expected = _instance_norm_reference(expected, lengths)
    out = data2vec_targets(layers, padding, **options)
    valid = ~padding
    torch.testing.assert_close(out[valid], expected[valid])


def test_mean_std_is_fairseqs_compute_var_and_adds_up_over_shards() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(10, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = torch.sqrt(y.double().var(dim=0) + 1e-6).mean()
    torch.testing.assert_close(mean_std(y), expected)
    a, b = y[:3].double(), y[3:].double()
    moments = [torch.tensor(10), a.sum(0) + b.sum(0), a.square().sum(0) + b.square().sum(0)]
    torch.testing.assert_close(mean_std_from_moments(*moments), expected)
    assert torch.isnan(mean_std(y[:1]))


def test_ema_schedule_is_fairseqs_annealed_rate() -> None:
    # get_annealed_rate(start, end, k, K) = end - (end - start) * (1 - k / K), then end from K on.
    assert ema_decay_at(0, 0.999, 0.9999, 30000) == pytest.approx(0.999)
    assert ema_decay_at(15000, 0.999, 0.9999, 30000) == pytest.approx(0.99945)
    assert ema_decay_at(3000, 0.999, 0.9999, 30000) == pytest.approx(0.99909)
    assert ema_decay_at(30000, 0.999, 0.9999, 30000) == 0.9999
    assert ema_decay_at(400000, 0.999, 0.9999, 30000) == 0.9999
    method = _method(ema_decay=0.5, ema_end_decay=0.9)
    assert method.decay(5, total_steps=10) == pytest.approx(0.7)  # annealed over the run by default
    assert _method(ema_anneal_end_step=4).decay(5, total_steps=10) == 0.9999


# -- the method ---------------------------------------------------------------------------------------


def test_defaults_are_fairseqs_audio_base() -> None:
    """fairseq config/audio/pretraining/base_librispeech.yaml and Data2VecAudioConfig."""
    params = METHODS.parameters("data2vec")
    defaults = {name: p.default for name, p in params.items() if name != "encoder"}
    assert defaults["top_k"] == 8 and defaults["loss_beta"] == 0.0 and defaults["loss_scale"] is None
    assert defaults["instance_norm_target_layer"] is True
    assert not any(
        defaults[k] for k in ("layer_norm_target_layer", "instance_norm_targets", "layer_norm_targets")
    )
    assert (defaults["ema_decay"], defaults["ema_end_decay"]) == (0.999, 0.9999)
    assert defaults["ema_transformer_only"] is True
    assert (defaults["min_target_var"], defaults["min_pred_var"], defaults["var_check_after"]) == (
        0.1,
        0.01,
        5000,
    )
    assert Data2Vec.default_view_policies["audio"] == "speech_mask"


@pytest.mark.parametrize("split", [True, False], ids=["ffn_outputs", "block_outputs"])
def test_loss_equals_a_direct_computation_with_the_teacher(split: bool) -> None:
    """Targets from the EMA teacher in eval mode on the unmasked input (dropout would change them),
    instance-normalised over valid frames, averaged over the top K; the head on the student's masked
    output; squared error / sqrt(D) averaged over masked valid frames."""
    lengths = [9, 6, 4]
    x, padding, mask = _batch(lengths)
    views = _views(x, padding, mask)
    method = _method(split=split, dropout=0.2, ema_decay=0.5, ema_end_decay=0.5)
    _sgd_steps(method, views, 2)  # the teacher is no longer a copy of the student
    method.train()

    torch.manual_seed(5)
    out = method(views, StepInfo(2, 10))
    torch.manual_seed(5)
    student = method.encoder(x, padding_mask=padding, mask=mask)  # same dropout draws, same order
    teacher = copy.deepcopy(method.teacher.module).eval()
    with torch.no_grad():
        if split:
            layers = teacher.contextualize(method.encoder.stem(x), padding_mask=padding).ffn_outputs[-2:]
        else:
            layers = teacher(x, padding_mask=padding).hidden_states[-2:]
        targets = sum(_instance_norm_reference(t, lengths) for t in layers) / 2
    valid = mask & ~padding
    pred = method.head(student.last_hidden_state[valid])
    expected = (pred - targets[valid]).square().sum(dim=-1).mean() / math.sqrt(8)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logs["target_var"], mean_std(targets[valid]).float())
    torch.testing.assert_close(out.logs["pred_var"], mean_std(pred).float())
    # The teacher really differs from the student: the student's own unmasked layers give other targets.
    own = method.encoder.eval()(x, padding_mask=padding).hidden_states[-2:]
    assert not torch.allclose(sum(_instance_norm_reference(t.detach(), lengths) for t in own) / 2, targets)
    # features: the student's output over the frames it did not mask.
    expected_features = pool_unmasked(student.last_hidden_state.detach(), padding, mask)
    torch.testing.assert_close(out.features, expected_features)


@pytest.mark.parametrize("split", [True, False], ids=["ffn_outputs", "block_outputs"])
def test_padding_never_changes_the_loss(split: bool) -> None:
    lengths = [9, 6, 4]
    x, padding, mask = _batch(lengths)
    method = _method(split=split)
    method.eval()  # no dropout: the two batches must give the same numbers
    base = method(_views(x, padding, mask), StepInfo(0, 10))
    # The same clips padded to 15 frames with other values at padding; the same masks on valid frames.
    longer = torch.randn(3, 15, 5) * 10
    longer[:, :9] = torch.where(padding.unsqueeze(-1), longer[:, :9], x)
    long_padding = torch.arange(15)[None, :] >= torch.tensor(lengths)[:, None]
    long_mask = torch.zeros(3, 15, dtype=torch.bool)
    long_mask[:, :9] = mask
    padded = method(_views(longer, long_padding, long_mask), StepInfo(0, 10))
    torch.testing.assert_close(padded.loss, base.loss)
    for key in ("target_var", "pred_var", "masked_fraction"):
        torch.testing.assert_close(padded.logs[key], base.logs[key])
    torch.testing.assert_close(padded.features, base.features)


def test_teacher_changes_only_in_on_optimizer_step() -> None:
    method = _method(ema_decay=0.5, ema_end_decay=0.9)
    x, padding, mask = _batch([8, 5, 7, 6])
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    for micro in range(3):  # accumulated micro-batches, then the optimizer step
        half = slice(2 * (micro % 2), 2 * (micro % 2) + 2)
        method(_views(x[half], padding[half], mask[half]), StepInfo(4, 10)).loss.backward()
    optimizer.step()
    after_forward = method.teacher.state_dict()
    assert all(torch.equal(after_forward[k], v) for k, v in before.items())
    teacher_before = {n: p.clone() for n, p in method.teacher.module.named_parameters()}
    method.on_optimizer_step(StepInfo(4, 10))
    # After optimizer step 4, five updates were made: tau = 0.9 - 0.4 * (1 - 5/10) = 0.7.
    for name, s in method.encoder.named_parameters():
        t = dict(method.teacher.module.named_parameters())[name]
        if name.startswith("blocks."):
            torch.testing.assert_close(t, 0.7 * teacher_before[name] + 0.3 * s.detach())
        else:  # the stem and mask embedding track the student (fairseq: shared / skip_keys)
            assert torch.equal(t, s.detach()), name
    assert not torch.equal(teacher_before["blocks.0.fc1.weight"], method.teacher.module.blocks[0].fc1.weight)
    # Logged decay: the one that made the current teacher, a pure function of the step.
    assert method(_views(x, padding, mask), StepInfo(5, 10)).logs["ema_decay"].item() == pytest.approx(0.7)


def test_ema_transformer_only_false_averages_everything() -> None:
    method = _method(ema_transformer_only=False, ema_decay=0.5, ema_end_decay=0.5)
    with torch.no_grad():
        method.encoder.stem.weight.add_(1.0)
    old = method.teacher.module.stem.weight.clone()
    method.on_optimizer_step(StepInfo(0, 10))
    torch.testing.assert_close(
        method.teacher.module.stem.weight, 0.5 * old + 0.5 * method.encoder.stem.weight
    )
    x, padding, mask = _batch([6, 4])
    assert torch.isfinite(method(_views(x, padding, mask), StepInfo(1, 10)).loss)


def test_no_gradient_reaches_the_teacher() -> None:
    method = _method()
    method.train()
    assert not method.teacher.module.training  # fairseq: self.ema.model.eval() before every teacher pass
    x, padding, mask = _batch([7, 5])
    out = method(_views(x, padding, mask), StepInfo(0, 10))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    for name, p in method.named_parameters():
        if not name.startswith("teacher."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not out.features.requires_grad and not any(v.requires_grad for v in out.logs.values())


def test_data_parallel_losses_average_to_the_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks with different numbers of masked frames: the mean of their losses and gradients (what
    DDP optimises) equals one process on the whole batch, as fairseq's global sample-size normalisation."""
    x, padding, mask = _batch([9, 6, 4, 8], seed=3)
    mask[2:] &= torch.rand(2, 9, generator=torch.Generator().manual_seed(1)) < 0.3  # fewer on rank 1
    method = _method()
    method.eval()
    full = method(_views(x, padding, mask), StepInfo(0, 10)).loss
    grads_full = torch.autograd.grad(full, method.head.weight)[0]

    shards = [slice(0, 2), slice(2, 4)]
    stats: list[Tensor] = []
    monkeypatch.setattr(selfsup.dist, "world_size", lambda: 2)
    monkeypatch.setattr(selfsup.dist, "all_reduce_mean", lambda t: stats.append(t.clone()) or t)
    for s in shards:  # first pass: record what each rank contributes to the all-reduce
        method(_views(x[s], padding[s], mask[s]), StepInfo(0, 10))
    total = stats[0] + stats[1]
    monkeypatch.setattr(selfsup.dist, "all_reduce_mean", lambda t: total / 2)
    losses = [method(_views(x[s], padding[s], mask[s]), StepInfo(0, 10)) for s in shards]
    mean = (losses[0].loss + losses[1].loss) / 2
    torch.testing.assert_close(mean, full)
    torch.testing.assert_close(torch.autograd.grad(mean, method.head.weight)[0], grads_full)
    assert losses[0].logs["target_var"] == losses[1].logs["target_var"]  # global, as fairseq's compute_var


def test_collapse_stops_training_as_fairseq_does() -> None:
    """Identical frames everywhere: instance-normalised targets are 0, predictions constant."""
    method = _method(var_check_after=2)
    x = torch.ones(2, 6, 5)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    views = _views(x, None, mask)
    out = method(views, StepInfo(2, 10))  # fairseq checks once num_updates > 5000 (here > 2)
    assert out.logs["target_var"].item() == pytest.approx(1e-3)  # sqrt(0 + 1e-6)
    with pytest.raises(CollapseError, match="target std"):
        method(views, StepInfo(3, 10))
    with pytest.raises(CollapseError, match="prediction std"):
        _method(var_check_after=2, min_target_var=0.0)(views, StepInfo(3, 10))
    method.eval()
    method(views, StepInfo(3, 10))  # evaluation never stops
    _method(var_check_after=2, min_target_var=0.0, min_pred_var=0.0)(views, StepInfo(3, 10))


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        _method(top_k=0)
    assert _method(top_k=8).top_k == 3  # all 3 layers, as fairseq's min_layer = 3 - 8 < 0 gives
    with pytest.raises(ConfigError, match="ffn"):
        _method(split=False, target_layer="ffn")
    with pytest.raises(ConfigError, match="ema_decay"):
        _method(ema_decay=0.9, ema_end_decay=0.8)
    plain = TokenEncoder()
    plain.mask_mode = "none"
    with pytest.raises(ConfigError, match="mask_mode"):
        Data2Vec(plain, top_k=2)
    x, padding, mask = _batch([5, 4])
    with pytest.raises(ValueError, match="token mask"):
        _method()(Views(inputs=[x], num_global=1, padding_masks=[padding]), StepInfo(0, 10))
    with pytest.raises(ValueError, match="token grid"):
        _method()(_views(x, padding, mask[:, :3]), StepInfo(0, 10))


def test_block_targets_on_the_split_encoder_use_hidden_states() -> None:
    method = _method(target_layer="block")
    method.eval()
    x, _, mask = _batch([6, 6])
    out = method(_views(x, None, mask), StepInfo(0, 10))
    with torch.no_grad():
        layers = method.teacher.module(x).hidden_states[-2:]
        targets = sum(_instance_norm_reference(t, [6, 6]) for t in layers) / 2
        pred = method.head(method.encoder(x, mask=mask).last_hidden_state[mask])
    torch.testing.assert_close(out.loss, (pred - targets[mask]).square().sum(-1).mean() / math.sqrt(8))


class PrefixTokenEncoder(TokenEncoder):
    """A ViT-like layout: a class token before the N tokens that the (B, N) mask covers."""

    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(8))

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        h = self.stem(x)
        if mask is not None:
            h = torch.where(mask.unsqueeze(-1), self.mask_embedding, h)
        h = torch.cat([self.cls_token.expand(len(x), 1, -1), h], dim=1)
        hidden = [h]
        for block in self.blocks:
            h = block(h, None)[0]
            hidden.append(h)
        return EncoderOutput(h[:, 0], h, tuple(hidden))


def test_prefix_tokens_are_left_out_as_fairseq_vision_drops_the_class_token() -> None:
    torch.manual_seed(0)
    method = Data2Vec(
        PrefixTokenEncoder(), top_k=2, instance_norm_target_layer=False, layer_norm_targets=True
    )
    method.eval()
    x, _, mask = _batch([6, 6])
    out = method(_views(x, None, mask), StepInfo(0, 10))
    with torch.no_grad():
        layers = [t[:, 1:] for t in method.teacher.module(x).hidden_states[-2:]]
        targets = F.layer_norm(sum(layers) / 2, (8,))
        pred = method.head(method.encoder(x, mask=mask).last_hidden_state[:, 1:][mask])
    torch.testing.assert_close(out.loss, (pred - targets[mask]).square().sum(-1).mean() / math.sqrt(8))
    assert out.logs["masked_fraction"] == mask.float().mean()


def test_short_run_decreases_the_loss_and_stays_finite() -> None:
    method = _method(ema_decay=0.99, ema_end_decay=0.999)
    x, padding, mask = _batch([10, 8, 9, 7], seed=4)
    views = _views(x, padding, mask)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for k in range(30):
        optimizer.zero_grad()
        loss = method(views, StepInfo(k, 30)).loss
        loss.backward()
        optimizer.step()
        method.on_optimizer_step(StepInfo(k, 30))
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


# -- with the real speech encoder ---------------------------------------------------------------------


def _wav2vec2(**overrides):
    audio = pytest.importorskip("selfsup.encoders.audio")
    torch.manual_seed(0)
    options = {"num_layers": 2, "embed_dim": 32, "num_heads": 2, "ffn_dim": 64, "conv_dim": 16}
    options.update({"pos_conv_kernel": 8, "pos_conv_groups": 2, "feature_dropout": 0.0, **overrides})
    return audio.wav2vec2(**options)


def test_wav2vec2_targets_are_the_teachers_ffn_outputs() -> None:
    encoder = _wav2vec2()
    method = Data2Vec(encoder, top_k=2, ema_decay=0.5, ema_end_decay=0.5)
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 4000, generator=g) * 0.1
    samples = torch.tensor([4000, 2800])
    padding = torch.arange(4000)[None, :] >= samples[:, None]
    wave = wave.masked_fill(padding, 0.0)
    frames = encoder.output_lengths(samples)
    num_frames = int(encoder.output_lengths(torch.tensor([4000]))[0])
    frame_padding = torch.arange(num_frames)[None, :] >= frames[:, None]
    mask = (torch.rand(2, num_frames, generator=g) < 0.5) & ~frame_padding
    views = _views(wave, padding, mask)
    _sgd_steps(method, views, 1, lr=0.1)
    method.eval()
    out = method(views, StepInfo(1, 10))
    with torch.no_grad():
        local = encoder.local_features(wave, padding)
        student = encoder.contextualize(local.projected, padding_mask=local.padding_mask, mask=mask).output
        layers = method.teacher.module.contextualize(
            local.projected, padding_mask=local.padding_mask
        ).ffn_outputs
        targets = sum(_instance_norm_reference(t, frames.tolist()) for t in layers) / 2
        valid = mask & ~frame_padding
        pred = method.head(student.last_hidden_state[valid])
    expected = (pred - targets[valid]).square().sum(-1).mean() / math.sqrt(32)
    torch.testing.assert_close(out.loss, expected)
    # ema_transformer_only: the teacher averaged the blocks, and tracks the conv stack, projection, pos conv.
    teacher = dict(method.teacher.module.named_parameters())
    for name, p in encoder.named_parameters():
        same = torch.equal(teacher[name], p.detach())
        assert same == (encoder.layer_id(name) == 0), name


def _frame_mask(encoder, samples: Tensor, total: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    frames = encoder.output_lengths(samples)
    num_frames = int(encoder.output_lengths(torch.tensor([total]))[0])
    frame_padding = torch.arange(num_frames)[None, :] >= frames[:, None]
    mask = torch.rand(len(samples), num_frames, generator=torch.Generator().manual_seed(seed)) < 0.5
    return mask & ~frame_padding, frame_padding


def test_wav2vec2_padding_never_changes_the_loss() -> None:
    encoder = _wav2vec2()
    method = Data2Vec(encoder, top_k=2).eval()
    samples = torch.tensor([3200, 2000])
    wave = torch.randn(2, 4800, generator=torch.Generator().manual_seed(2)) * 0.1
    long_padding = torch.arange(4800)[None, :] >= samples[:, None]
    wave = wave.masked_fill(long_padding, 0.0)
    mask, _ = _frame_mask(encoder, samples, 3200)
    short = method(_views(wave[:, :3200], long_padding[:, :3200], mask), StepInfo(0, 10))
    long_mask = torch.zeros(2, int(encoder.output_lengths(torch.tensor([4800]))[0]), dtype=torch.bool)
    long_mask[:, : mask.shape[1]] = mask
    long = method(_views(wave, long_padding, long_mask), StepInfo(0, 10))
    torch.testing.assert_close(long.loss, short.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(long.logs["target_var"], short.logs["target_var"], rtol=1e-4, atol=1e-5)


def test_speech_mask_views_train_data2vec_on_wav2vec2() -> None:
    """The registered pieces together: speech_mask views of int16 clips, one optimizer step."""
    audio_transform = pytest.importorskip("selfsup.augment.audio_transform")
    from selfsup.augment import VIEW_POLICIES
    from selfsup.data.base import Batch, DataInfo

    encoder = _wav2vec2()
    method = METHODS.create("data2vec", encoder=encoder, top_k=2)
    info = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=16000.0)
    policy = VIEW_POLICIES.create(
        "speech_mask", info=info, transform=audio_transform.AudioTransform(), encoder=encoder, mask_length=2
    )
    lengths = torch.tensor([4000, 2400, 3200])
    padding = torch.arange(4000)[None, :] >= lengths[:, None]
    clips = torch.randint(
        -3000, 3000, (3, 4000), generator=torch.Generator().manual_seed(0), dtype=torch.int16
    )
    batch = Batch(clips.masked_fill(padding, 0), torch.full((3,), -1), torch.arange(3), lengths, padding)
    views = policy(batch, torch.Generator().manual_seed(1))
    out = method(views, StepInfo(0, 10))
    frames = encoder.output_lengths(lengths)
    assert 0 < out.logs["masked_fraction"] < 1 and out.features.shape == (3, 32)
    assert (
        views.masks is not None
        and not views.masks[0][torch.arange(views.masks[0].shape[1]) >= frames[:, None]].any()
    )
    out.loss.backward()
    before = method.teacher.module.blocks[0].fc1.weight.clone()
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1).step()
    method.on_optimizer_step(StepInfo(0, 10))
    assert torch.isfinite(out.loss) and not torch.equal(before, method.teacher.module.blocks[0].fc1.weight)
