"""Checkpoints: exact optimizer/model/RNG round trips, retention, atomicity under a simulated
crash, clear errors for damaged files, and loading without any unpickling."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from selfsup.train.optim import build_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(8, 3, generator=gen)).pow(2).mean().backward()
        opt.step()


def _save(directory: Path, step: int, **kw: object) -> Path:
    # A fixed model dict: building a network here would reseed the global RNG under test.
    defaults: dict = {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "optimizer": None,
        "extra_tensors": None,
        "state": {"n": step},
    }
    defaults.update(kw)
    return save_checkpoint(directory, step, **defaults)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizer_round_trip_continues_identically(tmp_path: Path, name: str) -> None:
    net = _net()
    opt = build_optimizer(name, net, lr=0.05, weight_decay=0.01, betas=(0.8, 0.95))
    _train(net, opt, 3, seed=1)
    path = save_checkpoint(
        tmp_path, 3, model=net.state_dict(), optimizer=opt, extra_tensors=None, state={"epoch": 1}
    )
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3 and ckpt.state == {"epoch": 1} and ckpt.path == path

    saved = opt.state_dict()
    assert ckpt.optimizer_state is not None
    assert ckpt.optimizer_state["param_groups"] == saved["param_groups"]  # incl. betas as a tuple
    assert ckpt.optimizer_state["state"].keys() == saved["state"].keys()
    for idx, entries in saved["state"].items():
        for key, value in entries.items():
            got = ckpt.optimizer_state["state"][idx][key]
            assert type(got) is type(value) and torch.equal(got, value), (idx, key)

    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    fresh.load_state_dict(ckpt.model)
    fresh_opt = build_optimizer(name, fresh, lr=1.0, weight_decay=0.0)  # hyper-parameters come from the file
    fresh_opt.load_state_dict(ckpt.optimizer_state)
    _train(net, opt, 2, seed=2)
    _train(fresh, fresh_opt, 2, seed=2)
    for (k, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k


def test_rng_states_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(123)
    torch.randn(5, generator=gen)
    torch.manual_seed(7)
    extra = {"rng/generator": gen.get_state(), "rng/cpu": torch.get_rng_state()}
    path = _save(tmp_path, 1, extra_tensors=extra)
    expected_gen = torch.randn(4, generator=gen)
    expected_cpu = torch.rand(4)

    ckpt = load_checkpoint(path)
    assert ckpt.extra_tensors["rng/generator"].dtype == torch.uint8
    restored = torch.Generator()
    restored.set_state(ckpt.extra_tensors["rng/generator"])
    torch.set_rng_state(ckpt.extra_tensors["rng/cpu"])
    assert torch.equal(torch.randn(4, generator=restored), expected_gen)
    assert torch.equal(torch.rand(4), expected_cpu)


def test_file_layout_and_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(6.0)
    model = {"a": base, "tied": base, "view": base[::2], "t": torch.ones(2, 3).t()}
    path = _save(tmp_path, 12, model=model, state={"cfg": {"betas": (0.9, 0.99), "name": "x", "none": None}})
    assert path.name == "step_00000012.json"
    assert (tmp_path / "step_00000012.safetensors").is_file()
    ckpt = load_checkpoint(path)
    assert set(ckpt.model) == set(model)
    for k, v in model.items():
        assert torch.equal(ckpt.model[k], v), k
    assert ckpt.state == {"cfg": {"betas": (0.9, 0.99), "name": "x", "none": None}}
    assert ckpt.optimizer_state is None


def test_bad_inputs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="extra_tensors"):
        _save(tmp_path, 1, state={"x": torch.ones(1)})
    with pytest.raises(TypeError, match="not a tensor"):
        _save(tmp_path, 1, model={"w": [1.0]})
    with pytest.raises(TypeError, match="cannot store set"):
        _save(tmp_path, 1, state={"x": {1, 2}})
    with pytest.raises(ValueError, match="keep"):
        _save(tmp_path, 1, keep=0)
    assert latest_checkpoint(tmp_path) is None


def test_keep_newest_and_never_the_one_just_written(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000003.json",
        "step_00000003.safetensors",
        "step_00000004.json",
        "step_00000004.safetensors",
    ]
    _save(tmp_path, 2)  # older than both kept ones (e.g. a rerun from an earlier step): still kept
    assert {p.name for p in tmp_path.glob("*.json")} == {
        "step_00000002.json",
        "step_00000003.json",
        "step_00000004.json",
    }
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004.json"


def test_latest_ignores_incomplete_files(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    _save(tmp_path, 5)
    (tmp_path / "step_00000009.safetensors").write_bytes(b"partial")
    (tmp_path / ".step_00000010.json.abc.tmp").write_text("{}")
    (tmp_path / "step_00000011.json").write_text("{}")  # JSON without tensors: not complete either
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000005.json"


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_crash_before_rename_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on_call: int
) -> None:
    """Call 1 renames the tensors, call 2 the JSON: a crash before either leaves step 1 the latest."""
    _save(tmp_path, 1, state={"which": "first"})
    real_replace = os.replace
    calls = {"n": 0}

    def crashing_replace(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        _save(tmp_path, 2, state={"which": "second"})
    monkeypatch.undo()

    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "step_00000001.json"
    assert load_checkpoint(latest).state == {"which": "first"}
    assert not (tmp_path / "step_00000002.json").exists()
    assert not list(tmp_path.glob("*.tmp"))
    # The next successful save removes what the crash left behind.
    _save(tmp_path, 3)
    assert not (tmp_path / "step_00000002.safetensors").exists()


def test_damaged_files_give_clear_errors(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    tensors = tmp_path / "step_00000001.safetensors"
    good = tensors.read_bytes()

    with pytest.raises(CheckpointError, match=r"step_00000099\.json does not exist"):
        load_checkpoint(tmp_path / "step_00000099.json")

    tensors.write_bytes(good[:-7])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    tensors.write_bytes(b"\xff" * len(good))  # same size, garbage content
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors"):
        load_checkpoint(path)
    tensors.unlink()
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors .*does not exist"):
        load_checkpoint(path)

    tensors.write_bytes(good)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"step_00000001\.json is not valid JSON"):
        load_checkpoint(path)
    payload = json.loads(text)
    payload["tensors_file"] = "../elsewhere.safetensors"
    path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="tensors_file"):
        load_checkpoint(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a selfsup-checkpoint"):
        load_checkpoint(path)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    opt = build_optimizer("adamw", net, lr=0.1, weight_decay=0.1)
    _train(net, opt, 1, seed=0)
    path = save_checkpoint(tmp_path, 1, model=net.state_dict(), optimizer=opt, extra_tensors=None, state={})

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint load must not unpickle")

    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, attr, forbidden)
    ckpt = load_checkpoint(path)
    assert ckpt.optimizer_state is not None and ckpt.model.keys() == net.state_dict().keys()
