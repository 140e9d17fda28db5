"""A wide, deep plain CNN for memory benchmarks: a stride-4 stem and 60 3x3 convs of 64 channels (61 channel
groups), as `amc train-agent --model bench/wide_model.py:wide` takes it."""

import torch.nn as nn


def wide(num_classes: int = 10, channels: int = 64, depth: int = 60) -> nn.Module:
    layers = [nn.Conv2d(3, channels, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
