"""Export: round trips for every format (outputs equal), timm's key names and structure, ONNX Runtime
against PyTorch, refusals naming the formats that work, and atomic output directories.

timm cannot be installed here (it needs torchvision), so its ResNet state dicts are recorded below
from timm's source (``timm/models/resnet.py``, huggingface/pytorch-image-models), and
``TimmResNet`` re-creates timm's module structure and forward in plain torch, without importing
our encoder: the export must load into it with ``strict=True`` and give the same pooled output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

import selfsup
from selfsup.api import Pretrained
from selfsup.encoders.image import resnet18, resnet18_narrow, resnet50, small_cnn
from selfsup.encoders.vector import mlp
from selfsup.errors import CheckpointError, ConfigError
from selfsup.export import (
    EXPORTERS,
    ExportError,
    atomic_directory,
    export_run,
    load_exported,
    load_exported_transform,
    working_formats,
)
from selfsup.export.timm import pool_size, timm_unsupported_reason, to_timm_state_dict
from selfsup.io import save_tensors_atomic
from selfsup.registry import UnknownNameError

# timm's convolutions (name, out, in, kernel) for resnet18 / resnet50, from timm's BasicBlock,
# Bottleneck and make_blocks (a downsample projection on the first block of a stage whose shape
# changes). Every convolution `X.convK` is followed by BatchNorm `X.bnK`, `downsample.0` by
# `downsample.1`. timm adds fc.weight (1000, C) / fc.bias unless num_classes=0 (our export).
TIMM_RESNET18_CONVS = """
conv1 64 3 7
layer1.0.conv1 64 64 3
layer1.0.conv2 64 64 3
layer1.1.conv1 64 64 3
layer1.1.conv2 64 64 3
layer2.0.conv1 128 64 3
layer2.0.conv2 128 128 3
layer2.0.downsample.0 128 64 1
layer2.1.conv1 128 128 3
layer2.1.conv2 128 128 3
layer3.0.conv1 256 128 3
layer3.0.conv2 256 256 3
layer3.0.downsample.0 256 128 1
layer3.1.conv1 256 256 3
layer3.1.conv2 256 256 3
layer4.0.conv1 512 256 3
layer4.0.conv2 512 512 3
layer4.0.downsample.0 512 256 1
layer4.1.conv1 512 512 3
layer4.1.conv2 512 512 3
"""
TIMM_RESNET50_CONVS = """
conv1 64 3 7
layer1.0.conv1 64 64 1
layer1.0.conv2 64 64 3
layer1.0.conv3 256 64 1
layer1.0.downsample.0 256 64 1
layer1.1.conv1 64 256 1
layer1.1.conv2 64 64 3
layer1.1.conv3 256 64 1
layer1.2.conv1 64 256 1
layer1.2.conv2 64 64 3
layer1.2.conv3 256 64 1
layer2.0.conv1 128 256 1
layer2.0.conv2 128 128 3
layer2.0.conv3 512 128 1
layer2.0.downsample.0 512 256 1
layer2.1.conv1 128 512 1
layer2.1.conv2 128 128 3
layer2.1.conv3 512 128 1
layer2.2.conv1 128 512 1
layer2.2.conv2 128 128 3
layer2.2.conv3 512 128 1
layer2.3.conv1 128 512 1
layer2.3.conv2 128 128 3
layer2.3.conv3 512 128 1
layer3.0.conv1 256 512 1
layer3.0.conv2 256 256 3
layer3.0.conv3 1024 256 1
layer3.0.downsample.0 1024 512 1
layer3.1.conv1 256 1024 1
layer3.1.conv2 256 256 3
layer3.1.conv3 1024 256 1
layer3.2.conv1 256 1024 1
layer3.2.conv2 256 256 3
layer3.2.conv3 1024 256 1
layer3.3.conv1 256 1024 1
layer3.3.conv2 256 256 3
layer3.3.conv3 1024 256 1
layer3.4.conv1 256 1024 1
layer3.4.conv2 256 256 3
layer3.4.conv3 1024 256 1
layer3.5.conv1 256 1024 1
layer3.5.conv2 256 256 3
layer3.5.conv3 1024 256 1
layer4.0.conv1 512 1024 1
layer4.0.conv2 512 512 3
layer4.0.conv3 2048 512 1
layer4.0.downsample.0 2048 1024 1
layer4.1.conv1 512 2048 1
layer4.1.conv2 512 512 3
layer4.1.conv3 2048 512 1
layer4.2.conv1 512 2048 1
layer4.2.conv2 512 512 3
layer4.2.conv3 2048 512 1
"""
# Parameters of torchvision's / timm's resnet18 and resnet50 (11,689,512 and 25,557,032) without
# the 1000-class fc (513,000 and 2,049,000 parameters).
HEADLESS_PARAMETERS = {"resnet18": 11_176_512, "resnet50": 23_508_032}
# The fields of timm's PretrainedCfg (timm/models/_pretrained.py): a config.json with any other key
# in pretrained_cfg would fail to load in timm.
PRETRAINED_CFG_FIELDS = {
    *("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag"),
    *("custom_load", "input_size", "test_input_size", "min_input_size", "fixed_input_size"),
    *("interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes"),
    *("label_offset", "label_names", "label_descriptions", "pool_size", "test_pool_size", "first_conv"),
    *("classifier", "license", "description", "origin_url", "paper_name", "paper_ids", "notes"),
}


def timm_state_shapes(table: str) -> dict[str, tuple[int, ...]]:
    """The state dict of timm's headless ResNet (key → shape) from a table of its convolutions."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in table.strip().splitlines():
        name, out_ch, in_ch, kernel = line.split()
        shapes[f"{name}.weight"] = (int(out_ch), int(in_ch), int(kernel), int(kernel))
        norm = name[: -len(".0")] + ".1" if name.endswith("downsample.0") else name.replace("conv", "bn")
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{norm}.{buffer}"] = (int(out_ch),)
        shapes[f"{norm}.num_batches_tracked"] = ()
    return shapes


TIMM_SHAPES = {
    "resnet18": timm_state_shapes(TIMM_RESNET18_CONVS),
    "resnet50": timm_state_shapes(TIMM_RESNET50_CONVS),
}


# --- a torch-only ResNet with timm's module structure and forward (timm/models/resnet.py) --------


class TimmBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


class TimmBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        # timm: the stride sits on the 3x3 conv2 (ResNet v1.5).
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


class TimmResNet(nn.Module):
    """timm's ResNet(block, layers, num_classes=0): default stem, conv downsample, avg pool, fc Identity."""

    def __init__(self, block: type[TimmBasicBlock] | type[TimmBottleneck], layers: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, repeats) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, padding=0, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks = []
            for b in range(repeats):
                blocks.append(
                    block(inplanes, planes, stride if b == 0 else 1, downsample if b == 0 else None)
                )
                inplanes = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x))


TIMM_REFERENCE = {
    "resnet18": lambda: TimmResNet(TimmBasicBlock, (2, 2, 2, 2)),
    "resnet50": lambda: TimmResNet(TimmBottleneck, (3, 4, 6, 3)),
}


# --- runs -----------------------------------------------------------------------------------------

KINDS = ("image", "vector", "resnet18")
BATCH = 4  # the ONNX export's verification batch; one batch size keeps oneDNN's kernel cache warm


def randomize_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters: a fresh encoder has mean 0 / var 1,
    which would hide a swapped running_mean / running_var or a missing buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)


def make_run(root: Path, name: str, data: Path, encoder: str, overrides: list[str]) -> Path:
    """A run of 0 steps (random init, no labels so no kNN monitor) with randomized norm layers."""
    run = root / name
    overrides = ["train.progress=false", "train.device=cpu", *overrides]
    selfsup.pretrain(data=str(data), encoder=encoder, out=run, steps=0, overrides=overrides)
    model = selfsup.load(run)
    randomize_norms(model.encoder, seed=len(name))
    save_tensors_atomic(run / "encoder.safetensors", model.encoder.state_dict())
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    rng = np.random.default_rng(0)
    images16, images32, vectors = root / "images16.npz", root / "images32.npz", root / "vectors.npz"
    np.savez(images16, images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    np.savez(images32, images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    # Columns on different scales, so that the standardization matters.
    x = rng.normal(size=(20, 6)) * np.logspace(-1, 2, 6) + np.arange(6) * 10
    np.savez(vectors, x=x.astype(np.float32))
    return {
        "image": make_run(root, "small_cnn", images16, "small_cnn", ["encoder.width=4"]),
        "vector": make_run(root, "mlp", vectors, "mlp", ["encoder.hidden_dim=16", "encoder.num_layers=2"]),
        "resnet18": make_run(root, "resnet18", images32, "resnet18", []),
        "images16": images16,
    }


@pytest.fixture(scope="module")
def loaded(runs: dict[str, Path]) -> dict[str, Pretrained]:
    """The runs as selfsup.load returns them (the references the exports must reproduce)."""
    return {kind: selfsup.load(runs[kind]) for kind in KINDS}


def real_batch(model: Pretrained, n: int = BATCH) -> Tensor:
    """The normalised encoder inputs of the first ``n`` training samples of a run."""
    dataset = model.load_data(model.config.data.source)
    return model.transform(dataset.batch(torch.arange(n)))[0]


# --- safetensors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip_gives_equal_outputs(
    runs: dict[str, Path], loaded: dict[str, Pretrained], kind: str
) -> None:
    run, original = runs[kind], loaded[kind].encoder
    out = export_run(run, "safetensors")
    assert out == run / "export" / "safetensors"
    rebuilt = load_exported(out)
    assert not rebuilt.training
    x = real_batch(loaded[kind])
    with torch.no_grad():
        a, b = original(x), rebuilt(x)
    assert torch.equal(a.pooled, b.pooled)
    assert all(torch.equal(p, q) for p, q in zip(a.hidden_states, b.hidden_states))
    # The file holds exactly the encoder's state dict.
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(original.state_dict())
    config = json.loads((out / "config.json").read_text())
    inputs = json.loads((run / "inputs.json").read_text())
    assert config["transform"] == inputs["transform"]
    assert (config["embed_dim"], config["num_layers"]) == (original.embed_dim, original.num_layers)
    assert config["modality"] == inputs["info"]["modality"]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "safetensors" and str(out) in manifest["usage"]


def test_load_exported_never_unpickles_and_restores_the_transform(
    runs: dict[str, Path], loaded: dict[str, Pretrained], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = export_run(runs["vector"], "safetensors", runs["vector"].parent / "vector_export")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_exported unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    load_exported(out)
    transform, original = load_exported_transform(out), loaded["vector"].transform
    assert torch.equal(transform.mean, original.mean) and torch.equal(transform.std, original.std)


def test_load_exported_refuses_other_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_exported(tmp_path)
    # A timm export has a config.json too, of another kind.
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 0}))
    with pytest.raises(CheckpointError, match="does not describe a selfsup encoder"):
        load_exported(tmp_path)


# --- timm ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["resnet18", "resnet50"])
def test_recorded_timm_state_dicts_match_the_reference_and_published_sizes(architecture: str) -> None:
    shapes = TIMM_SHAPES[architecture]
    parameters = sum(
        int(np.prod(shape)) for key, shape in shapes.items() if key.endswith((".weight", ".bias"))
    )
    assert parameters == HEADLESS_PARAMETERS[architecture]
    reference = TIMM_REFERENCE[architecture]()
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == shapes


def test_timm_export_of_resnet18_loads_strictly_into_timms_structure(
    runs: dict[str, Path], loaded: dict[str, Pretrained]
) -> None:
    run, model = runs["resnet18"], loaded["resnet18"]
    out = export_run(run, "timm")
    weights = load_file(str(out / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == TIMM_SHAPES["resnet18"]
    reference = TIMM_REFERENCE["resnet18"]()
    reference.load_state_dict(weights, strict=True)
    reference.eval()
    x = real_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model.encoder(x).pooled)

    config = json.loads((out / "config.json").read_text())
    transform = json.loads((run / "inputs.json").read_text())["transform"]
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("resnet18", 0, 512)
    cfg = config["pretrained_cfg"]
    assert set(cfg) <= PRETRAINED_CFG_FIELDS
    assert cfg["input_size"] == [3, 32, 32] and cfg["num_classes"] == 0
    assert (cfg["mean"], cfg["std"]) == (transform["mean"], transform["std"])
    # 32 → conv 16 → max-pool 8 → layer2 4 → layer3 2 → layer4 1; timm's own resnet cfg: 7 at 224.
    assert cfg["pool_size"] == [1, 1] and pool_size(224) == 7


def test_timm_mapping_of_resnet50_matches_timms_forward() -> None:
    torch.manual_seed(0)
    encoder = resnet50().eval()
    randomize_norms(encoder, seed=1)
    weights = to_timm_state_dict(encoder)
    assert {k: tuple(v.shape) for k, v in weights.items()} == TIMM_SHAPES["resnet50"]
    reference = TIMM_REFERENCE["resnet50"]()
    reference.load_state_dict(weights, strict=True)
    reference.eval()
    # 40x40: odd map sizes after the strided convolutions check where the padding and strides sit,
    # and the last map is 2x2, so the global pooling averages.
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), encoder(x).pooled)


@pytest.mark.parametrize(
    ("build", "supported"),
    [
        (lambda: resnet18(zero_init_residual=True), True),  # initial values only
        (lambda: resnet18_narrow(width=64), True),  # resnet18 in all but the name
        (lambda: resnet18(stem="cifar"), False),
        (lambda: resnet18(width=32), False),
        (lambda: resnet18_narrow(), False),
        (lambda: resnet50(width=16), False),
        (lambda: small_cnn(width=4), False),
        (lambda: mlp(in_features=4, hidden_dim=8), False),
    ],
)
def test_timm_supports_only_encoders_with_a_timm_equivalent(build: object, supported: bool) -> None:
    reason = timm_unsupported_reason(build())  # type: ignore[operator]
    assert (reason is None) == supported


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_unsupported_pairs_name_the_formats_that_work(
    runs: dict[str, Path], loaded: dict[str, Pretrained], kind: str
) -> None:
    for format in ("timm", "hf"):
        with pytest.raises(ConfigError, match="Formats that work for this encoder: onnx, safetensors") as err:
            export_run(runs[kind], format)
        assert format in str(err.value)
    assert not (runs[kind] / "export" / "timm").exists()
    assert working_formats(loaded[kind]) == ["onnx", "safetensors"]
    assert working_formats(loaded["resnet18"]) == ["onnx", "safetensors", "timm"]


def test_unknown_formats_and_options_are_refused_with_suggestions(runs: dict[str, Path]) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'onnx'"):
        export_run(runs["image"], "onx")
    with pytest.raises(ConfigError, match="Did you mean 'opset'"):
        export_run(runs["image"], "onnx", opsett=18)
    with pytest.raises(ConfigError, match="has no option"):
        export_run(runs["image"], "safetensors", opset=18)
    assert EXPORTERS.names() == ["hf", "onnx", "safetensors", "timm"]


# --- onnx ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_reproduces_pytorch(
    runs: dict[str, Path], loaded: dict[str, Pretrained], kind: str
) -> None:
    import onnx
    import onnxruntime

    run = runs[kind]
    out = export_run(run, "onnx")
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["embedding", "last_hidden_state"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Real samples, in a batch of another size than the traced one (2).
    x = real_batch(loaded[kind])
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    embedding, hidden = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = loaded[kind].encoder(x)
    torch.testing.assert_close(torch.from_numpy(embedding), expected.pooled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(hidden), expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    manifest = json.loads((out / "export.json").read_text())
    transform = json.loads((run / "inputs.json").read_text())["transform"]
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == (transform["mean"], transform["std"])
    assert manifest["inputs"]["input"]["shape"] == ["batch", *x.shape[1:]]
    assert max(manifest["verification"]["max_abs_difference"].values()) <= 1e-4


def test_onnx_verifies_on_a_data_source_and_can_drop_the_hidden_state(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    out = export_run(runs["image"], "onnx", tmp_path / "onnx", data=str(runs["images16"]), hidden=False)
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["embedding"]
    verification = json.loads((out / "export.json").read_text())["verification"]
    assert verification["inputs"] == str(runs["images16"]) and verification["batch_size"] == BATCH


def test_an_onnx_mismatch_fails_and_keeps_the_previous_export(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    target = tmp_path / "onnx"
    export_run(runs["image"], "onnx", target)
    before = (target / "model.onnx").read_bytes()
    real_run = onnxruntime.InferenceSession.run

    def perturbed(self: onnxruntime.InferenceSession, *args: object, **kwargs: object) -> list[np.ndarray]:
        return [output + 1e-2 for output in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", perturbed)
    with pytest.raises(ExportError, match="does not reproduce the PyTorch encoder"):
        export_run(runs["image"], "onnx", target)
    with pytest.raises(ExportError):
        export_run(runs["image"], "onnx", tmp_path / "fresh")
    assert (target / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no half directory, no temp left


def test_missing_onnx_packages_say_how_to_install_them(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[export\]'"):
        export_run(runs["vector"], "onnx", tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


# --- atomic directories ---------------------------------------------------------------------------------


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("exporter failed")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with atomic_directory(target) as tmp:
        (tmp / "c.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_exporter_failure_is_a_selfsup_error_and_writes_nothing(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(ExportError, match="torch.onnx.export failed for encoder 'mlp'.*aten::fancy"):
        export_run(runs["vector"], "onnx", tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []
