"""Every registered view policy honours the view contract on the tiny data set of its modality.

Parametrized over ``VIEW_POLICIES.names()``: a policy is covered the moment it is registered.
"""

from __future__ import annotations

import pytest
import torch
from tiny_data import SMALL_ENCODER, TINY_DATA, small_encoder

from selfsup.augment import VIEW_POLICIES
from selfsup.build import build_encoder, build_policy, fit_transform
from selfsup.config import PROVIDED, Config
from selfsup.encoders import ENCODERS
from selfsup.encoders.base import missing_capabilities
from selfsup.views import Views

NAMES = VIEW_POLICIES.names()


def _policy(name: str):
    modality = VIEW_POLICIES.metadata(name)["modality"]
    data = TINY_DATA[modality]()
    config = Config()
    config.augment.policy = name
    config.method.name = "simclr"
    needs = VIEW_POLICIES.metadata(name).get("needs", ())
    config.encoder.name = next(
        e
        for e in ENCODERS.names_where(modality=modality)
        if not ENCODERS.metadata(e).get("requires_checkpoint")
        and not missing_capabilities(small_encoder(e), needs)
    )
    config.encoder.params = dict(SMALL_ENCODER.get(config.encoder.name, {}))
    transform = fit_transform(config, data)
    return build_policy(config, data.info, transform, build_encoder(config, data.info)), data


@pytest.mark.parametrize("name", NAMES)
def test_views_contract(name: str) -> None:
    policy, data = _policy(name)
    batch = data.batch(torch.arange(len(data)))
    views = policy(batch, torch.Generator().manual_seed(0))
    assert isinstance(views, Views) and 1 <= views.num_global <= len(views.inputs)
    shapes = {tuple(x.shape) for x in views.global_inputs}
    assert len(shapes) == 1, "global views share one shape"
    for x in views.inputs:
        assert x.shape[0] == len(data) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(views.labels, batch.labels) and torch.equal(views.indices, batch.indices)
    for aligned in (views.padding_masks, views.masks):
        assert aligned is None or len(aligned) == len(views.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_views_are_a_function_of_the_seed(name: str) -> None:
    policy, data = _policy(name)
    batch = data.batch(torch.arange(len(data)))
    first, again, other = (policy(batch, torch.Generator().manual_seed(s)) for s in (1, 1, 2))

    def drawn(views: Views) -> list[torch.Tensor]:
        """Everything a policy draws at random: the views, their token masks and their crops."""
        extra = [x for x in (*(views.masks or ()), *(views.crop_starts or ())) if x is not None]
        return [*views.inputs, *extra]

    assert all(torch.equal(a, b) for a, b in zip(drawn(first), drawn(again), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(drawn(first), drawn(other), strict=True))
    # Random per sample: the two views of one batch differ (policies that make two or more).
    if len(first.inputs) >= 2:
        assert not torch.equal(first.inputs[0], first.inputs[1])


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_modality_and_plain_options(name: str) -> None:
    assert VIEW_POLICIES.metadata(name).get("modality") in TINY_DATA
    for option, parameter in VIEW_POLICIES.parameters(name).items():
        if option in PROVIDED["policy"]:
            continue
        assert parameter.default is not parameter.empty, f"{name}.{option} needs a default"
