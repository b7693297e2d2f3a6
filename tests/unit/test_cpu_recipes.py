"""The image recipes at CPU scale (`selfsup.benchmark.cpu_recipe`): the CPU encoder replaces the recipe's, and
the short-run settings (`SHORT_RUNS`) are valid config for the method they name and reach the config."""

from __future__ import annotations

import pytest

from selfsup.benchmark import SHORT_RUNS, VISION_RECIPES, cpu_encoder, cpu_recipe, short_run_settings


@pytest.mark.parametrize("method", list(VISION_RECIPES))
def test_every_recipe_builds_at_cpu_scale_with_and_without_its_short_run(method: str) -> None:
    plain = cpu_recipe(method, data="train.tar", steps=140)
    short = cpu_recipe(method, data="train.tar", steps=140, short_run=True)
    name, options = cpu_encoder(method)
    for config in (plain, short):
        assert config.method.name == method and config.encoder.name == name
        assert options.items() <= config.encoder.params.items()
        assert config.train.steps == 140 and config.optim.warmup_steps == 14
    # Unlisted methods run 256 images a step whatever their recipe's batch (SimCLR's and DCL's is 512).
    assert short.train.batch_size == short_run_settings(method).batch_size


def test_short_run_overrides_reach_the_config_and_later_overrides_win() -> None:
    assert set(SHORT_RUNS) <= set(VISION_RECIPES)
    assert all(run.evidence for run in SHORT_RUNS.values())
    vicreg = cpu_recipe("vicreg", data="train.tar", steps=10, short_run=True)
    assert vicreg.optim.clip_lr is False
    assert cpu_recipe("vicreg", data="train.tar", steps=10).optim.clip_lr is True  # the recipe's own
    dino = cpu_recipe("dino", data="train.tar", steps=10, short_run=True)
    assert dino.method.params["freeze_last_layer"] == 195 and dino.method.params["base_momentum"] == 0.99
    mine = cpu_recipe("mocov2", data="train.tar", steps=10, short_run=True, overrides=["train.batch_size=32"])
    assert mine.train.batch_size == 32 and mine.method.params["queue_size"] == 4096
