"""Errors a user can act on.

Every exception raised for bad input (a config key, a data file, a checkpoint, a device that does
not exist, …) derives from :class:`SelfsupError`; the command line prints its message and exits
with status 2 instead of showing a traceback. The message says what was wrong and what to do.
"""

from __future__ import annotations


class SelfsupError(Exception):
    """Base class of the errors caused by the user's input; the message is meant for a person."""


class ConfigError(SelfsupError, ValueError):
    """A configuration that cannot be used; the message says which key and why."""


class DataError(SelfsupError, ValueError):
    """Bad input data: the message says what was wrong and what to do about it."""


class CheckpointError(SelfsupError, ValueError):
    """A checkpoint or run directory is missing, truncated or not one of ours; the message names the file."""


class DeviceError(SelfsupError, RuntimeError):
    """A device (or a device feature such as bf16) was asked for that this machine does not have."""


class CollapseError(SelfsupError, RuntimeError):
    """The representations of a run have collapsed (data2vec's targets lost their variance, W-MSE's batch
    cannot be whitened): training cannot go on as configured."""


__all__ = ["CheckpointError", "CollapseError", "ConfigError", "DataError", "DeviceError", "SelfsupError"]
