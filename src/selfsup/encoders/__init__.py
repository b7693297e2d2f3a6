"""Backbones. Importing this package registers every encoder in :data:`ENCODERS`."""

from selfsup.encoders import image as _image  # noqa: F401  (registers the image encoders)
from selfsup.encoders import vector as _vector  # noqa: F401  (registers the vector encoders)
from selfsup.encoders.base import ENCODERS, MASK_MODES, Encoder, EncoderOutput, pool_hidden_state

__all__ = ["ENCODERS", "MASK_MODES", "Encoder", "EncoderOutput", "pool_hidden_state"]
