"""SSL methods. Importing this package registers every method in :data:`METHODS`."""

from selfsup.methods import byol as _byol  # noqa: F401  (registers "byol")
from selfsup.methods import data2vec as _data2vec  # noqa: F401  (registers "data2vec")
from selfsup.methods import finetune as _finetune  # noqa: F401  (registers "finetune")
from selfsup.methods import hubert as _hubert  # noqa: F401  (registers "hubert")
from selfsup.methods import simclr as _simclr  # noqa: F401  (registers "simclr")
from selfsup.methods import wav2vec2 as _wav2vec2  # noqa: F401  (registers "wav2vec2")
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views

__all__ = ["METHODS", "Method", "MethodOutput", "StepInfo", "Views"]
