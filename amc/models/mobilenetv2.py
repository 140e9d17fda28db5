"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 images as in common CIFAR ports.

The stem and the first two stride-2 stages of the ImageNet network run at stride 1, so the map shrinks
32 -> 16 -> 8 -> 4 over the remaining three stride-2 stages.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from amc.models.registry import register_model

# (expansion t, output channels c, blocks n, first block's stride s)
_CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


def _make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `channels` (the reference rounding)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class InvertedResidual(nn.Module):
    """[expand 1x1-bn1-relu6] - depthwise 3x3-bn2-relu6 - project 1x1-bn3, plus x when shapes match.

    [N, in_channels, H, W] -> [N, out_channels, H / stride, W / stride]. Without expansion (t = 1) the
    block has neither `expand` nor `bn1`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand: nn.Conv2d | None = None
        self.bn1: nn.BatchNorm2d | None = None
        if expansion != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand is not None and self.bn1 is not None:
            out = F.relu6(self.bn1(self.expand(out)))
        out = F.relu6(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual blocks in `features`, 1x1 head conv, pool, `classifier`.

    [N, 3, 32, 32] -> logits [N, num_classes].
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        in_channels = _make_divisible(_STEM_CHANNELS * width_mult)
        # The head keeps its width when thinning, as in the paper, so the classifier sees 1280 features.
        head_channels = _make_divisible(_HEAD_CHANNELS * max(1.0, width_mult))
        self.conv_stem = nn.Conv2d(3, in_channels, 3, stride=1, padding=1, bias=False)
        self.bn_stem = nn.BatchNorm2d(in_channels)
        blocks: list[nn.Module] = []
        for expansion, channels, repeats, stride in _CIFAR_CFG:
            out_channels = _make_divisible(channels * width_mult)
            for index in range(repeats):
                blocks.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion))
                in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(in_channels, head_channels, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(head_channels)
        self.classifier = nn.Linear(head_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self.bn_stem(self.conv_stem(x)))
        out = self.features(out)
        out = F.relu6(self.bn_head(self.conv_head(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2 for CIFAR (2.2 M parameters at width 1.0 and 10 classes)."""
    return MobileNetV2(num_classes, width_mult)
