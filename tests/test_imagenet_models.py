"""The ImageNet models (amc/models/resnet_imagenet.py, amc/models/mobilenet_imagenet.py): parameter counts, MACs,
and state-dict keys and shapes equal to torchvision's, so torchvision checkpoints load by key.

`data/torchvision_keys.json` is torchvision 0.28.0's `state_dict()` of each model (key -> shape, in order),
written once with torchvision; the tests need no torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from amc.models import create_model

FIXTURE = json.loads((Path(__file__).parent / "data" / "torchvision_keys.json").read_text())

PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
}

# Documented multiply-accumulates at 224x224: torchvision's model cards (GFLOPS there are MACs) and
# Howard et al. 2017, Table 8 (569 M) for MobileNet V1.
MACS = {
    "resnet18": 1.81e9,
    "resnet50": 4.09e9,
    "mobilenet_v2": 0.300e9,
    "mobilenet": 0.569e9,
    "mobilenet_v3_large": 0.217e9,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "params"), PARAMS.items())
def test_parameter_counts(name: str, params: int) -> None:
    assert sum(p.numel() for p in create_model(name, num_classes=1000).parameters()) == params


def test_fixture_covers_every_torchvision_model() -> None:
    assert set(FIXTURE) == set(PARAMS) - {"mobilenet"}


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_state_dict_keys_and_shapes_are_torchvision_s(name: str) -> None:
    model = create_model(name)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == FIXTURE[name]
    assert list(model.state_dict()) == list(FIXTURE[name])  # the same order too
    # A state dict shaped by the fixture (as a torchvision checkpoint is) loads strictly.
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) if shape else torch.tensor(0) for k, shape in FIXTURE[name].items()}
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.state_dict()["features.0.0.weight" if "mobilenet" in name else "conv1.weight"],
                       state["features.0.0.weight" if "mobilenet" in name else "conv1.weight"])


def test_mobilenet_v1_layout() -> None:
    model = create_model("mobilenet")
    keys = list(model.state_dict())
    assert keys[:2] == ["model.0.0.weight", "model.0.1.weight"] and keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(model.model) == 14
    depthwise, pointwise = model.model[1][0], model.model[1][3]
    assert depthwise.groups == depthwise.in_channels == 32 and pointwise.out_channels == 64
    assert [block[0].stride[0] for block in model.model].count(2) == 5  # output stride 32


@pytest.mark.parametrize("name", PARAMS)
def test_forward_shape_and_classes(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_macs_at_224_match_documented_values() -> None:
    counted = {}
    for name in MACS:
        model = create_model(name).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        counted[name] = counter.get_total_flops() // 2
    assert {n: abs(counted[n] / MACS[n] - 1) < 0.01 for n in MACS} == dict.fromkeys(MACS, True), counted


def test_initialisation_is_torchvision_s() -> None:
    torch.manual_seed(0)
    resnet, mobilenet = create_model("resnet18"), create_model("mobilenet_v2")
    assert torch.equal(resnet.bn1.weight, torch.ones(64)) and torch.equal(resnet.bn1.bias, torch.zeros(64))
    # He-normal, fan_out: std sqrt(2 / (out * k * k))
    std = resnet.layer4[0].conv2.weight.std().item()
    assert abs(std / (2 / (512 * 9)) ** 0.5 - 1) < 0.05
    linear = mobilenet.classifier[1]
    assert abs(linear.weight.std().item() / 0.01 - 1) < 0.05 and torch.equal(linear.bias, torch.zeros(1000))
