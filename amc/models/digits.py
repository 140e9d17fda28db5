"""A small CNN for the 8x8 grayscale sklearn digits (fast enough to train and prune in tests on a CPU)."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from amc.models.registry import register_model


class DigitsCNN(nn.Module):
    """Three conv-bn-relu layers (one 2x2 max-pool) and two Linear layers.

    [N, 1, 8, 8] -> 16 x 8x8 -> 32 x 8x8 -> pool 32 x 4x4 -> 64 x 4x4 -> flatten 1024 -> 64 -> logits [N, num_classes].
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        out = F.relu(self.fc1(out.flatten(1)))
        return self.fc2(out)


@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """CNN for sklearn's 8x8 digits (90 k parameters at 10 classes)."""
    return DigitsCNN(num_classes)
