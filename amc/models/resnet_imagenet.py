"""ImageNet ResNets of He et al. 2016 (Sec. 3.3 and Table 1), laid out exactly as torchvision's.

`resnet18`, `resnet34` (BasicBlock) and `resnet50` (Bottleneck, with the stride on the 3x3 conv: the "ResNet
V1.5" of torchvision and NVIDIA) have torchvision's state-dict keys and shapes (conv1, bn1,
layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]}, layer{1..4}.0.downsample.{0,1}, fc), so a torchvision
checkpoint loads by key, and its weight initialisation. amc needs no torchvision to build them.

Input [N, 3, H, W] (224x224 on ImageNet; any size of at least 32x32 works, the pool is adaptive);
stages at H/4, H/8, H/16, H/32; output logits [N, num_classes].
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from amc.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus x (or `downsample(x)`), then relu (He et al. 2016, Fig. 5 left).

    [N, in_planes, H, W] -> [N, planes, H / stride, W / stride].
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """conv1x1-bn-relu-conv3x3(stride)-bn-relu-conv1x1-bn, plus x (or `downsample(x)`), then relu
    (He et al. 2016, Fig. 5 right; the stride sits on the 3x3 conv as in torchvision).

    [N, in_planes, H, W] -> [N, 4 * planes, H / stride, W / stride].
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem conv, bn, relu, 3x3/2 max pool, four stages of residual blocks, global average pool, `fc`.

    [N, 3, H, W] -> logits [N, num_classes]. Activations are not in place (torchvision's are; the values are
    the same), so hooks that keep a layer's output see it unchanged.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # torchvision's initialisation: He-normal (fan_out) convs, BatchNorm 1/0, Linear left at torch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out_planes = planes * block.expansion
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers: list[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet18")
def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 for ImageNet (11,689,512 parameters, 1.81 G MACs at 224x224 and 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model("resnet34")
def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 for ImageNet (21,797,672 parameters, 3.66 G MACs at 224x224 and 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@register_model("resnet50")
def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (V1.5) for ImageNet (25,557,032 parameters, 4.09 G MACs at 224x224 and 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
