"""Convolutional image encoders: ResNet-18/50 (two stems) and a small CNN for tiny images on CPU.

Every encoder here follows the :class:`~selfsup.encoders.base.Encoder` contract: it takes a
normalized float batch ``(B, C, H, W)`` and returns the stem output and the output of each stage
as ``hidden_states`` (feature maps ``(B, C_l, H_l, W_l)``), the last stage map as
``last_hidden_state`` and its global average as ``pooled`` ``(B, embed_dim)``.

The ResNets are written from the paper (He et al. 2016, "Deep Residual Learning for Image
Recognition"); with ``width=64`` and the ImageNet stem their parameter counts equal the usual
torchvision models without the classifier (11,176,512 and 23,508,032). The bottleneck puts its
stride on the 3x3 convolution ("ResNet v1.5", as torchvision and the SimCLR/BYOL code bases do),
which does not change the parameter count. The "cifar" stem is the variant of SimCLR
(Chen et al. 2020, appendix B.9): a 3x3 stride-1 first convolution and no max-pool, so that
32x32 images are not reduced to 8x8 before the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from selfsup.encoders.base import (
    ENCODERS,
    Encoder,
    EncoderOutput,
    check_image_batch,
    numbered_layer_id,
    pool_hidden_state,
)
from selfsup.registry import suggest

STEMS = ("imagenet", "cifar")


def _check_positive_int(name: str, value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def _reject_token_arguments(name: str, padding_mask: Tensor | None, mask: Tensor | None) -> None:
    """Convolutional encoders see whole fixed-size images: they have no tokens to mask or pad."""
    if mask is not None:
        raise ValueError(
            f"{name} cannot mask tokens (mask= was given); masked-modelling methods need a "
            "token encoder such as a ViT"
        )
    if padding_mask is not None:
        raise ValueError(
            f"{name} takes fixed-size images and no padding_mask; "
            "resize or crop the images to one size instead"
        )


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    # bias=False: the following BatchNorm's shift makes a conv bias redundant.
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm gamma 1 / beta 0 (He et al. 2015)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; ``(B, C_in, H, W)`` →
    ``(B, planes, H/stride, W/stride)``. He et al. 2016, figure 5 left."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4, plus shortcut; ``(B, C_in, H, W)`` →
    ``(B, 4 * planes, H/stride, W/stride)``. He et al. 2016, figure 5 right."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (option B of He et al. 2016) only where the shape changes."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(Encoder):
    """A ResNet trunk without the classifier.

    Input ``(B, in_channels, H, W)`` float. ``hidden_states`` = (stem output, stage 1..4
    outputs): with the ImageNet stem the maps are at strides 4, 4, 8, 16, 32 and with the CIFAR
    stem at strides 1, 1, 2, 4, 8; channels ``width`` then ``width * (1, 2, 4, 8) * expansion``.
    ``pooled`` ``(B, embed_dim)`` with ``embed_dim = 8 * width * expansion`` (512 for
    ResNet-18, 2048 for ResNet-50 at width 64).
    """

    modality = "image"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        *,
        stem: str = "imagenet",
        width: int = 64,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"{name}: unknown stem {stem!r}.{suggest(stem, STEMS)} Choose one of {STEMS}.")
        _check_positive_int("width", width, name)
        _check_positive_int("in_channels", in_channels, name)
        self.name = name
        self.stem_kind = stem
        self.in_channels = in_channels
        self.embed_dim = 8 * width * block.expansion
        self.num_layers = len(blocks_per_stage)

        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))

        stages: list[nn.Module] = []
        in_ch = width
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(n_blocks):
                layers.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

        _init_weights(self)
        if zero_init_residual:
            # Each residual block then starts as the identity (Goyal et al. 2017, "Accurate,
            # Large Minibatch SGD"), which helps large-batch training.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def layer_id(self, name: str) -> int:
        """Stem 0, stage ``i`` (torchvision's ``layer{i+1}``) ``i + 1``: 1..4, as ``hidden_states``."""
        return numbered_layer_id(name, "stages", self.num_layers, self.name)

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        _reject_token_arguments(self.name, padding_mask, mask)
        check_image_batch(x, self.in_channels)
        h = self.stem(x)
        hidden = [h]
        for stage in self.stages:
            h = stage(h)
            hidden.append(h)
        return EncoderOutput(pooled=pool_hidden_state(h), last_hidden_state=h, hidden_states=tuple(hidden))


class SmallCNN(Encoder):
    """A VGG-style ConvNet for tiny images (e.g. 16x16 digits) that trains fast on a CPU.

    Three stages of two conv3x3-BN-ReLU layers with widths ``(w, 2w, 4w)`` and a 2x2 max-pool
    before stages 2 and 3. The first convolution of stage 1 is the stem, so that
    ``hidden_states[0]`` is a learned embedding at no extra cost: hidden_states = (stem
    ``(B, w, H, W)``, stage 1 ``(B, w, H, W)``, stage 2 ``(B, 2w, H/2, W/2)``, stage 3
    ``(B, 4w, H/4, W/4)``); ``pooled`` ``(B, 4w)``. Needs images of at least 4x4.
    """

    modality = "image"
    min_size = 4

    def __init__(self, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        _check_positive_int("width", width, "small_cnn")
        _check_positive_int("in_channels", in_channels, "small_cnn")
        self.in_channels = in_channels
        self.embed_dim = 4 * width
        self.num_layers = 3
        w = width
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, w))
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*_conv_bn_relu(w, w)),
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w)),
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w)),
            ]
        )
        _init_weights(self)

    def layer_id(self, name: str) -> int:
        """Stem convolution 0, stage ``i`` ``i + 1`` (1..3), as ``hidden_states``."""
        return numbered_layer_id(name, "stages", self.num_layers, "small_cnn")

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        _reject_token_arguments("small_cnn", padding_mask, mask)
        check_image_batch(x, self.in_channels)
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"small_cnn needs images of at least {self.min_size}x{self.min_size} (two 2x2 poolings), "
                f"got {tuple(x.shape[-2:])}; resize the images"
            )
        h = self.stem(x)
        hidden = [h]
        for stage in self.stages:
            h = stage(h)
            hidden.append(h)
        return EncoderOutput(pooled=pool_hidden_state(h), last_hidden_state=h, hidden_states=tuple(hidden))


def _options(stem: str, width: int, in_channels: int, zero_init_residual: bool) -> dict[str, object]:
    """The options every registered ResNet takes (each factory keeps its own signature for the registry)."""
    return {
        "stem": stem,
        "width": width,
        "in_channels": in_channels,
        "zero_init_residual": zero_init_residual,
    }


@ENCODERS.register("resnet18", modality="image")
def resnet18(
    stem: str = "imagenet", width: int = 64, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); embed_dim 8 * width (512 at width 64)."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), name="resnet18", **_options(stem, width, in_channels, zero_init_residual)
    )


@ENCODERS.register("resnet18_narrow", modality="image")
def resnet18_narrow(
    stem: str = "imagenet", width: int = 32, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 at half width (32) for CPU runs; embed_dim 8 * width (256 at width 32)."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        name="resnet18_narrow",
        **_options(stem, width, in_channels, zero_init_residual),
    )


@ENCODERS.register("resnet50", modality="image")
def resnet50(
    stem: str = "imagenet", width: int = 64, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (Bottleneck x4, [3, 4, 6, 3]); embed_dim 32 * width (2048 at width 64)."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), name="resnet50", **_options(stem, width, in_channels, zero_init_residual)
    )


@ENCODERS.register("small_cnn", modality="image")
def small_cnn(width: int = 32, in_channels: int = 3) -> SmallCNN:
    """Small 6-conv CNN for tiny images on CPU; embed_dim 4 * width (128 at width 32)."""
    return SmallCNN(width=width, in_channels=in_channels)
