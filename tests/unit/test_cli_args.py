from __future__ import annotations

import pytest

from selfsup.cli import parse_args


def test_overrides_may_follow_options() -> None:
    args = parse_args(["pretrain", "--out", "r", "optim.lr=0.1", "--steps", "3", "train.seed=2"])
    assert args.steps == 3 and args.overrides == ["optim.lr=0.1", "train.seed=2"]
    demo = parse_args(["demo", "--steps", "5", "method.temperature=0.2"])
    assert demo.overrides == ["method.temperature=0.2"]


def test_unknown_options_and_stray_words_are_errors() -> None:
    with pytest.raises(SystemExit):
        parse_args(["pretrain", "--out", "r", "--bogus", "1"])
    with pytest.raises(SystemExit):
        parse_args(["embed", "--run", "r", "--data", "d", "--out", "o", "optim.lr=1"])  # embed takes none
