"""The ``timm`` format: our ResNet-18/50 (ImageNet stem, width 64) as timm's ``resnet18`` / ``resnet50``, and
our ViTs (``vit_tiny`` / ``vit_small`` / ``vit_base``, any patch size, registers, pooling) as timm's
``VisionTransformer``.

timm's ResNet (``timm/models/resnet.py``, huggingface/pytorch-image-models; itself torchvision's
layout) names its modules ``conv1``, ``bn1``, ``act1``, ``maxpool``, ``layer1`` … ``layer4``,
``global_pool``, ``fc``; a ``BasicBlock`` has ``conv1, bn1, conv2, bn2`` and a ``Bottleneck``
``conv1 … conv3, bn1 … bn3``, both with ``downsample = Sequential(conv 1x1 strided, BatchNorm)`` on
the first block of a stage whose shape changes. Our ResNet (``selfsup.encoders.image``) has the
same computation under other names, so the export is a renaming of keys:

=====================  ==========================
ours                   timm
=====================  ==========================
``stem.0.*``           ``conv1.*`` (7x7, stride 2)
``stem.1.*``           ``bn1.*``
``stages.{i}.{j}.X``   ``layer{i+1}.{j}.X``
=====================  ==========================

Checked against timm's source: the Bottleneck's stride sits on its 3x3 ``conv2`` in both ("ResNet
v1.5", torchvision's and timm's default ``resnet50``); the shortcut is a projection exactly where
``stride != 1 or inplanes != planes * expansion``, a 1x1 convolution without padding then a
BatchNorm (timm's ``downsample_conv`` with ``down_kernel_size=1``), as ours (``_shortcut``); both
stems are conv 7x7/2 (padding 3), BN, ReLU, max-pool 3x3/2 (padding 1); pooling is a global average.
``zero_init_residual`` changes only the initial values, not the structure.

The classifier is omitted: timm builds a headless backbone with ``num_classes=0`` (``fc`` becomes
``nn.Identity`` and the model returns the pooled ``(B, 512)`` / ``(B, 2048)`` features), so the
state dict loads with ``strict=True`` into ``timm.create_model("resnet18", num_classes=0)``.
``config.json`` follows the layout of timm's Hub configs (``architecture``, ``num_classes``,
``num_features``, ``pretrained_cfg`` with ``input_size``, ``mean``, ``std``, ``interpolation``,
``crop_pct``), using only fields of timm's ``PretrainedCfg``.

**ViTs.** :class:`~selfsup.encoders.vit.VisionTransformer` already uses timm's parameter names
(``cls_token``, ``reg_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj,
ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``) and timm's ``pos_embed`` layout (a class-token
position without registers, ``no_embed_class=True`` with them), so the export drops ``mask_token`` (timm has
none) and keeps every other key. A ViT on 32 px images at patch 4 is no registered timm model, so
``config.json`` names the nearest registered one (``vit_{tiny,small,base}_patch16_224``, by width) as
``architecture`` and gives in ``model_args`` what timm's ``VisionTransformer`` needs to rebuild ours:
``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``,
``class_token``, ``reg_tokens``, ``no_embed_class``, ``global_pool`` (``"token"`` for ``pool="cls"``;
``"avg"`` with ``fc_norm=False`` for ``pool="mean"``: the final norm before an average over the patch
tokens, as ours, rather than timm's default norm after the average), ``init_values`` with LayerScale, and
``dynamic_img_size=True`` (the position table is resized bicubically, antialiased, to each input's grid,
as our encoder does). timm's ``create_model('local-dir:DIR', pretrained=True)`` reads exactly these
``model_args``. ``pos_embed="sincos"`` tables export as timm's (learned) ``pos_embed`` with the same values.

Encoders without a timm equivalent (the CIFAR stem, other widths, ``small_cnn``, ``mlp``) are
refused with the formats that do work. timm itself cannot be installed here (it needs
torchvision): the tests load the export into a reference module with timm's module structure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from selfsup.augment.base import ImageTransform
from selfsup.encoders import Encoder
from selfsup.encoders.image import BasicBlock, Bottleneck, ResNet
from selfsup.encoders.vit import SIZES as VIT_SIZES
from selfsup.encoders.vit import VisionTransformer
from selfsup.errors import ConfigError
from selfsup.export.base import EXPORT_DIR, EXPORTERS, write_json
from selfsup.io import save_tensors_atomic

if TYPE_CHECKING:
    from selfsup.api import Pretrained

WEIGHTS = "model.safetensors"  # the name timm looks for first in a Hub repo or a local directory
CONFIG = "config.json"
# (block type, blocks per stage) -> timm architecture; both need width 64 (timm's channels
# (64, 128, 256, 512), stem width 64).
TIMM_ARCHITECTURES: dict[tuple[type, tuple[int, ...]], str] = {
    (BasicBlock, (2, 2, 2, 2)): "resnet18",
    (Bottleneck, (3, 4, 6, 3)): "resnet50",
}
TIMM_WIDTH = 64
# Module names inside a block that timm shares with ours (activations and pools hold no weights).
_BLOCK_MODULES = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"}
_STAGE_KEY = re.compile(r"stages\.(\d+)\.(\d+)\.([a-z_]+\d*)\.(.+)")


def timm_unsupported_reason(encoder: Encoder) -> str | None:
    """Why ``encoder`` has no timm equivalent (None when it is timm's resnet18 or resnet50 or a ViT)."""
    if isinstance(encoder, VisionTransformer):
        if encoder.in_channels != 3:
            return f"{encoder.in_channels} input channels (the timm export describes RGB input)"
        return None
    if not isinstance(encoder, ResNet):
        return (
            f"{type(encoder).__name__} has no timm equivalent (timm export covers ResNet-18 and "
            "ResNet-50 with the ImageNet stem, and the ViTs)"
        )
    if encoder.stem_kind != "imagenet":
        return (
            f"the {encoder.stem_kind} stem (3x3 stride-1 convolution, no max-pool) has no timm equivalent; "
            "timm's ResNets start with a 7x7 stride-2 convolution and a max-pool (encoder.stem=imagenet)"
        )
    width = encoder.stem[0].out_channels
    if width != TIMM_WIDTH:
        return f"width {width} has no timm equivalent (timm's resnet18 / resnet50 have width {TIMM_WIDTH})"
    if encoder.in_channels != 3:
        return f"{encoder.in_channels} input channels (the timm export describes RGB input)"
    layout = (type(encoder.stages[0][0]), tuple(len(stage) for stage in encoder.stages))
    if layout not in TIMM_ARCHITECTURES:
        return f"a ResNet of {layout[0].__name__} x {layout[1]} has no timm counterpart here"
    return None


def timm_architecture(encoder: Encoder) -> str:
    """timm's model name for ``encoder`` (``resnet18``, ``resnet50``, or for a ViT the registered
    ``vit_{tiny,small,base}_patch16_224`` nearest in width, completed by :func:`timm_model_args`);
    ConfigError otherwise."""
    reason = timm_unsupported_reason(encoder)
    if reason is not None:
        raise ConfigError(f"cannot export as timm: {reason}")
    if isinstance(encoder, VisionTransformer):
        size = min(VIT_SIZES, key=lambda name: abs(VIT_SIZES[name]["embed_dim"] - encoder.embed_dim))
        return f"{size}_patch16_224"
    assert isinstance(encoder, ResNet)
    return TIMM_ARCHITECTURES[(type(encoder.stages[0][0]), tuple(len(s) for s in encoder.stages))]


def timm_model_args(encoder: Encoder) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model(architecture, ...)`` that rebuild ``encoder`` (none for
    the ResNets; for a ViT every structural argument of timm's ``VisionTransformer``)."""
    timm_architecture(encoder)
    if not isinstance(encoder, VisionTransformer):
        return {}
    args: dict[str, Any] = {
        "img_size": list(encoder.image_size),
        "patch_size": encoder.patch_size,
        "embed_dim": encoder.embed_dim,
        "depth": encoder.num_layers,
        "num_heads": encoder.num_heads,
        "mlp_ratio": encoder.mlp_ratio,
        "qkv_bias": encoder.qkv_bias,
        "class_token": encoder.has_class_token,
        "reg_tokens": encoder.num_registers,
        "no_embed_class": encoder.no_embed_class,
        "global_pool": "token" if encoder.pool == "cls" else "avg",
        "dynamic_img_size": True,
    }
    if encoder.pool == "mean":
        args["fc_norm"] = False  # our final norm comes before the average, timm's "avg" default after it
    if encoder.layer_scale is not None:
        args["init_values"] = encoder.layer_scale
    return args


def timm_key(key: str) -> str:
    """Our ResNet state-dict key → timm's (``stem.0.weight`` → ``conv1.weight``, …)."""
    if key.startswith("stem.0."):
        return "conv1." + key.removeprefix("stem.0.")
    if key.startswith("stem.1."):
        return "bn1." + key.removeprefix("stem.1.")
    match = _STAGE_KEY.fullmatch(key)
    if match is None or match.group(3) not in _BLOCK_MODULES:
        raise ValueError(f"no timm name for ResNet key {key!r}")
    stage, block, module, rest = match.groups()
    return f"layer{int(stage) + 1}.{block}.{module}.{rest}"


def to_timm_state_dict(encoder: Encoder) -> dict[str, Tensor]:
    """The state dict of timm's headless model (``num_classes=0``: no ``fc`` / ``head``): ResNet keys
    renamed; a ViT's as they are, without ``mask_token``."""
    timm_architecture(encoder)
    if isinstance(encoder, VisionTransformer):
        return {key: value for key, value in encoder.state_dict().items() if key != "mask_token"}
    return {timm_key(key): value for key, value in encoder.state_dict().items()}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pool_size(input_size: int) -> int:
    """Side of the last feature map of a timm ResNet for a square input (7 at 224)."""
    side = _conv_out(_conv_out(input_size, 7, 2, 3), 3, 2, 1)  # stem conv, max-pool
    for _ in range(3):  # stride-2 3x3 convolutions of layer2..layer4
        side = _conv_out(side, 3, 2, 1)
    return side


def timm_config(model: Pretrained, architecture: str) -> dict[str, Any]:
    """``config.json`` in the layout of timm's Hub configs, for the headless model."""
    transform = model.transform
    assert isinstance(transform, ImageTransform)
    size = transform.size
    pretrained_cfg = {
        "tag": "selfsup",
        "custom_load": False,
        "input_size": [3, size, size],
        "fixed_input_size": False,
        # Our evaluation transform resizes the whole (square) image to `size`, antialiased bilinear,
        # without cropping: timm's center crop at crop_pct 1.0 (data.image_size decodes non-square
        # images by resizing the shorter side and cropping the centre, as timm does).
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(transform.mean),
        "std": list(transform.std),
        "num_classes": 0,
        "pool_size": [pool_size(size)] * 2,
        "first_conv": "conv1",
        "classifier": "fc",
        "description": (
            f"selfsup {model.config.method.name} pretraining of {architecture} on {model.config.data.source}"
        ),
    }
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": int(model.encoder.embed_dim),
        "global_pool": "avg",
    }
    if isinstance(model.encoder, VisionTransformer):
        # timm's ViT configs have no pool_size; the stem and classifier are named as timm's _cfg names them.
        del pretrained_cfg["pool_size"]
        pretrained_cfg.update(first_conv="patch_embed.proj", classifier="head", fixed_input_size=False)
        config["model_args"] = timm_model_args(model.encoder)
        config["global_pool"] = config["model_args"]["global_pool"]
    config["pretrained_cfg"] = pretrained_cfg
    return config


def _supports(model: Pretrained) -> str | None:
    reason = timm_unsupported_reason(model.encoder)
    if reason is None and not isinstance(model.transform, ImageTransform):
        return "the run's input transform is not an image transform"
    return reason


@EXPORTERS.register("timm", supports=_supports)
def export_timm(model: Pretrained, directory: Path) -> dict[str, Any]:
    """timm-compatible state dict (headless resnet18 / resnet50) and a timm-style config.json."""
    architecture = timm_architecture(model.encoder)
    model_args = timm_model_args(model.encoder)
    save_tensors_atomic(directory / WEIGHTS, to_timm_state_dict(model.encoder), metadata={"format": "pt"})
    write_json(directory / CONFIG, timm_config(model, architecture))
    if not model_args:
        return {
            "architecture": architecture,
            "files": {
                WEIGHTS: f"state dict of timm's {architecture} with num_classes=0 (no fc)",
                CONFIG: "timm pretrained_cfg: input_size, mean, std, interpolation, crop_pct",
            },
            "usage": (
                "import timm, safetensors.torch\n"
                f"model = timm.create_model('{architecture}', num_classes=0)  # headless: pooled features\n"
                f"model.load_state_dict(safetensors.torch.load_file('{EXPORT_DIR}/{WEIGHTS}'))  # strict\n"
                "# inputs: RGB resized to pretrained_cfg.input_size, normalised with its mean and std"
            ),
        }
    arguments = ", ".join(f"{key}={value!r}" for key, value in model_args.items())
    return {
        "architecture": architecture,
        "model_args": model_args,
        "files": {
            WEIGHTS: f"state dict of timm's VisionTransformer ({architecture} + model_args), no head",
            CONFIG: "timm Hub config: architecture, model_args, pretrained_cfg (input_size, mean, std, ...)",
        },
        "usage": (
            "import timm, safetensors.torch\n"
            f"model = timm.create_model('local-dir:{EXPORT_DIR}', pretrained=True)  # reads model_args\n"
            "# or, with any timm version:\n"
            f"model = timm.create_model('{architecture}', num_classes=0, {arguments})\n"
            f"model.load_state_dict(safetensors.torch.load_file('{EXPORT_DIR}/{WEIGHTS}'))  # strict\n"
            "# inputs: RGB resized to pretrained_cfg.input_size, normalised with its mean and std"
        ),
    }
