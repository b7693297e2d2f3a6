"""Backbones. Importing this package registers every encoder in :data:`ENCODERS`."""

from selfsup.encoders import audio as _audio  # noqa: F401  (registers the speech encoder wav2vec2)
from selfsup.encoders import audio_cnn as _audio_cnn  # noqa: F401  (registers byol_a_cnn)
from selfsup.encoders import hf_upstream as _hf_upstream  # noqa: F401  (hf_speech: transformers checkpoints)
from selfsup.encoders import image as _image  # noqa: F401  (registers the image encoders)
from selfsup.encoders import spectrogram as _spectrogram  # noqa: F401  (audio_spt)
from selfsup.encoders import vector as _vector  # noqa: F401  (registers the vector encoders)
from selfsup.encoders import vit as _vit  # noqa: F401  (vit_tiny, vit_small, vit_base)
from selfsup.encoders.base import ENCODERS, MASK_MODES, Encoder, EncoderOutput, pool_hidden_state

__all__ = ["ENCODERS", "MASK_MODES", "Encoder", "EncoderOutput", "pool_hidden_state"]
