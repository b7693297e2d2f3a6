"""A local Hugging Face speech checkpoint (Wav2Vec2, HuBERT, WavLM, ...) as an encoder (``hf_speech``).

For SUPERB-style evaluation of models trained elsewhere (S3PRL's upstream idea): the directory is loaded
with ``transformers.AutoModel.from_pretrained(path, local_files_only=True)`` (nothing is downloaded;
transformers is an optional extra, ``pip install selfsup[hf]``, imported only when this encoder is
built) and wrapped in the Encoder contract:

* input ``(B, T)`` float waveforms at the checkpoint's rate (``preprocessor_config.json``
  ``sampling_rate``, else 16 kHz); ``padding_mask`` ``(B, T)`` becomes transformers' ``attention_mask``
  (1 at valid samples);
* ``hidden_states``: transformers' ``output_hidden_states`` (``num_hidden_layers + 1`` entries), with the
  last entry its ``last_hidden_state`` (for stable-layer-norm models transformers 5 returns the last
  block's output before the final LayerNorm there; see :mod:`selfsup.interop.hf_speech`);
* frames: ``frame_rate = sample_rate / prod(conv_stride)``, ``output_lengths`` from ``conv_kernel`` /
  ``conv_stride`` (transformers' ``_get_feat_extract_output_lengths``), the frame padding mask from them,
  ``pooled`` averaged over valid frames only.

transformers' group-norm feature extractors (wav2vec2-base, HuBERT/WavLM Base) normalize the first
convolution over the whole padded row, so a padded clip's output would depend on its batch; with
``exact_padding=True`` (default) such models encode each padded clip alone, cropped to its length, so
that padding never changes an output. Layer-norm models take the batch at once with the attention mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.encoders.audio import conv_output_lengths
from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    padding_mask_from_lengths,
    pool_hidden_state,
)
from selfsup.errors import ConfigError

INSTALL_HINT = "pip install 'selfsup[hf]'"
PREPROCESSOR = "preprocessor_config.json"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"encoder hf_speech loads Hugging Face checkpoints with transformers, which is not installed: "
            f"{INSTALL_HINT}"
        ) from None
    return transformers


def _read_preprocessor(path: Path) -> dict[str, Any]:
    file = path / PREPROCESSOR
    if not file.is_file():
        return {}
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConfigError(f"{file} is not valid JSON: {error}") from None


class HFSpeechEncoder(Encoder):
    """A transformers speech model (``model``, with ``config.conv_kernel`` / ``conv_stride``) as an Encoder.

    ``(B, T)`` float waveforms → ``EncoderOutput`` with ``num_layers + 1`` hidden states ``(B, F, D)``.
    ``do_normalize`` says whether the checkpoint expects each clip normalized to zero mean and unit
    variance (its feature extractor's setting; None when the directory does not say).
    """

    modality = "audio"
    mask_mode = "none"

    def __init__(
        self,
        model: nn.Module,
        *,
        sample_rate: float = 16000.0,
        do_normalize: bool | None = None,
        exact_padding: bool = True,
        name: str = "hf_speech",
    ) -> None:
        super().__init__()
        config = model.config
        if getattr(config, "add_adapter", False):
            raise ConfigError(f"{name}: checkpoints with an adapter (add_adapter=True) are not supported")
        for key in ("conv_kernel", "conv_stride", "hidden_size", "num_hidden_layers"):
            if not hasattr(config, key):
                raise ConfigError(
                    f"{name}: {type(model).__name__} has no {key} in its config; hf_speech takes "
                    "wav2vec 2.0-style speech models (Wav2Vec2, HuBERT, WavLM, data2vec-audio)"
                )
        self.model = model
        self.name = name
        self.kernels = tuple(int(k) for k in config.conv_kernel)
        self.strides = tuple(int(s) for s in config.conv_stride)
        self.embed_dim = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.sample_rate = float(sample_rate)
        self.frame_rate = self.sample_rate / math.prod(self.strides)
        self.do_normalize = do_normalize
        self.group_norm = getattr(config, "feat_extract_norm", "group") == "group"
        self.exact_padding = exact_padding

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernels, self.strides)

    def layer_id(self, name: str) -> int:
        """transformers' ``encoder.layers.i`` are ``i + 1``; the final ``encoder.layer_norm`` of stable-norm
        models ``num_layers``; the feature extractor, projection and positional conv 0."""
        parts = name.split(".")
        if "layers" in parts and parts[parts.index("layers") - 1] == "encoder":
            return int(parts[parts.index("layers") + 1]) + 1
        if name.startswith("model.encoder.layer_norm.") and getattr(
            self.model.config, "do_stable_layer_norm", False
        ):
            return self.num_layers
        return 0

    def _run(self, x: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, ...]:
        out = self.model(x, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        states = list(out.hidden_states)
        if len(states) != self.num_layers + 1:
            raise ConfigError(
                f"{self.name}: the model returned {len(states)} hidden states for {self.num_layers} layers"
            )
        states[-1] = out.last_hidden_state
        return tuple(states)

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        if mask is not None:
            raise ValueError(f"{self.name} is a frozen upstream: it cannot mask frames (mask= was given)")
        if x.ndim != 2 or not torch.is_floating_point(x):
            raise ValueError(
                f"{self.name} expects float waveforms of shape (B, T), got {tuple(x.shape)} {x.dtype}"
            )
        if padding_mask is not None and not bool(padding_mask.any()):
            padding_mask = None
        if padding_mask is None:
            states = self._run(x, None)
            last = states[-1]
            return EncoderOutput(pool_hidden_state(last), last, states, None)
        lengths = (~padding_mask).sum(dim=1)
        frames = self.output_lengths(lengths)
        if bool((frames < 1).any()):
            raise ValueError(f"{self.name}: a clip is shorter than one frame ({sum(self.kernels)}+ samples)")
        total = int(self.output_lengths(torch.tensor([x.shape[1]]))[0])
        frame_mask = padding_mask_from_lengths(frames, total)
        if self.group_norm and self.exact_padding:
            states = self._run_one_by_one(x, lengths, total)
        else:
            states = self._run(x, (~padding_mask).long())
        last = states[-1]
        return EncoderOutput(pool_hidden_state(last, frame_mask), last, states, frame_mask)

    def _run_one_by_one(self, x: Tensor, lengths: Tensor, total: int) -> tuple[Tensor, ...]:
        """Each clip alone (cropped), outputs zero-padded back to ``total`` frames."""
        per_clip = [self._run(x[b : b + 1, : int(n)], None) for b, n in enumerate(lengths.tolist())]
        states = []
        for layer in range(self.num_layers + 1):
            rows = [clip[layer][0] for clip in per_clip]
            out = rows[0].new_zeros(len(rows), total, rows[0].shape[-1])
            for b, row in enumerate(rows):
                out[b, : row.shape[0]] = row
            states.append(out)
        return tuple(states)


@ENCODERS.register("hf_speech", modality="audio", requires_checkpoint=True)
def hf_speech(
    path: str,
    info: DataInfo | None = None,
    sample_rate: float | None = None,
    exact_padding: bool = True,
) -> HFSpeechEncoder:
    """A local Hugging Face Wav2Vec2 / HuBERT / WavLM checkpoint directory as a (frozen) speech upstream."""
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"hf_speech: {directory} is not a Hugging Face checkpoint directory (no config.json); "
            "give the local folder written by save_pretrained (nothing is downloaded)"
        )
    transformers = _import_transformers()
    pre = _read_preprocessor(directory)
    rate = float(sample_rate if sample_rate is not None else pre.get("sampling_rate", 16000))
    data_rate = None if info is None else info.sample_rate
    if data_rate is not None and float(data_rate) != rate:
        raise ConfigError(
            f"hf_speech: the checkpoint expects {rate:g} Hz audio but the data is at {data_rate:g} Hz; "
            f"load the data at {rate:g} Hz"
        )
    try:
        model = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"hf_speech: transformers cannot load {directory}: {error}") from None
    do_normalize = pre.get("do_normalize")
    return HFSpeechEncoder(
        model.float(),
        sample_rate=rate,
        do_normalize=None if do_normalize is None else bool(do_normalize),
        exact_padding=exact_padding,
    )
