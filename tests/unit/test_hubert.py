"""HuBERT (selfsup.methods.hubert): logits and loss against hand-computed and fairseq-style references, label
alignment with crops, padding invariance, label-rate checks, iteration-0 targets fitted in the run (resumed
and identical across two gloo processes)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_units import ToFloat, tones

from selfsup.encoders.audio import wav2vec2
from selfsup.errors import ConfigError, DataError
from selfsup.methods import METHODS, StepInfo, Views
from selfsup.methods.hubert import HuBERT, align_targets, cosine_logits, hubert, start_frames
from selfsup.units import SplitLabels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

STEP = StepInfo(0, 10)


def tiny_encoder() -> Any:
    torch.manual_seed(0)
    return wav2vec2(
        size="tiny",
        num_layers=2,
        embed_dim=32,
        num_heads=2,
        ffn_dim=64,
        conv_dim=32,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        sample_rate=16000,
    )


def frame_index_labels(lengths: list[int], encoder: Any) -> SplitLabels:
    """Clip i's label j is 100 i + j (the frame index, offset by the clip): alignment is readable."""
    samples = torch.tensor(lengths)
    frames = encoder.output_lengths(samples)
    labels = torch.cat([100 * i + torch.arange(int(n)) for i, n in enumerate(frames)]).to(torch.int32)
    return SplitLabels(labels, frames, samples, [f"c{i}" for i in range(len(lengths))], "test", "fp")


def test_cosine_logits_and_loss_match_a_hand_computed_case() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    embs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    logits = cosine_logits(x, embs, 0.1)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, s, 0.0], [0.0, s, -1.0]]) / 0.1
    torch.testing.assert_close(logits, expected)
    targets = torch.tensor([0, 1])
    by_hand = [
        -(10.0 - math.log(math.exp(10.0) + math.exp(10 * s) + math.exp(0.0))),
        -(10 * s - math.log(math.exp(0.0) + math.exp(10 * s) + math.exp(-10.0))),
    ]
    torch.testing.assert_close(F.cross_entropy(logits, targets, reduction="none"), torch.tensor(by_hand))


def test_cosine_logits_equal_fairseq_compute_nce() -> None:
    """fairseq scores [positive, every class] with the positive's copy at -inf; CE at index 0."""
    g = torch.Generator().manual_seed(0)
    x, embs = torch.randn(7, 5, generator=g), torch.rand(4, 5, generator=g)
    target = torch.randint(4, (7,), generator=g)
    pos = embs[target]
    negs = embs.unsqueeze(1).expand(-1, 7, -1)
    neg_is_pos = (pos == negs).all(-1)
    cands = torch.cat([pos.unsqueeze(0), negs])
    ref = torch.cosine_similarity(x, cands, dim=-1) / 0.1
    ref[1:][neg_is_pos] = float("-inf")
    ref_loss = F.cross_entropy(ref.T, torch.zeros(7, dtype=torch.long), reduction="sum")
    ours = F.cross_entropy(cosine_logits(x, embs, 0.1), target, reduction="sum")
    torch.testing.assert_close(ours, ref_loss)


def test_targets_follow_the_crop_start() -> None:
    encoder = tiny_encoder()
    labels = frame_index_labels([16000, 9600, 12800], encoder)
    # Views of clips 2 and 0 cropped at 3200 samples (10 frames) and 1000 samples (round(3.125) = 3).
    crops = torch.tensor([3200, 1000])
    starts = start_frames(crops, 16000.0, 50.0)
    assert starts.tolist() == [10, 3]
    frames = torch.tensor([20, 25])
    targets, missing = align_targets(labels.labels, labels.offsets, torch.tensor([2, 0]), starts, frames, 30)
    assert targets[0, :20].tolist() == [200 + 10 + j for j in range(20)]
    assert targets[1, :25].tolist() == [3 + j for j in range(25)]
    assert (targets[0, 20:] == -1).all() and (targets[1, 25:] == -1).all()
    assert missing.tolist() == [0, 0]
    # A view running past the clip's labels: the last frames get none, and the shortfall is reported.
    late, short = align_targets(
        labels.labels, labels.offsets, torch.tensor([1]), torch.tensor([25]), torch.tensor([10]), 10
    )
    assert late[0].tolist() == [125 + j for j in range(4)] + [-1] * 6 and short.tolist() == [6]


def _method(encoder: Any, labels: SplitLabels, **options: Any) -> HuBERT:
    return HuBERT(
        encoder, labels, 50.0, int(labels.labels.max()) + 1, sample_rate=16000.0, final_dim=16, **options
    ).eval()


def _views(
    lengths: list[int], mask: torch.Tensor, extra_padding: int = 0, crops: list[int] | None = None
) -> Views:
    g = torch.Generator().manual_seed(1)
    longest = max(lengths) + extra_padding
    x = torch.zeros(len(lengths), longest)
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn(n, generator=g)
    padding = torch.arange(longest).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return Views(
        inputs=[x],
        num_global=1,
        padding_masks=[padding],
        masks=[mask],
        indices=torch.arange(len(lengths)),
        crop_starts=None if crops is None else [torch.tensor(crops)],
    )


def test_loss_is_the_mean_cross_entropy_over_masked_frames() -> None:
    encoder = tiny_encoder()
    lengths = [9600, 6400]
    labels = frame_index_labels(lengths, encoder)
    method = _method(encoder, labels, feature_pen=0.0)
    frames = encoder.output_lengths(torch.tensor(lengths))
    mask = torch.zeros(2, int(frames.max()), dtype=torch.bool)
    mask[0, 3:13] = True
    mask[1, 5:12] = True
    views = _views(lengths, mask)
    out = method(views, STEP)
    # Independent recomputation from the encoder's own forward.
    hidden = encoder.contextualize(
        encoder.local_features(views.inputs[0], views.padding_mask(0)).projected,
        padding_mask=encoder.local_features(views.inputs[0], views.padding_mask(0)).padding_mask,
        mask=mask,
    ).output.last_hidden_state
    proj = method.final_proj(hidden[mask])
    logits = torch.cosine_similarity(proj.unsqueeze(1), method.label_embs.unsqueeze(0), dim=-1) / 0.1
    goal = torch.cat([torch.arange(3, 13), 100 + torch.arange(5, 12)])
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, goal), rtol=1e-5, atol=1e-5)
    assert out.logs["masked_frames"].item() == 17
    assert out.logs["masked_accuracy"].item() == pytest.approx(
        (logits.argmax(1) == goal).float().mean().item()
    )
    assert out.features is not None and out.features.shape == (2, 32) and not out.features.requires_grad


def test_padding_never_changes_the_loss() -> None:
    encoder = tiny_encoder()
    lengths = [9600, 6400]
    method = _method(encoder, frame_index_labels(lengths, encoder))
    frames = int(encoder.output_lengths(torch.tensor(lengths)).max())
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 2:12] = True
    base = method(_views(lengths, mask), STEP).loss
    extra_frames = int(encoder.output_lengths(torch.tensor([9600 + 3200]))[0]) - frames
    padded_mask = torch.cat([mask, torch.zeros(2, extra_frames, dtype=torch.bool)], dim=1)
    padded = method(_views(lengths, padded_mask, extra_padding=3200), STEP).loss
    torch.testing.assert_close(padded, base, rtol=1e-5, atol=1e-6)


def test_label_rate_mismatch_is_a_clear_error() -> None:
    encoder = tiny_encoder()
    labels = frame_index_labels([9600], encoder)
    with pytest.raises(ConfigError, match="100 labels per second but the encoder makes 50 frames"):
        HuBERT(encoder, labels, 100.0, 200, sample_rate=16000.0)


def test_label_lengths_off_by_more_than_the_tolerance_are_an_error() -> None:
    encoder = tiny_encoder()
    labels = frame_index_labels([9600, 6400], encoder)
    labels.lengths = labels.lengths.clone()
    labels.lengths[1] -= 3  # labels of another rate / other audio
    with pytest.raises(ConfigError, match="label_tolerance=2"):
        HuBERT(encoder, labels, 50.0, 200, sample_rate=16000.0)
    labels.lengths[1] += 1  # 2 frames short: within fairseq-like tolerance
    HuBERT(encoder, labels, 50.0, 200, sample_rate=16000.0)


def test_a_crop_past_the_labels_is_a_data_error() -> None:
    encoder = tiny_encoder()
    lengths = [9600, 6400]
    method = _method(encoder, frame_index_labels(lengths, encoder))
    mask = torch.zeros(2, int(encoder.output_lengths(torch.tensor(lengths)).max()), dtype=torch.bool)
    mask[:, 1:5] = True
    with pytest.raises(DataError, match="fewer labels than encoder frames"):
        method(_views(lengths, mask, crops=[0, 3200]), STEP)  # clip 1 shown from frame 10 on: 10 missing


def test_registered_with_plain_options_and_the_speech_mask_policy() -> None:
    assert METHODS.get("hubert").default_view_policies == {"audio": "speech_mask"}
    with pytest.raises(ConfigError, match="hubert needs targets"):
        hubert(tiny_encoder())


def _fit_in_run(run_dir: Path) -> np.ndarray:
    method = hubert(
        tiny_encoder(),
        dataset=tones(6),
        transform=ToFloat(),
        run_dir=run_dir,
        num_clusters=4,
        kmeans_n_init=1,
        final_dim=16,
    )
    return method.labels.numpy()


def test_iteration0_targets_fitted_in_the_run_are_reused_on_resume(tmp_path: Path) -> None:
    first = _fit_in_run(tmp_path)
    assert (tmp_path / "units" / "meta.json").is_file()
    stamp = (tmp_path / "units" / "codebook.safetensors").stat().st_mtime_ns
    again = _fit_in_run(tmp_path)
    assert np.array_equal(first, again)
    assert (tmp_path / "units" / "codebook.safetensors").stat().st_mtime_ns == stamp  # not refitted
    # Same seed, fitted afresh elsewhere: the same labels (deterministic k-means).
    assert np.array_equal(first, _fit_in_run(tmp_path / "other"))
    # Not in the state dict (rebuilt from the units directory instead).
    method = hubert(tiny_encoder(), targets=str(tmp_path / "units"), num_clusters=4, final_dim=16)
    assert not any(k.split(".")[-1] == "labels" for k in method.state_dict())


def _rank_labels(rank: int, world_size: int, run_dir: str) -> np.ndarray:
    return _fit_in_run(Path(run_dir))


def test_two_processes_get_identical_labels(tmp_path: Path) -> None:
    from _launch import run_in_processes

    results = run_in_processes(_rank_labels, 2, str(tmp_path / "run"))
    assert np.array_equal(results[0], results[1])
    assert np.array_equal(results[0], _fit_in_run(tmp_path / "single"))
