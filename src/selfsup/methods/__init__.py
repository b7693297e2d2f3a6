"""SSL methods. Importing this package registers every method in :data:`METHODS`."""

from selfsup.methods import byol as _byol  # noqa: F401  (registers "byol")
from selfsup.methods import finetune as _finetune  # noqa: F401  (registers "finetune")
from selfsup.methods import simclr as _simclr  # noqa: F401  (registers "simclr")
from selfsup.methods.base import METHODS, Method, MethodOutput, StepInfo, Views

__all__ = ["METHODS", "Method", "MethodOutput", "StepInfo", "Views"]
