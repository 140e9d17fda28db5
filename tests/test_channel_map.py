"""The index-map shortcut (`ChannelMap`) and its pruning rule: the CIFAR ResNets' residual streams."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from amc.engine.channel_map import ChannelMap, ChannelMapPruner
from amc.engine.pruner import ChannelPruner
from amc.models import create_model
from amc.models.resnet_cifar import PadShortcut


def test_pad_shortcut_is_the_option_a_shortcut() -> None:
    x = torch.randn(2, 16, 9, 9)
    shortcut = PadShortcut(16, 8)
    assert shortcut.pads == (8, 8)  # the unpruned map is a plain zero pad
    assert torch.equal(shortcut(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))


def test_map_places_each_input_at_its_index_and_zeros_elsewhere() -> None:
    x = torch.randn(2, 3, 4, 4)
    layer = ChannelMap(3, 5, [4, -1, 1])
    want = torch.zeros(2, 5, 4, 4)
    want[:, 4], want[:, 1] = x[:, 0], x[:, 2]
    assert layer.pads is None and torch.equal(layer(x), want)


def test_pruning_outputs_drops_what_landed_there_and_renumbers_the_rest() -> None:
    layer = ChannelMap(4, 8, [2, 3, 4, 5])
    ChannelMapPruner().prune_out_channels(layer, [0, 3, 6])  # slot 3 held input 1
    assert layer.out_channels == 5 and layer.index.tolist() == [1, -1, 2, 3]
    ChannelMapPruner().prune_in_channels(layer, [0])
    assert layer.in_channels == 3 and layer.index.tolist() == [-1, 2, 3]


def test_a_map_with_two_inputs_on_one_output_is_refused() -> None:
    with pytest.raises(ValueError, match="distinct outputs"):
        ChannelMap(2, 4, [1, 1])


def test_pruned_stages_keep_the_channels_they_share() -> None:
    """Stage 1 keeps channels 0 and 5, stage 2 keeps slots 8 and 13 (where those two land) and 20: the pruned
    shortcut maps the two kept stage-1 channels onto the first two kept slots."""
    model = create_model("resnet20").eval()
    pruner = ChannelPruner(model, (3, 32, 32))
    keep = {"conv1": torch.tensor([0, 5]), "layer2.0.conv2": torch.tensor([8, 13, 20])}
    pruned = pruner.prune(keep, reconstruct=False)
    shortcut = pruned.layer2[0].shortcut
    assert (shortcut.in_channels, shortcut.out_channels, shortcut.index.tolist()) == (2, 3, [0, 1])
    assert pruned.layer3[0].shortcut.in_channels == 3 and pruned.layer3[0].shortcut.out_channels == 64
    # stage 2 keeps slot 20 only: stage-1 channel 12, which lands there, is gone from stage 1
    keep = {"conv1": torch.tensor([0, 1]), "layer2.0.conv2": torch.tensor([20])}
    assert pruner.prune(keep, reconstruct=False).layer2[0].shortcut.index.tolist() == [-1, -1]


def test_the_unpruned_checkpoint_layout_is_unchanged() -> None:
    """The map is not in the state dict: checkpoints of the zero-pad ResNets load as before."""
    keys = create_model("resnet20").state_dict().keys()
    assert not any("shortcut" in key for key in keys)


def test_analysing_the_model_leaves_it_unchanged() -> None:
    """The pruned == masked check masks the shortcuts in place: every map must be restored afterwards."""
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        ChannelPruner(model, (3, 32, 32))
        assert torch.equal(model(x), before)
    assert all(m.pads == (m.in_channels // 2, m.in_channels // 2) for m in model.modules() if isinstance(m, PadShortcut))
