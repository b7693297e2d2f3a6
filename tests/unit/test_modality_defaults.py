"""A modality's config defaults replace the library-wide ones only where nothing was set."""

from __future__ import annotations

from selfsup.api import make_config
from selfsup.build import resolve_components
from selfsup.data.audio import audio_info
from selfsup.data.base import DataInfo
from selfsup.modalities import get_modality

AUDIO = audio_info(16000, None)


def test_audio_gets_duration_batches_and_adamw_by_default() -> None:
    config = resolve_components(make_config(), AUDIO)
    for dotted, value in get_modality("audio").config_defaults.items():
        section, key = dotted.split(".")
        assert getattr(getattr(config, section), key) == value, dotted
    assert (config.method.name, config.encoder.name) == ("wav2vec2", "wav2vec2")


def test_what_the_user_sets_wins() -> None:
    config = resolve_components(make_config(overrides=["optim.lr=0.002", "data.batch_seconds=4"]), AUDIO)
    assert config.optim.lr == 0.002 and config.data.batch_seconds == 4
    assert config.optim.name == "adamw"  # the rest still comes from the modality
    counted = resolve_components(make_config(overrides=["data.batch_seconds=0"]), AUDIO)
    assert counted.data.batch_seconds == 0  # 0: batches of train.batch_size clips


def test_other_modalities_keep_the_library_defaults() -> None:
    vectors = DataInfo(modality="vector", sample_shape=(4,), dtype="float32")
    config = resolve_components(make_config(), vectors)
    assert config.optim.name == "lars" and config.data.batch_seconds is None
