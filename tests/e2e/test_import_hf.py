"""`selfsup import-hf`: a transformers speech checkpoint becomes a run that every eval command takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from selfsup.api import load
from selfsup.cli import main

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def _clips(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, freq in (("low", 300.0), ("high", 1800.0)):
        for i in range(6):
            t = np.arange(int(16000 * (0.3 + 0.05 * i))) / 16000
            wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
            (root / label).mkdir(parents=True, exist_ok=True)
            soundfile.write(root / label / f"{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
    return root


def test_hubert_checkpoint_imports_as_our_encoder_and_evaluates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = transformers.HubertModel(transformers.HubertConfig(**SMALL)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    model = load(tmp_path / "run")
    assert model.config.encoder.name == "wav2vec2"
    x = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        ours = model.encoder.eval()(x).hidden_states
        theirs = hf(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-5)
    data = str(_clips(tmp_path / "clips"))
    assert main(["eval", "knn", "--run", str(tmp_path / "run"), "--train", data, "--test", data]) == 0
    record = json.loads((tmp_path / "run" / "eval" / "knn.json").read_text())
    assert record["metrics"]
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2  # exists


def test_other_architectures_are_wrapped_as_the_hf_speech_upstream(tmp_path: Path) -> None:
    torch.manual_seed(0)
    transformers.WavLMModel(transformers.WavLMConfig(**SMALL)).save_pretrained(tmp_path / "wavlm")
    assert main(["import-hf", str(tmp_path / "wavlm"), "--out", str(tmp_path / "run")]) == 0
    model = load(tmp_path / "run")
    assert model.config.encoder.name == "hf_speech"
    features = model.features(str(_clips(tmp_path / "clips")), progress=False, cache=False)
    assert features.shape == (12, 32) and torch.isfinite(features).all()


def test_a_folder_that_is_no_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    assert "config.json" in capsys.readouterr().err
