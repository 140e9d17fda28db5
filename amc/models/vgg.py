"""VGG-16 with BatchNorm for 32x32 images, with a hidden classifier layer (a Linear -> Linear channel group)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from amc.models.registry import register_model

# Conv widths; "M" is a 2x2 max-pool. Five pools take 32x32 down to 1x1, so the flattened feature has 512 values.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)


class VGG(nn.Module):
    """conv3x3-bn-relu stacks in `features`, then `classifier`. [N, 3, 32, 32] -> logits [N, num_classes]."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10, hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in cfg:
            if isinstance(item, str):
                layers.append(nn.MaxPool2d(2))
                continue
            # Not in-place: model analysis keeps hooked layer outputs, which an in-place ReLU would overwrite.
            layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
            in_channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg16")
def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 with BatchNorm for CIFAR (15.0 M parameters at 10 classes)."""
    return VGG(_VGG16_CFG, num_classes)
