"""SSL methods. Importing this package registers every method in :data:`METHODS`."""

from selfsup.methods import barlow_twins as _barlow_twins  # noqa: F401  (registers "barlow_twins")
from selfsup.methods import byol as _byol  # noqa: F401  (registers "byol")
from selfsup.methods import data2vec as _data2vec  # noqa: F401  (registers "data2vec")
from selfsup.methods import dcl as _dcl  # noqa: F401  (registers "dcl")
from selfsup.methods import dino as _dino  # noqa: F401  (registers "dino")
from selfsup.methods import dinov2 as _dinov2  # noqa: F401  (registers "dinov2")
from selfsup.methods import finetune as _finetune  # noqa: F401  (registers "finetune")
from selfsup.methods import hubert as _hubert  # noqa: F401  (registers "hubert")
from selfsup.methods import ijepa as _ijepa  # noqa: F401  (registers "ijepa")
from selfsup.methods import lejepa as _lejepa  # noqa: F401  (registers "lejepa")
from selfsup.methods import mae as _mae  # noqa: F401  (registers "mae")
from selfsup.methods import moco as _moco  # noqa: F401  (registers "mocov2", "mocov3")
from selfsup.methods import nnclr as _nnclr  # noqa: F401  (registers "nnclr")
from selfsup.methods import simclr as _simclr  # noqa: F401  (registers "simclr")
from selfsup.methods import simsiam as _simsiam  # noqa: F401  (registers "simsiam")
from selfsup.methods import swav as _swav  # noqa: F401  (registers "swav")
from selfsup.methods import vicreg as _vicreg  # noqa: F401  (registers "vicreg")
from selfsup.methods import wav2vec2 as _wav2vec2  # noqa: F401  (registers "wav2vec2")
from selfsup.methods import wmse as _wmse  # noqa: F401  (registers "wmse")
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views

__all__ = ["METHODS", "Method", "MethodOutput", "StepInfo", "Views"]
