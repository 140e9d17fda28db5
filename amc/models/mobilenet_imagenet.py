"""ImageNet MobileNets: V1 (AMC's own ImageNet model), V2 and V3-Large, the last two laid out exactly as torchvision's.

- `mobilenet`: MobileNet V1 1.0-224 (Howard et al. 2017, Sec. 3 and Table 1): a 3x3/2 conv then 13 depthwise
  separable blocks, 4,231,976 parameters and 569 M MACs at 224x224 with 1000 classes (Table 8). The network
  AMC (He et al., ECCV 2018, Sec. 4.2) compresses on ImageNet. torchvision has none; its layout is the common
  PyTorch port's, so such checkpoints load by key:
  `model.0` = conv_bn [0 conv3x3/2, 1 bn, 2 relu]; `model.1` .. `model.13` = conv_dw [0 depthwise conv3x3,
  1 bn, 2 relu, 3 pointwise conv1x1, 4 bn, 5 relu]; a global average pool; `fc` (1024 -> num_classes).
- `mobilenet_v2`: MobileNetV2 (Sandler et al. 2018, Sec. 4 and Table 2) with torchvision's keys and shapes:
  `features.0` = conv [0 conv, 1 bn, 2 relu6]; `features.1` .. `features.17` = inverted residual blocks whose
  `conv` Sequential is [expand conv [0 conv, 1 bn, 2 relu6] when t != 1], depthwise [0 conv, 1 bn, 2 relu6],
  projection conv, bn; `features.18` = 1x1 conv to 1280 [0 conv, 1 bn, 2 relu6]; `classifier` =
  [Dropout(0.2), Linear]. 3,504,872 parameters, 0.30 G MACs.
- `mobilenet_v3_large`: MobileNetV3-Large (Howard et al., ICCV 2019, Sec. 5 and Table 1) with torchvision's keys
  and shapes: `features.0` = conv3x3/2 [conv, bn, hardswish]; `features.1` .. `features.15` = bneck blocks whose
  `block` Sequential is [expand [conv, bn, act] when the width changes], depthwise [conv, bn, act],
  [SqueezeExcitation `fc1`/`fc2` (1x1 convs with bias, relu, hardsigmoid)], projection [conv, bn];
  `features.16` = 1x1 conv to 960 [conv, bn, hardswish]; `classifier` = [Linear 960 -> 1280, Hardswish,
  Dropout(0.2), Linear]. BatchNorm eps 0.001, momentum 0.01. 5,483,032 parameters, 0.217 G MACs.

All three take [N, 3, H, W] (224x224 on ImageNet; the pool is adaptive, so 32x32 and up work; the output stride
is 32) and return logits [N, num_classes]. Weights are initialised as torchvision's MobileNets: He-normal
(fan_out) convs with zero biases, BatchNorm 1/0, Linear N(0, 0.01) with zero biases (V1 too). Activations and
additions are not in place (torchvision's are; the values are the same), so hooks that keep a layer's output
see it unchanged. amc needs no torchvision to build them.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
from torch import Tensor

from amc.models.mobilenetv2 import _make_divisible
from amc.models.registry import register_model


class ConvBNActivation(nn.Sequential):
    """[0 conv kxk (padding (k - 1) / 2, no bias), 1 BatchNorm, 2 activation (absent when None)]: torchvision's
    `Conv2dNormActivation` layout. [N, in_channels, H, W] -> [N, out_channels, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: Callable[[], nn.Module] | None = nn.ReLU6,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            norm(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


def _init_mobilenet(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------- MobileNet V1

# (output channels, stride) of the 13 depthwise separable blocks (Howard et al. 2017, Table 1)
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """[0 conv3x3, 1 bn, 2 relu]. [N, in, H, W] -> [N, out, H / stride, W / stride]."""
    return ConvBNActivation(in_channels, out_channels, 3, stride, activation=nn.ReLU)


def _conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise separable block (Howard et al. 2017, Fig. 3 right): [0 depthwise conv3x3, 1 bn, 2 relu,
    3 pointwise conv1x1, 4 bn, 5 relu]. [N, in, H, W] -> [N, out, H / stride, W / stride]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """`model` (conv_bn, then 13 conv_dw blocks), global average pool, `fc`. [N, 3, H, W] -> [N, num_classes]."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_channels = 32
        blocks: list[nn.Module] = [_conv_bn(3, in_channels, 2)]
        for out_channels, stride in _V1_BLOCKS:
            blocks.append(_conv_dw(in_channels, out_channels, stride))
            in_channels = out_channels
        self.model = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.model(x)).flatten(1))


# ---------------------------------------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, blocks n, first block's stride s) (Sandler et al. 2018, Table 2)
_V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class InvertedResidualV2(nn.Module):
    """`conv` = [[expand 1x1-bn-relu6], depthwise 3x3-bn-relu6, project 1x1, bn], plus x when shapes match
    (Sandler et al. 2018, Table 1 and Fig. 4). [N, in, H, W] -> [N, out, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.stride = stride
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNActivation(in_channels, hidden, 1))
        layers += [
            ConvBNActivation(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """`features` (stem conv, 17 inverted residual blocks, 1x1 conv to 1280), global average pool, `classifier`.

    [N, 3, H, W] -> [N, num_classes].
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        in_channels, last_channels = 32, 1280
        features: list[nn.Module] = [ConvBNActivation(3, in_channels, 3, 2)]
        for expansion, channels, repeats, stride in _V2_CFG:
            for index in range(repeats):
                features.append(InvertedResidualV2(in_channels, channels, stride if index == 0 else 1, expansion))
                in_channels = channels
        features.append(ConvBNActivation(in_channels, last_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------- MobileNetV3

# (kernel, expanded channels, output channels, squeeze-excitation, hardswish, stride) of the 15 bneck blocks
# of MobileNetV3-Large (Howard et al. 2019, Table 1); the input of each is the previous output, 16 for the first.
_V3_LARGE: tuple[tuple[int, int, int, bool, bool, int], ...] = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)


def _v3_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))), fc1/fc2 1x1 convs with bias (Hu et al. 2018, with the
    hard sigmoid of Howard et al. 2019, Sec. 5.3). [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidualV3(nn.Module):
    """MobileNetV3 bneck (Howard et al. 2019, Fig. 4): `block` = [[expand 1x1-bn-act], depthwise kxk-bn-act,
    [squeeze-excitation], project 1x1-bn], plus x when shapes match. [N, in, H, W] -> [N, out, H / s, W / s]."""

    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int, use_se: bool,
                 use_hs: bool, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        activation = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNActivation(in_channels, expanded, 1, activation=activation, norm=_v3_norm))
        layers.append(ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded, activation=activation,
                                       norm=_v3_norm))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvBNActivation(expanded, out_channels, 1, activation=None, norm=_v3_norm))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(nn.Module):
    """`features` (stem conv, 15 bneck blocks, 1x1 conv to 960), global average pool, `classifier`
    [Linear 960 -> 1280, Hardswish, Dropout, Linear]. [N, 3, H, W] -> [N, num_classes]."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        in_channels, last_conv, last_channels = 16, 960, 1280
        features: list[nn.Module] = [ConvBNActivation(3, in_channels, 3, 2, activation=nn.Hardswish, norm=_v3_norm)]
        for kernel, expanded, out_channels, use_se, use_hs, stride in _V3_LARGE:
            features.append(InvertedResidualV3(in_channels, kernel, expanded, out_channels, use_se, use_hs, stride))
            in_channels = out_channels
        features.append(ConvBNActivation(in_channels, last_conv, 1, activation=nn.Hardswish, norm=_v3_norm))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channels), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(last_channels, num_classes)
        )
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("mobilenet")
def mobilenet(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet V1 1.0-224 for ImageNet (4,231,976 parameters, 569 M MACs at 224x224 and 1000 classes)."""
    return MobileNetV1(num_classes)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 1.0 for ImageNet, torchvision's layout (3,504,872 parameters, 0.30 G MACs at 224x224)."""
    return MobileNetV2(num_classes)


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3:
    """MobileNetV3-Large 1.0 for ImageNet, torchvision's layout (5,483,032 parameters, 0.217 G MACs at 224x224)."""
    return MobileNetV3(num_classes)
