"""Config: overrides, recipes, unknown keys with suggestions, type checks, resume comparison."""

from __future__ import annotations

import pytest

from selfsup.api import make_config
from selfsup.config import (
    Config,
    ConfigError,
    apply_overrides,
    differences,
    dump_config,
    from_dict,
    load_recipe,
    parse_override,
    recipe_names,
    to_dict,
    validate,
)


def test_override_sets_typed_values() -> None:
    config = apply_overrides(
        Config(), ["optim.lr=0.05", "train.steps=7", "train.sync_bn=true", "augment.size=24"]
    )
    assert config.optim.lr == 0.05 and isinstance(config.optim.lr, float)
    assert config.train.steps == 7 and config.train.sync_bn is True and config.augment.size == 24


def test_override_values_are_yaml_not_code() -> None:
    key, value = parse_override("data.source=__import__('os').system('true')")
    assert key == "data.source" and isinstance(value, str)  # a plain string, never evaluated
    assert parse_override("augment.mean=[0.5, 0.5, 0.5]") == ("augment.mean", [0.5, 0.5, 0.5])


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.weight_decy'.*Did you mean 'weight_decay'"
    ):
        apply_overrides(Config(), ["optim.weight_decy=0.1"])
    with pytest.raises(ConfigError, match=r"'trian'.*Did you mean 'train'"):
        apply_overrides(Config(), ["trian.steps=3"])


def test_wrong_types_are_rejected() -> None:
    with pytest.raises(ConfigError, match="train.steps"):
        apply_overrides(Config(), ["train.steps=1.5"])
    with pytest.raises(ConfigError, match="train.sync_bn"):
        apply_overrides(Config(), ["train.sync_bn=3"])
    with pytest.raises(ConfigError, match="augment.mean"):
        apply_overrides(Config(), ["augment.mean=[0.5, red]"])
    with pytest.raises(ConfigError, match="cannot be null"):
        apply_overrides(Config(), ["optim.lr=null"])


def test_component_params_are_checked_against_the_factory() -> None:
    config = apply_overrides(
        Config(), ["method=simclr", "method.temperature=0.2", "encoder=resnet18", "encoder.stem=cifar"]
    )
    assert config.method.params == {"temperature": 0.2} and config.encoder.params == {"stem": "cifar"}
    validate(config)
    apply_overrides(config, ["method.temprature=0.2"])
    with pytest.raises(ConfigError, match=r"no option 'temprature'.*Did you mean 'temperature'"):
        validate(config)


def test_policy_params_take_dotted_keys_like_component_params() -> None:
    config = apply_overrides(Config(), ["method=simclr", "augment.params.crop_scale=[0.2, 1.0]"])
    assert config.augment.params == {"crop_scale": [0.2, 1.0]}
    validate(config, "image")
    apply_overrides(config, ["augment.params.crop_scal=0.5"])
    with pytest.raises(ConfigError, match="augment.params"):
        validate(config, "image")


def test_unknown_method_and_policy_option_fail_validation() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'simclr'"):
        validate(apply_overrides(Config(), ["method=simclf"]))
    with pytest.raises(ConfigError, match="augment.params"):
        validate(
            apply_overrides(Config(), ["method=simclr", "augment.params={crop_scal: [0.2, 1.0]}"]), "image"
        )
    # Without the modality the default policy is not known yet: checked once the data is loaded.
    validate(apply_overrides(Config(), ["method=simclr", "augment.params={crop_scal: [0.2, 1.0]}"]))
    with pytest.raises(ConfigError, match="no default view policy for audio"):
        validate(apply_overrides(Config(), ["method=simclr"]), "audio")


def test_names_default_to_none_and_steps_may_be_zero() -> None:
    config = Config()
    assert config.method.name is None and config.encoder.name is None
    validate(apply_overrides(config, ["train.steps=0"]))
    with pytest.raises(ConfigError, match="train.steps must be at least 0"):
        validate(apply_overrides(Config(), ["train.steps=-1"]))
    with pytest.raises(ConfigError, match="data.loading"):
        validate(apply_overrides(Config(), ["data.loading=disk"]))


def test_round_trip_through_yaml_is_exact() -> None:
    import yaml

    config = apply_overrides(
        Config(), ["method=byol", "method.base_momentum=0.99", "augment.mean=[0.1,0.2,0.3]"]
    )
    again = from_dict(yaml.safe_load(dump_config(config)))
    assert to_dict(again) == to_dict(config) and differences(config, again) == {}


def test_differences_lists_changed_keys() -> None:
    a, b = Config(), apply_overrides(Config(), ["optim.lr=1.0", "method.temperature=0.1"])
    assert differences(a, b) == {"optim.lr": (0.3, 1.0), "method.params": ({}, {"temperature": 0.1})}


def test_packaged_recipes_load_and_validate() -> None:
    names = recipe_names()
    assert "simclr_digits" in names
    for name in names:
        config = from_dict(load_recipe(name))
        validate(config)


def test_unknown_recipe_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'simclr_digits'"):
        load_recipe("simclr_digit")


def test_naming_another_component_drops_the_options_of_the_old_one() -> None:
    """`encoder=vit_tiny` over a ResNet recipe: the recipe's `stem` would be an unknown ViT option."""
    for override in ("encoder=vit_tiny", "encoder.name=vit_tiny"):
        config = make_config("dino_cifar10", overrides=[override, "encoder.patch_size=4"])
        assert config.encoder.name == "vit_tiny" and config.encoder.params == {"patch_size": 4}
    same = make_config("dino_cifar10", overrides=["encoder=resnet18"])  # the same name keeps them
    assert same.encoder.params["stem"] == "cifar"
    assert make_config("dino_cifar10", overrides=["method=dino"]).method.params["out_dim"] == 4096
