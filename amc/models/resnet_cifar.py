"""CIFAR ResNets of He et al. 2016 (Sec. 4.2) with the option-A (zero-padding) shortcut, and Plain-20.

Input [N, 3, 32, 32]; three stages of 16, 32, 64 channels at 32x32, 16x16, 8x8; output logits [N, num_classes].
State-dict names follow the widely shared CIFAR port: conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from amc.engine.channel_map import ChannelMap
from amc.models.registry import register_model

_STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(ChannelMap):
    """Option-A shortcut: subsample the map by 2 and zero-pad the channels, adding no parameters.

    [N, C, H, W] -> [N, C + 2 * pad, ceil(H / 2), ceil(W / 2)]. Written as an index map (input channel i lands
    at channel i + pad) so that the residual width of each stage is a channel group that pruning can narrow:
    pruning renumbers the map (`amc.engine.channel_map`).
    """

    def __init__(self, in_channels: int, pad: int) -> None:
        super().__init__(in_channels, in_channels + 2 * pad, torch.arange(in_channels) + pad, stride=2)


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus the shortcut when `residual`, then relu.

    [N, in_planes, H, W] -> [N, planes, H / stride, W / stride].
    """

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None = None
        if residual:
            changes_shape = stride != 1 or in_planes != planes
            self.shortcut = PadShortcut(in_planes, planes // 4) if changes_shape else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet (or plain net) of depth 6n+2 for 32x32 images. [N, 3, 32, 32] -> logits [N, num_classes]."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        in_planes = _STAGE_WIDTHS[0]
        stages = []
        for index, planes in enumerate(_STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if block == 0 else 1, residual))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(_STAGE_WIDTHS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("resnet20")
def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27 M parameters at 10 classes)."""
    return CifarResNet(3, num_classes)


@register_model("resnet32")
def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (0.46 M parameters at 10 classes)."""
    return CifarResNet(5, num_classes)


@register_model("resnet44")
def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (0.66 M parameters at 10 classes)."""
    return CifarResNet(7, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.85 M parameters at 10 classes)."""
    return CifarResNet(9, num_classes)


@register_model("resnet110")
def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (1.7 M parameters at 10 classes)."""
    return CifarResNet(18, num_classes)


@register_model("plain20")
def plain20(num_classes: int = 10) -> CifarResNet:
    """Plain-20: ResNet-20 without shortcuts (same layers and names, 0.27 M parameters)."""
    return CifarResNet(3, num_classes, residual=False)
