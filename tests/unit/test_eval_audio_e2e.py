"""SUPERB-style evaluation end to end on synthetic audio made here: tones of four frequencies are the
classes, two "speakers" are two timbres (a pure tone over a bright noise floor, odd harmonics over a
dull one). The weighted-layer probe, few labels and speaker verification run on a randomly initialised
wav2vec2 (or a stand-in encoder) with the random-init, log-mel and MFCC baselines beside it; the log-mel
baseline must separate the tones, and the records must hold what the report reads."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve
from torch import Tensor, nn

from selfsup.api import Pretrained
from selfsup.augment.audio_transform import AudioTransform
from selfsup.config import Config
from selfsup.data.audio import AudioDataset, audio_info
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.eval.protocols import evaluate_fewshot, evaluate_layer
from selfsup.eval.verification import evaluate_verification

RATE = 16000
TONES = (300.0, 550.0, 1000.0, 1800.0)
# A CPU-cheap wav2vec2: the protocols, not the encoder, are under test.
TINY = {"size": "tiny", "num_layers": 2, "embed_dim": 64, "conv_dim": 64, "ffn_dim": 128, "num_heads": 2}
PROBE = {"min_steps": 60, "epochs": 3}  # small: the features are separable or not after this many steps


def clip(rng: np.random.Generator, tone: float, speaker: int) -> Tensor:
    n = int(rng.uniform(0.15, 0.35) * RATE)
    t = np.arange(n) / RATE
    f, phase = tone * rng.uniform(0.97, 1.03), rng.uniform(0, 2 * math.pi)
    if speaker == 0:  # a pure tone over a high-passed noise floor
        wave = np.sin(2 * math.pi * f * t + phase)
        noise = np.diff(rng.normal(size=n) * 0.02, prepend=0.0)
    else:  # odd harmonics over a low-passed (integrated) noise floor
        wave = sum(np.sin(2 * math.pi * k * f * t + k * phase) / k for k in (1, 3, 5))
        noise = np.cumsum(rng.normal(size=n)) * 0.002
        noise -= noise.mean()
    wave = rng.uniform(0.2, 0.6) * wave / np.abs(wave).max() + noise
    return torch.from_numpy((np.clip(wave, -1, 1) * 32767).astype(np.int16))


def make_split(per_cell: int, seed: int) -> dict[str, AudioDataset]:
    """The same clips labelled by tone and by speaker."""
    rng = np.random.default_rng(seed)
    clips, tones, speakers = [], [], []
    for speaker in (0, 1):
        for k, tone in enumerate(TONES):
            for _ in range(per_cell):
                clips.append(clip(rng, tone, speaker))
                tones.append(k)
                speakers.append(speaker)
    offsets = torch.tensor([0, *np.cumsum([len(c) for c in clips]).tolist()], dtype=torch.int64)
    ids = [f"{seed}-{i}" for i in range(len(clips))]
    names = {"tone": [f"{int(t)} Hz" for t in TONES], "speaker": ["pure", "buzzy"]}
    return {
        column: AudioDataset(torch.cat(clips), offsets, torch.tensor(labels), ids,
                             info=audio_info(RATE, names[column]), source=f"synthetic-{seed}?label={column}")
        for column, labels in (("tone", tones), ("speaker", speakers))
    }  # fmt: skip


class ConvStandIn(Encoder):
    """Used when the wav2vec2 encoder is not registered: a strided convolution then two frame layers."""

    modality = "audio"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed_dim, self.num_layers = width, 2
        self.conv = nn.Conv1d(1, width, kernel_size=400, stride=320)
        self.layers = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(lengths - 400, 320, rounding_mode="floor") + 1

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        hidden = [self.conv(x.unsqueeze(1)).transpose(1, 2)]
        for layer in self.layers:
            hidden.append(torch.tanh(layer(hidden[-1])))
        frame_mask = None
        if padding_mask is not None:
            frames = self.output_lengths((~padding_mask).sum(dim=1))
            frame_mask = padding_mask_from_lengths(frames, hidden[0].shape[1])
        return EncoderOutput(pool_hidden_state(hidden[-1], frame_mask), hidden[-1], tuple(hidden), frame_mask)


class StandInModel(Pretrained):
    def random_init(self) -> Pretrained:
        torch.manual_seed(self.config.train.seed + 1)
        untrained = ConvStandIn().eval()
        return Pretrained(self.run_dir, self.config, untrained, self.info, self.transform, self.device)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    run_dir = tmp_path_factory.mktemp("audio_eval")
    config = Config()
    config.train.seed = 0
    info = audio_info(RATE, None)
    torch.manual_seed(0)
    if "wav2vec2" in ENCODERS.names():
        config.encoder.name, config.encoder.params = "wav2vec2", TINY
        from selfsup.build import build_encoder

        encoder = build_encoder(config, info).eval()
        return Pretrained(run_dir, config, encoder, info, AudioTransform(RATE), torch.device("cpu"))
    config.encoder.name = "stand-in"
    return StandInModel(
        run_dir, config, ConvStandIn().eval(), info, AudioTransform(RATE), torch.device("cpu")
    )


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, AudioDataset]]:
    return {"train": make_split(5, seed=0), "test": make_split(4, seed=1)}


def read(model: Pretrained, protocol: str) -> dict[str, Any]:
    return json.loads((model.run_dir / "eval" / f"{protocol}.json").read_text())


def test_layer_probe_on_tones_with_baselines(model: Pretrained, splits: dict[str, Any]) -> None:
    train, test = splits["train"]["tone"], splits["test"]["tone"]
    metrics = evaluate_layer(model, train, test, baselines=True, **PROBE)
    saved = read(model, "layer")
    assert saved["protocol"] == "layer" and saved["metrics"] == metrics and 0 <= metrics["top1"] <= 100
    weights = saved["layer_weights"]
    assert len(weights) == model.encoder.num_layers + 1 and sum(weights) == pytest.approx(1.0)
    assert (model.run_dir / "eval" / "layer_weights.png").stat().st_size > 0
    assert saved["classes"] == [f"{int(t)} Hz" for t in TONES]
    assert np.asarray(saved["confusion"]).shape == (4, 4) and np.asarray(saved["confusion"]).sum() == len(
        test
    )
    assert set(saved["baselines"]) == {"random init", "log-mel", "mfcc"}
    assert list(saved["baseline_layer_weights"]) == ["random init"]
    # The log-mel statistics must separate tones a factor of 1.8 apart (chance is 25%).
    assert saved["baselines"]["log-mel"]["top1"] >= 90.0
    assert saved["baselines"]["mfcc"]["top1"] >= 50.0


def test_speaker_verification_record(model: Pretrained, splits: dict[str, Any]) -> None:
    test = splits["test"]["speaker"]
    metrics = evaluate_verification(model, test, train=splits["train"]["speaker"])
    saved = read(model, "verification")
    assert saved["protocol"] == "verification" and saved["metrics"] == metrics
    assert saved["speakers"] == 2 and saved["utterances"] == 32 and "mechanics only" in saved["note"]
    assert saved["trials"] == {"mode": "all", "count": 496, "target": 240, "nontarget": 256, "seed": 0,
                               "max_trials": 1_000_000}  # fmt: skip
    assert saved["scoring"]["mean_from"] == "train" and saved["dcf"]["p_target"] == 0.01
    assert set(saved["baselines"]) == {"random init", "log-mel", "mfcc"}
    # The encoder's EER, recomputed independently: sklearn's ROC of centred cosine scores.
    x = model.features(test).double()  # the cached features the protocol scored
    x = x - model.features(splits["train"]["speaker"]).double().mean(dim=0)
    x = x / x.norm(dim=1, keepdim=True)
    first, second = torch.triu_indices(32, 32, offset=1)
    scores = (x[first] * x[second]).sum(dim=1).numpy()
    same = (test.labels[first] == test.labels[second]).numpy()
    fpr, tpr, _ = roc_curve(same, scores)
    assert metrics["eer"] == pytest.approx(
        100 * brentq(lambda v: 1 - v - interp1d(fpr, tpr)(v), 0, 1), abs=1e-6
    )
    # Timbre is in the log-mel statistics: far better than chance (50%).
    assert saved["baselines"]["log-mel"]["eer"] < 25.0


def test_few_labels_on_audio(model: Pretrained, splits: dict[str, Any]) -> None:
    table = evaluate_fewshot(model, splits["train"]["tone"], splits["test"]["tone"], per_class=(5,), seeds=2)
    saved = read(model, "fewshot")
    assert set(saved["results_by_features"]) == {"encoder", "random init", "log-mel", "mfcc"}
    assert "raw inputs" not in table and "log-mel" in table
    assert saved["results_by_features"]["log-mel"][0]["setting"] == "5 per class"
    assert saved["results_by_features"]["log-mel"][0]["mean"] >= 80.0
