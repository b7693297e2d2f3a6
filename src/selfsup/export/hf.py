"""The ``hf`` format: a Hugging Face transformers directory of our ``wav2vec2`` speech encoder.

Written files: ``config.json`` (a transformers ``Wav2Vec2Config`` or ``HubertConfig``, with
``architectures`` and ``model_type``), ``model.safetensors`` (the weights under transformers' key
names: :mod:`selfsup.interop.hf_speech` is the renaming) and ``preprocessor_config.json`` (a
``Wav2Vec2FeatureExtractor``: the sample rate and whether each clip is normalized, from the run's input
transform). ``Wav2Vec2Model.from_pretrained(dir)`` / ``HubertModel.from_pretrained(dir)`` load it
with no missing or unexpected key; option ``hf_model`` (``wav2vec2``, default, or ``hubert``) picks the
architecture (the computation is the same). When transformers is installed the export is loaded back
and its hidden states compared with ours before anything is kept (an :class:`ExportError` otherwise).

Other encoders are refused with the formats that work: only the wav2vec 2.0 / HuBERT-style encoder has
a transformers architecture here (text encoders will add theirs).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from selfsup.encoders.audio import Wav2Vec2Encoder
from selfsup.errors import ConfigError
from selfsup.export.base import EXPORT_DIR, EXPORTERS, ExportError, write_json
from selfsup.interop.hf_speech import HF_MODELS, to_hf
from selfsup.io import save_tensors_atomic

if TYPE_CHECKING:
    from selfsup.api import Pretrained

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
# Verification: a few seconds of noise; transformers and ours must agree on every hidden state.
VERIFY_SECONDS = 1.0
VERIFY_ATOL = 1e-4


def _supports(model: Pretrained) -> str | None:
    if isinstance(model.encoder, Wav2Vec2Encoder):
        return None
    return (
        "the hf format holds selfsup's wav2vec2 speech encoder (transformers Wav2Vec2Model / HubertModel); "
        f"{type(model.encoder).__name__} ({model.encoder.modality}) has no transformers architecture"
    )


def preprocessor_config(model: Pretrained, encoder: Wav2Vec2Encoder) -> dict[str, Any]:
    """transformers' ``Wav2Vec2FeatureExtractor`` settings for the run's input (rate, normalization)."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": int(encoder.sample_rate),
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": bool(getattr(model.transform, "normalize", False)),
        # transformers' convention: group-norm models are run without an attention mask (wav2vec2-base).
        "return_attention_mask": encoder.config.conv_norm == "layer",
    }


def _verify(directory: Path, encoder: Wav2Vec2Encoder, hf_model: str) -> str | None:
    """Load the export with transformers and compare hidden states; the transformers version, or None
    when transformers is not installed (nothing to check against)."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers

    cls = getattr(transformers, HF_MODELS[hf_model])
    net = cls.from_pretrained(str(directory), local_files_only=True).eval()
    x = torch.randn(1, int(VERIFY_SECONDS * encoder.sample_rate), generator=torch.Generator().manual_seed(0))
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        with torch.no_grad():
            ours = encoder(x.to(device)).hidden_states
            theirs = net(x, output_hidden_states=True)
    finally:
        encoder.train(was_training)
    # transformers 5 leaves the final LayerNorm off its last hidden_states entry (see interop.hf_speech).
    reference = [*theirs.hidden_states[:-1], theirs.last_hidden_state]
    for i, (a, b) in enumerate(zip(ours, reference, strict=True)):
        error = float((a.cpu() - b).abs().max())
        if error > VERIFY_ATOL:
            raise ExportError(
                f"transformers' {cls.__name__} disagrees with the encoder at hidden state {i}: {error}"
            )
    return str(transformers.__version__)


@EXPORTERS.register("hf", supports=_supports)
def export_hf(model: Pretrained, directory: Path, hf_model: str = "wav2vec2") -> dict[str, Any]:
    """Hugging Face transformers Wav2Vec2Model / HubertModel directory of a wav2vec2 speech encoder."""
    reason = _supports(model)
    if reason is not None:
        raise ConfigError(f"cannot export as hf: {reason}")
    if hf_model not in HF_MODELS:
        raise ConfigError(f"hf_model must be one of {', '.join(HF_MODELS)}, got {hf_model!r}")
    encoder = model.encoder
    assert isinstance(encoder, Wav2Vec2Encoder)
    config, state = to_hf(encoder, hf_model)
    save_tensors_atomic(directory / WEIGHTS, state, metadata={"format": "pt"})
    write_json(directory / CONFIG, config)
    write_json(directory / PREPROCESSOR, preprocessor_config(model, encoder))
    verified = _verify(directory, encoder, hf_model)
    architecture = HF_MODELS[hf_model]
    rate = int(encoder.sample_rate)
    return {
        "files": {
            WEIGHTS: f"the encoder's weights under transformers' {architecture} key names",
            CONFIG: f"transformers {config['model_type']} config ({architecture})",
            PREPROCESSOR: "Wav2Vec2FeatureExtractor: sample rate and per-clip normalization",
        },
        "hf_model": hf_model,
        "verified_with_transformers": verified,
        "usage": (
            f"from transformers import {architecture}\n"
            f"model = {architecture}.from_pretrained('{EXPORT_DIR}').eval()\n"
            f"out = model(waveform, output_hidden_states=True)  # (B, T) float at {rate} Hz\n"
            "# one clip per call (or a layer-norm model with attention_mask): transformers' group-norm\n"
            "# models normalize over padded samples too, selfsup's encoder does not"
        ),
    }
