"""Audio signal processing shared by the speech/audio encoders, methods and baselines.

:mod:`selfsup.audio.frontend`: batched log-mel filterbanks and MFCCs (with deltas) in torch, padding-aware.
"""

from selfsup.audio.frontend import MFCC, LogMelFrontend, compute_deltas, hop_length_for, mel_filterbank

__all__ = ["MFCC", "LogMelFrontend", "compute_deltas", "hop_length_for", "mel_filterbank"]
