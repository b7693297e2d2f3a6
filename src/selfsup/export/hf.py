"""The ``hf`` format (a Hugging Face transformers directory): registered now, usable once speech and
text encoders exist.

A transformers directory (``config.json`` of a transformers architecture + ``model.safetensors``
under its key names) is the standard for wav2vec 2.0 / HuBERT-style speech encoders and BERT-style
text encoders; the audio and text issues add those encoders and fill this exporter in. Until then
every encoder is refused with the formats that do work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.errors import ConfigError
from selfsup.export.base import EXPORTERS

if TYPE_CHECKING:
    from selfsup.api import Pretrained

PLANNED = "speech encoders (wav2vec 2.0 / HuBERT-style) and text encoders (BERT-style)"


def _supports(model: Pretrained) -> str | None:
    return (
        f"the Hugging Face transformers format will cover {PLANNED} when they land (audio and text "
        f"issues); no {model.encoder.modality} encoder maps to a transformers architecture"
    )


@EXPORTERS.register("hf", supports=_supports)
def export_hf(model: Pretrained, directory: Path) -> dict[str, Any]:
    """Hugging Face transformers directory (speech and text encoders, once they exist)."""
    raise ConfigError(f"cannot export as hf: {_supports(model)}")
