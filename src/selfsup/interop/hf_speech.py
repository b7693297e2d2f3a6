"""Our ``wav2vec2`` encoder <-> transformers' ``Wav2Vec2Model`` / ``HubertModel``, by renaming keys.

:class:`~selfsup.encoders.audio.Wav2Vec2Encoder` has the computation of transformers' ``Wav2Vec2Model``
and ``HubertModel`` (``transformers/models/{wav2vec2,hubert}/modeling_*.py``; HuBERT's backbone is
wav2vec 2.0's, with ``feat_proj_layer_norm=True``), so import and export rename keys and translate the
config; no tensor is reshaped and transformers is not imported (config.json and model.safetensors are
read and written directly).

==========================================  ==========================================================
ours                                        transformers
==========================================  ==========================================================
``conv_layers.{i}.conv.*``                  ``feature_extractor.conv_layers.{i}.conv.*``
``conv_layers.{i}.norm.*``                  ``feature_extractor.conv_layers.{i}.layer_norm.*``
``feature_norm.*``                          ``feature_projection.layer_norm.*``
``projection.*``                            ``feature_projection.projection.*``
``mask_embedding``                          ``masked_spec_embed``
``pos_conv.weight_g``                       ``encoder.pos_conv_embed.conv.parametrizations.weight.original0``
``pos_conv.weight_v``                       ``encoder.pos_conv_embed.conv.parametrizations.weight.original1``
                                            (older files: ``encoder.pos_conv_embed.conv.weight_g`` / ``_v``)
``pos_conv.bias``                           ``encoder.pos_conv_embed.conv.bias``
``encoder_norm.*``                          ``encoder.layer_norm.*``
``blocks.{i}.attention.{q,k,v,out}_proj.*``  ``encoder.layers.{i}.attention.{q,k,v,out}_proj.*``
``blocks.{i}.attention_norm.*``             ``encoder.layers.{i}.layer_norm.*``
``blocks.{i}.fc1.*``                        ``encoder.layers.{i}.feed_forward.intermediate_dense.*``
``blocks.{i}.fc2.*``                        ``encoder.layers.{i}.feed_forward.output_dense.*``
``blocks.{i}.ffn_norm.*``                   ``encoder.layers.{i}.final_layer_norm.*``
==========================================  ==========================================================

Config: ``hidden_size`` = ``embed_dim``, ``num_hidden_layers``, ``num_attention_heads``,
``intermediate_size`` = ``ffn_dim``, ``conv_dim`` = 7 x ``conv_dim``, ``feat_extract_norm`` = ``conv_norm``,
``do_stable_layer_norm`` = ``layer_norm_first``, ``num_conv_pos_embeddings`` / ``_groups`` =
``pos_conv_kernel`` / ``_groups``, ``hidden_dropout`` / ``attention_dropout`` / ``activation_dropout`` /
``feat_proj_dropout`` = our dropouts. The sample rate lives in ``preprocessor_config.json``
(``sampling_rate``), read when present. ``layerdrop`` is imported as 0 (pass ``layerdrop=`` to keep it).

Hidden states: ours equal transformers' ``output_hidden_states`` entry for entry, except that for
``do_stable_layer_norm`` models transformers 5 returns the last block's output *before* the final
LayerNorm as its last hidden state entry (4.x appended the normalized one), while our last entry is
the normalized ``last_hidden_state`` (the contract: ``hidden_states[-1] is last_hidden_state``).
Checkpoints of the ``ForPreTraining`` / ``ForCTC`` / ... heads load too: their ``wav2vec2.`` /
``hubert.`` prefix is removed and the heads' keys (quantizer, projections, classifiers) are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from selfsup.encoders.audio import CONV_KERNELS, CONV_STRIDES, LAYER_NORM_EPS, Wav2Vec2Config, Wav2Vec2Encoder
from selfsup.errors import CheckpointError, ConfigError

HF_MODELS = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PREPROCESSOR = "preprocessor_config.json"

# (ours, transformers): key templates, ``{i}`` a layer index; a template ending in "." is a prefix.
RENAMES: tuple[tuple[str, str], ...] = (
    ("conv_layers.{i}.conv.", "feature_extractor.conv_layers.{i}.conv."),
    ("conv_layers.{i}.norm.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("feature_norm.", "feature_projection.layer_norm."),
    ("projection.", "feature_projection.projection."),
    ("mask_embedding", "masked_spec_embed"),
    ("pos_conv.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("pos_conv.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("pos_conv.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder_norm.", "encoder.layer_norm."),
    ("blocks.{i}.attention.", "encoder.layers.{i}.attention."),
    ("blocks.{i}.attention_norm.", "encoder.layers.{i}.layer_norm."),
    ("blocks.{i}.fc1.", "encoder.layers.{i}.feed_forward.intermediate_dense."),
    ("blocks.{i}.fc2.", "encoder.layers.{i}.feed_forward.output_dense."),
    ("blocks.{i}.ffn_norm.", "encoder.layers.{i}.final_layer_norm."),
)
# transformers < 4.40 (torch.nn.utils.weight_norm) named the weight-norm parameters so.
_OLD_WEIGHT_NORM = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_HF_ENCODER_PREFIXES = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed")
_HEAD_PREFIXES = ("wav2vec2.", "hubert.")


def _pattern(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(re.escape("{i}"), r"(\d+)")
    return re.compile("^" + body + ("" if template.endswith(".") else "$"))


_TO_HF = [(_pattern(ours), hf) for ours, hf in RENAMES]
_FROM_HF = [(_pattern(hf), ours) for ours, hf in RENAMES]


def _rename(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        match = pattern.match(key)
        if match:
            out = target
            for group in match.groups():
                out = out.replace("{i}", group, 1)
            return out + key[match.end() :]
    return None


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our ``wav2vec2`` state dict under transformers' ``Wav2Vec2Model`` / ``HubertModel`` key names."""
    out = {}
    for key, value in state.items():
        name = _rename(key, _TO_HF)
        if name is None:
            raise ValueError(f"no transformers name for parameter {key!r}")
        out[name] = value
    return out


def from_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers ``Wav2Vec2Model`` / ``HubertModel`` state dict (or one of a model with a head, whose
    ``wav2vec2.`` / ``hubert.`` prefix is removed and whose head keys are ignored) under our names."""
    if not any(k.startswith(_HF_ENCODER_PREFIXES) for k in state):
        for prefix in _HEAD_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                break
    out = {}
    for key, value in state.items():
        key = _OLD_WEIGHT_NORM.get(key, key)
        if not key.startswith(_HF_ENCODER_PREFIXES):
            continue  # a head's weights (quantizer, CTC, classifier)
        name = _rename(key, _FROM_HF)
        if name is None:
            raise CheckpointError(
                f"the transformers weight {key!r} has no counterpart in selfsup's wav2vec2 encoder "
                "(adapters, WavLM and data2vec-audio blocks are not; encoder hf_speech runs those models)"
            )
        out[name] = value
    return out


def hf_config(config: Wav2Vec2Config, model: str = "wav2vec2") -> dict[str, Any]:
    """A transformers ``Wav2Vec2Config`` / ``HubertConfig`` dict; ``model`` is "wav2vec2" or "hubert"."""
    if model not in HF_MODELS:
        raise ConfigError(f"hf model must be one of {', '.join(HF_MODELS)}, got {model!r}")
    out: dict[str, Any] = {
        "architectures": [HF_MODELS[model]],
        "model_type": model,
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_dim,
        "hidden_act": "gelu",
        "hidden_dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "feat_proj_dropout": config.feature_dropout,
        "layerdrop": config.layerdrop,
        "layer_norm_eps": LAYER_NORM_EPS,
        "feat_extract_norm": config.conv_norm,
        "feat_extract_activation": "gelu",
        "num_feat_extract_layers": len(CONV_KERNELS),
        "conv_dim": [config.conv_dim] * len(CONV_KERNELS),
        "conv_kernel": list(CONV_KERNELS),
        "conv_stride": list(CONV_STRIDES),
        "conv_bias": config.conv_bias,
        "num_conv_pos_embeddings": config.pos_conv_kernel,
        "num_conv_pos_embedding_groups": config.pos_conv_groups,
        "do_stable_layer_norm": config.layer_norm_first,
        # mask_time_prob > 0 makes transformers create masked_spec_embed (our mask_embedding); masking
        # itself only happens in training mode.
        "apply_spec_augment": True,
        "mask_time_prob": 0.05,
        "mask_time_length": 10,
        "initializer_range": 0.02,
        "dtype": "float32",
    }
    if model == "hubert":
        out["feat_proj_layer_norm"] = True
        out["conv_pos_batch_norm"] = False
    return out


def _require(config: dict[str, Any], key: str, expected: Any, why: str) -> None:
    value = config.get(key, expected)
    if value != expected:
        raise ConfigError(f"transformers config {key}={value!r} is not supported ({why}; needs {expected!r})")


def config_from_hf(config: dict[str, Any], sample_rate: float = 16000.0, **overrides: Any) -> Wav2Vec2Config:
    """Our :class:`Wav2Vec2Config` for a transformers wav2vec2 / hubert ``config.json`` dict; a ConfigError
    names the first setting our encoder does not implement."""
    model_type = config.get("model_type")
    if model_type not in HF_MODELS:
        raise ConfigError(
            f"transformers model_type {model_type!r} cannot become selfsup's wav2vec2 encoder (supported: "
            f"{', '.join(HF_MODELS)}); use encoder hf_speech to run other speech models as a frozen upstream"
        )
    for key in ("hidden_act", "feat_extract_activation"):
        _require(config, key, "gelu", "the encoder uses GELU")
    _require(config, "num_feat_extract_layers", len(CONV_KERNELS), "wav2vec 2.0's 7 convolutions")
    _require(config, "conv_kernel", list(CONV_KERNELS), "wav2vec 2.0's kernels")
    _require(config, "conv_stride", list(CONV_STRIDES), "wav2vec 2.0's strides")
    _require(config, "layer_norm_eps", LAYER_NORM_EPS, "LayerNorm eps 1e-5")
    _require(config, "add_adapter", False, "no adapter")
    _require(config, "adapter_attn_dim", None, "no attention adapters")
    if model_type == "hubert":
        _require(config, "feat_proj_layer_norm", True, "a LayerNorm before the feature projection")
        _require(config, "conv_pos_batch_norm", False, "weight-normed positional convolution")
    conv_dim = config.get("conv_dim", [512] * 7)
    if len(set(conv_dim)) != 1:
        raise ConfigError(
            f"transformers conv_dim {conv_dim} is not supported (one width for all 7 convolutions)"
        )
    values: dict[str, Any] = {
        "embed_dim": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "ffn_dim": config.get("intermediate_size", 3072),
        "conv_dim": conv_dim[0],
        "conv_norm": config.get("feat_extract_norm", "group"),
        "conv_bias": bool(config.get("conv_bias", False)),
        "layer_norm_first": bool(config.get("do_stable_layer_norm", False)),
        "pos_conv_kernel": config.get("num_conv_pos_embeddings", 128),
        "pos_conv_groups": config.get("num_conv_pos_embedding_groups", 16),
        "dropout": config.get("hidden_dropout", 0.1),
        "attention_dropout": config.get("attention_dropout", 0.1),
        "activation_dropout": config.get("activation_dropout", 0.1),
        "feature_dropout": config.get("feat_proj_dropout", 0.0),
        "layerdrop": 0.0,
        "sample_rate": float(sample_rate),
    }
    values.update(overrides)
    try:
        return Wav2Vec2Config(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"transformers config not supported: {error}") from None


def to_hf(encoder: Wav2Vec2Encoder, model: str = "wav2vec2") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config.json dict, state dict under transformers names)`` for ``Wav2Vec2Model`` / ``HubertModel``."""
    if not isinstance(encoder, Wav2Vec2Encoder):
        raise ConfigError(
            f"{type(encoder).__name__} has no transformers equivalent; only selfsup's wav2vec2 encoder maps "
            "onto Wav2Vec2Model / HubertModel"
        )
    return hf_config(encoder.config, model), to_hf_state_dict(encoder.state_dict())


def read_hf_directory(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor], float]:
    """``(config, state dict, sample rate)`` of a transformers checkpoint directory (safetensors only)."""
    path = Path(path)
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a transformers checkpoint directory (no {CONFIG})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is corrupt: {error}") from None
    if (path / WEIGHTS).is_file():
        files = [path / WEIGHTS]
    elif (path / WEIGHTS_INDEX).is_file():
        index = json.loads((path / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        files = [path / name for name in sorted(set(index.get("weight_map", {}).values()))]
    else:
        raise CheckpointError(
            f"{path} has no {WEIGHTS}; selfsup reads safetensors only (never pickles): in Python, "
            "transformers' model.save_pretrained(dir) writes one"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot read {file} (missing or corrupt?): {error}") from None
    sample_rate = 16000.0
    if (path / PREPROCESSOR).is_file():
        with_rate = json.loads((path / PREPROCESSOR).read_text(encoding="utf-8"))
        sample_rate = float(with_rate.get("sampling_rate", sample_rate))
    return config, state, sample_rate


def from_hf(
    source: str | Path | tuple[dict[str, Any], dict[str, Tensor]], **overrides: Any
) -> Wav2Vec2Encoder:
    """Our ``wav2vec2`` encoder (eval mode) from a transformers Wav2Vec2 / HuBERT checkpoint: a directory
    (``config.json`` + ``model.safetensors``) or a ``(config dict, state dict)`` pair. ``overrides`` set
    :class:`Wav2Vec2Config` fields (e.g. ``layerdrop``, ``sample_rate``)."""
    if isinstance(source, tuple):
        config, state = source
        sample_rate = float(overrides.pop("sample_rate", 16000.0))
    else:
        config, state, sample_rate = read_hf_directory(source)
        sample_rate = float(overrides.pop("sample_rate", sample_rate))
    encoder = Wav2Vec2Encoder(config_from_hf(config, sample_rate, **overrides))
    weights = from_hf_state_dict(state)
    if "mask_embedding" not in weights:  # transformers omits it when mask_time_prob == 0: keep ours
        weights["mask_embedding"] = encoder.mask_embedding.detach().clone()
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the transformers weights do not fit the encoder their config describes: {error}"
        ) from None
    return encoder.eval()


__all__ = [
    "HF_MODELS",
    "RENAMES",
    "config_from_hf",
    "from_hf",
    "from_hf_state_dict",
    "hf_config",
    "read_hf_directory",
    "to_hf",
    "to_hf_state_dict",
]
