"""The pruning engine: verified channel groups, physical pruning == masking, the exact cost model, refit."""

from __future__ import annotations

import copy
import textwrap
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from amc.data.datasets import load_dataset
from amc.data.transforms import normalize
from amc.engine.budget import ratio_counts
from amc.engine.cost import count_macs_params
from amc.engine.groups import mask_copy, prune_copy
from amc.engine.measure import inference_copy, latency
from amc.engine.pruner import ChannelPruner
from amc.engine.reconstruct import _patch_rows, _rows, greedy_order, recalibrate_batchnorm, refit
from amc.errors import AmcError
from amc.models import create_model, list_models
from amc.models.trained import load_trained_model
from amc.models.zoo import digits_checkpoint
from amc.reward import RewardEvaluator

CIFAR_SHAPE = (3, 32, 32)
USER_SHAPE = (3, 16, 16)

# A user model with every coupling the engine must handle: a residual add, a depthwise block, a concat of
# two branches, and a conv -> flatten -> Linear head with a hidden Linear.
USER_MODEL = textwrap.dedent(
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            self.res1, self.rbn1 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
            self.res2, self.rbn2 = nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            self.expand, self.ebn = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
            self.dw, self.dbn = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False), nn.BatchNorm2d(32)
            self.project, self.pbn = nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24)
            self.branch_a, self.abn = nn.Conv2d(24, 12, 1, bias=False), nn.BatchNorm2d(12)
            self.branch_b, self.bbn = nn.Conv2d(24, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20)
            self.merge, self.mbn = nn.Conv2d(32, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
            self.fc1 = nn.Linear(8 * 4 * 4, 48)
            self.fc2 = nn.Linear(48, num_classes)

        def forward(self, x):
            x = F.relu(self.bn0(self.stem(x)))
            x = F.relu(x + self.rbn2(self.res2(F.relu(self.rbn1(self.res1(x))))))
            x = F.relu(self.ebn(self.expand(x)))
            x = F.relu(self.pbn(self.project(F.relu(self.dbn(self.dw(x))))))
            x = torch.cat([F.relu(self.abn(self.branch_a(x))), F.relu(self.bbn(self.branch_b(x)))], 1)
            x = F.relu(self.mbn(self.merge(x)))
            return self.fc2(F.relu(self.fc1(x.flatten(1))))


    def build(num_classes=10):
        return Net(num_classes)
    """
)


MODELS = ["resnet56", "plain20", "vgg16", "mobilenetv2", "user"]
Analysed = tuple[ChannelPruner, tuple[int, ...], list[str]]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that a wrongly mapped channel shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


def build_pruner(name: str, tmp_path_factory: pytest.TempPathFactory) -> Analysed:
    """(pruner, input shape, warnings raised while analysing) for a model of this test module."""
    torch.manual_seed(0)
    if name == "user":
        path = tmp_path_factory.mktemp("user_model") / "user_net.py"
        path.write_text(USER_MODEL)
        model, shape = create_model(f"{path}:build"), USER_SHAPE
    else:
        model, shape = create_model(name), CIFAR_SHAPE
    randomize_batchnorm(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = ChannelPruner(model, shape)
    return pruner, shape, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def analyse(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Analysed]:
    """`analyse(name)`: the model's pruner, input shape and analysis warnings, built once per module."""
    cache: dict[str, Analysed] = {}

    def get(name: str) -> Analysed:
        if name not in cache:
            cache[name] = build_pruner(name, tmp_path_factory)
        return cache[name]

    return get


def random_keep(pruner: ChannelPruner, rng: np.random.Generator, names: list[str]) -> dict[str, torch.Tensor]:
    """For each named group a random subset of its channels, of a random size in [min_keep, channels - 1]."""
    keep = {}
    for group in pruner.groups:
        if group.name in names:
            n = int(rng.integers(group.min_keep, max(group.channels, group.min_keep + 1)))
            keep[group.name] = torch.from_numpy(np.sort(rng.choice(group.channels, size=n, replace=False)))
    return keep


def assert_prune_equals_mask(pruner: ChannelPruner, keep: dict[str, torch.Tensor], x: torch.Tensor) -> nn.Module:
    pruned = prune_copy(pruner.model, pruner.groups, keep)
    with torch.no_grad():
        got = pruned(x)
        want = mask_copy(pruner.model, pruner.groups, keep)(x)
    assert got.shape == want.shape
    tolerance = 1e-4 * (1.0 + want.abs().max().item())
    assert (got - want).abs().max().item() <= tolerance, f"groups {sorted(keep)}"
    return pruned


@pytest.mark.parametrize("name", MODELS)
def test_every_group_prunes_like_masking(analyse: Callable[[str], Analysed], name: str) -> None:
    pruner, shape, _ = analyse(name)
    rng = np.random.default_rng(1)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    assert pruner.groups, f"{name} has no prunable group"
    for group in pruner.groups:
        assert_prune_equals_mask(pruner, random_keep(pruner, rng, [group.name]), x)


@pytest.mark.parametrize("name", MODELS)
def test_all_groups_at_once_prune_like_masking_and_cost_is_exact(analyse: Callable[[str], Analysed], name: str) -> None:
    pruner, shape, _ = analyse(name)
    rng = np.random.default_rng(2)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    keep = random_keep(pruner, rng, pruner.names)
    pruned = assert_prune_equals_mask(pruner, keep, x)
    counts = np.array([len(keep[n]) for n in pruner.names])
    assert count_macs_params(pruned, shape) == (int(pruner.cost.macs(counts)), int(pruner.cost.params(counts)))
    assert count_macs_params(pruner.model, shape) == (
        int(pruner.cost.macs(pruner.channels)), int(pruner.cost.params(pruner.channels))
    )


# the registry's models at their smallest honest input: 8x8 digits, 32x32 CIFAR, 64x64 for the ImageNet ones
REGISTRY_SHAPES = {"digits_cnn": (1, 8, 8), "mobilenet": (3, 64, 64), "mobilenet_v2": (3, 64, 64),
                   "mobilenet_v3_large": (3, 64, 64), "resnet18": (3, 64, 64), "resnet34": (3, 64, 64),
                   "resnet50": (3, 64, 64)}


def test_registry_shapes_cover_every_model_not_tested_above() -> None:
    assert set(list_models()) - set(MODELS) - {"resnet20", "resnet32", "resnet44", "resnet110"} <= set(REGISTRY_SHAPES)


@pytest.mark.parametrize("name", sorted(REGISTRY_SHAPES))
def test_every_registry_model_prunes_like_masking_with_no_group_excluded(name: str) -> None:
    """Every group passed the pruned == masked check when the pruner was built (a failure is a warning); all of
    them pruned at once must still equal masking, with MACs and parameters as the cost model says."""
    shape = REGISTRY_SHAPES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an excluded group, or a layer no group covers, fails the test
        pruner = ChannelPruner(model, shape)
    assert pruner.groups
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    keep = random_keep(pruner, np.random.default_rng(3), pruner.names)
    pruned = assert_prune_equals_mask(pruner, keep, x)
    counts = np.array([len(keep[n]) for n in pruner.names])
    assert count_macs_params(pruned, shape) == (int(pruner.cost.macs(counts)), int(pruner.cost.params(counts)))


def test_resnet56_groups_are_block_internal_and_one_per_residual_stream(analyse: Callable[[str], Analysed]) -> None:
    pruner, shape, caught = analyse("resnet56")
    internal = [f"layer{stage}.{block}.conv1" for stage in (1, 2, 3) for block in range(9)]
    streams = ["conv1", "layer2.0.conv2", "layer3.0.conv2"]  # each stage's residual width, named by its producer
    assert sorted(pruner.names) == sorted(internal + streams)
    assert not caught, caught  # the zero-pad shortcuts are index maps now: no group is excluded
    assert [g.name for g in pruner.groups if g.residual_stream] == streams
    groups = {g.name: g for g in pruner.groups}
    assert [groups[n].consumer for n in internal] == [n.replace("conv1", "conv2") for n in internal]
    # a stage's stream is every block's conv2 output, every conv1 input, and the shortcut on either side of it
    stage2 = {(it.module, it.kind) for it in groups["layer2.0.conv2"].items}
    assert {(f"layer2.{b}.conv2", "out") for b in range(9)} | {(f"layer2.{b}.conv1", "in") for b in range(1, 9)} <= stage2
    assert {("layer2.0.shortcut", "map_out"), ("layer3.0.shortcut", "map_in"), ("layer3.0.conv1", "in")} <= stage2
    assert ("linear", "in") in {(it.module, it.kind) for it in groups["layer3.0.conv2"].items}
    assert count_macs_params(pruner.model, shape) == (125_485_696, 853_018)
    assert int(pruner.cost.macs(pruner.channels)) == 125_485_696
    assert int(pruner.cost.params(pruner.channels)) == 853_018


def test_a_depthwise_conv_between_layers_does_not_make_a_residual_stream(analyse: Callable[[str], Analysed]) -> None:
    """MobileNetV2: an expansion group is written by its 1x1 conv and passed on by the depthwise conv (one
    producer); the projections that residual adds join are the streams."""
    pruner, _, _ = analyse("mobilenetv2")
    streams = [g for g in pruner.groups if g.residual_stream]
    assert streams and all(len(g.producers) > 1 for g in streams)
    assert not any(g.residual_stream for g in pruner.groups if g.min_keep == 2)  # the depthwise-read groups


def test_user_model_couplings(analyse: Callable[[str], Analysed]) -> None:
    pruner, _, caught = analyse("user")
    assert not caught, caught
    groups = {g.name: g for g in pruner.groups}
    # the residual add couples stem and res2; both branches of the concat are groups of their own
    assert {"res1", "branch_a", "branch_b", "merge", "fc1"} <= set(groups)
    assert any({"stem", "res2"} <= set(g.layers) for g in pruner.groups)
    assert any(g.min_keep == 2 and "dw" in g.layers for g in pruner.groups)
    flatten_item = next(it for it in groups["merge"].items if it.module == "fc1")
    assert flatten_item.per_channel == 16  # 4x4 features per channel after the flatten
    assert groups["fc1"].consumer == "fc2"


@pytest.fixture(scope="module")
def digits_trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The embedded trained digits CNN (`digits_checkpoint`, trained once per cache) and normalized
    (train, test) images."""
    data = load_dataset("digits")
    model = load_trained_model("digits_cnn", digits_checkpoint(), dataset=data).module
    return model, normalize(data.train.images, data.mean, data.std), normalize(data.test.images, data.mean, data.std)


@pytest.fixture
def train_digits_cnn(digits_trained) -> Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """A fresh copy of the trained digits CNN with its images, per call."""
    model, x_train, x_test = digits_trained
    return lambda: (copy.deepcopy(model).eval(), x_train, x_test)


def test_least_squares_refit_reduces_output_error(train_digits_cnn) -> None:
    model, x_train, x_test = train_digits_cnn()
    pruner = ChannelPruner(model, (1, 8, 8))
    pruner.calibrate(x_train.split(250))
    keep = pruner.kept_indices(ratio_counts(pruner, 0.5))
    with torch.no_grad():
        dense = model(x_test)
        refitted = F.mse_loss(pruner.prune(keep, reconstruct=True)(x_test), dense).item()
        selected = F.mse_loss(pruner.prune(keep, reconstruct=False)(x_test), dense).item()
    assert refitted < selected


def test_sequential_refit_beats_the_gram_refit(train_digits_cnn) -> None:
    model, x_train, x_test = train_digits_cnn()
    pruner = ChannelPruner(model, (1, 8, 8))
    pruner.calibrate(x_train.split(250))
    labels = torch.zeros(len(x_test), dtype=torch.long)
    errors = {}
    for counts in (ratio_counts(pruner, 0.4), ratio_counts(pruner, 0.6)):
        for method in ("gram", "sequential"):
            evaluator = RewardEvaluator(pruner, x_test, labels, refit_x=x_train[:256], reconstruct=method)
            with torch.no_grad():
                errors[method] = F.mse_loss(evaluator.prune(counts)(x_test), model(x_test)).item()
        assert errors["sequential"] < errors["gram"], errors


def test_batchnorm_re_estimation_averages_the_inputs_with_dropout_off() -> None:
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3), nn.Dropout(0.5)).eval()
    x = torch.randn(100, 3) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([0.5, -1.0, 2.0])
    recalibrate_batchnorm(model, x, batch_size=25)
    assert not model.training and not model[0].training
    torch.testing.assert_close(model[1].running_mean, x.mean(0))
    torch.testing.assert_close(model[1].running_var, x.var(0), rtol=0.05, atol=0.0)  # batch-unbiased vs whole-set


@pytest.mark.parametrize("kernel,stride,padding,dilation",
                         [(3, 1, 1, 1), (3, 2, 1, 1), ((3, 1), 1, (2, 0), 2), (1, 2, 0, 1)])
def test_patch_rows_are_unfold_columns(kernel, stride, padding, dilation) -> None:
    conv = nn.Conv2d(5, 7, kernel, stride, padding, dilation)
    x = torch.randn(3, 5, 9, 10).to(memory_format=torch.channels_last)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, D, L]
    positions = torch.randint(cols.shape[2], (3, 4), generator=torch.Generator().manual_seed(0))
    want = torch.gather(cols, 2, positions[:, None, :].expand(-1, cols.shape[1], -1)).transpose(1, 2)
    assert torch.equal(_patch_rows(conv, x, positions), want.reshape(-1, cols.shape[1]))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(5, 7, 3, padding="same"), nn.Conv2d(5, 7, 4, padding="same"), nn.Conv2d(5, 7, (2, 5), padding="same",
    dilation=(2, 1)), nn.Conv2d(5, 7, 3, padding=1, padding_mode="reflect"), nn.Conv2d(5, 7, 3, padding=2,
    padding_mode="replicate"), nn.Conv2d(5, 7, 3, stride=2, padding=1, padding_mode="circular"),
], ids=["same3", "same4-asymmetric", "same-dilated", "reflect", "replicate", "circular"])
def test_rows_read_the_patches_the_conv_reads(conv) -> None:
    """Both re-fits read each conv's own padding (`padding="same"`, reflect, replicate, circular), so a
    least-squares fit on the rows reproduces the conv's outputs exactly."""
    x = torch.randn(3, 5, 9, 10)
    with torch.no_grad():
        out = conv(x)  # [B, O, H', W']
        length = out.shape[2] * out.shape[3]
        positions = torch.arange(length).expand(3, length)
        rows = _patch_rows(conv, x, positions)  # the sequential re-fit's rows
        torch.testing.assert_close(rows @ conv.weight.reshape(7, -1).T + conv.bias,
                                   out.flatten(2).transpose(1, 2).reshape(-1, 7), rtol=1e-5, atol=1e-5)
        gram_rows = _rows(conv, x, length, torch.Generator())  # the Gram re-fit's rows (all positions)
        torch.testing.assert_close(gram_rows @ conv.weight.reshape(7, -1).T + conv.bias,
                                   out.flatten(2).transpose(1, 2).reshape(-1, 7), rtol=1e-5, atol=1e-5)


class _ViewFlatten(nn.Module):
    """The flatten idiom that fails on channels-last tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(x.view(x.size(0), -1))


def test_models_that_refuse_channels_last_are_evaluated_contiguous():
    from amc.engine.measure import accepts_channels_last

    model = _ViewFlatten().eval()
    assert not accepts_channels_last(model, (3, 8, 8))
    assert accepts_channels_last(create_model("digits_cnn").eval(), (1, 8, 8))
    pruner = ChannelPruner(model, (3, 8, 8), selection="l1")
    x = torch.randn(16, 3, 8, 8)
    evaluator = RewardEvaluator(pruner, x, torch.zeros(16, dtype=torch.long), refit_x=x, reconstruct="gram")
    assert not evaluator.channels_last
    pruner.calibrate([x])
    assert 0 <= evaluator(np.maximum(1, pruner.channels // 2)).accuracy <= 1


def test_the_evaluator_holds_each_split_once_in_its_order_and_layout():
    model = create_model("digits_cnn").eval()
    pruner = ChannelPruner(model, (1, 8, 8), selection="l1")
    x, y = torch.randn(700, 1, 8, 8), torch.arange(700) % 10
    refit_x = torch.randn(64, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    evaluator = RewardEvaluator(pruner, x, y, refit_x=refit_x, reconstruct="gram", seed=5, select_x=x[:300],
                                select_y=y[:300])
    order = torch.randperm(700, generator=torch.Generator().manual_seed(5))
    assert evaluator.channels_last and evaluator.val_x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(evaluator.val_x, x[order]) and torch.equal(evaluator.val_y, y[order])
    assert torch.equal(evaluator.select_x, x[:300])
    assert evaluator.refit_x is refit_x  # already on the device, in the layout: not copied


def test_cpu_evaluation_batches_hold_at_most_500_cifar_images_of_values():
    from amc.engine.measure import batch_size_for

    assert batch_size_for((3, 32, 32), "cpu") == 500  # CIFAR: unchanged
    assert batch_size_for((3, 32, 32), "cpu", most=250) == 250
    assert batch_size_for((3, 224, 224), "cpu") == 10
    assert batch_size_for((3, 2048, 2048), "cpu") == 1
    assert batch_size_for((3, 224, 224), "meta") == 500  # an accelerator keeps whole batches


def test_least_squares_selection_beats_l1_selection(train_digits_cnn) -> None:
    model, x_train, x_test = train_digits_cnn()
    errors = {}
    for selection in ("ls", "l1"):
        pruner = ChannelPruner(model, (1, 8, 8), selection=selection)
        pruner.calibrate(x_train.split(250))
        keep = pruner.kept_indices(ratio_counts(pruner, 0.4))
        with torch.no_grad():
            errors[selection] = F.mse_loss(pruner.prune(keep)(x_test), model(x_test)).item()
    assert errors["ls"] < errors["l1"]


def _refit_error(weight: torch.Tensor, gram: torch.Tensor, cols: torch.Tensor) -> float:
    """||X[:, cols] W'^T - X W^T||^2 of the least-squares W', from the Gram matrix alone."""
    w = weight.double()
    diff = -w.clone()
    diff[:, cols] += refit(weight, gram, cols).double()
    return float(torch.einsum("od,de,oe->", diff, gram, diff))


def test_greedy_order_drops_the_channel_the_refit_misses_least() -> None:
    g = torch.Generator().manual_seed(0)
    channels, block, outputs = 6, 4, 5
    rows = torch.randn(400, channels * block, generator=g, dtype=torch.float64)
    rows[:, 8:12] = rows[:, 0:4] + 1e-3 * rows[:, 8:12]  # channel 2 almost duplicates channel 0
    gram = rows.T @ rows
    weight = torch.randn(outputs, channels * block, generator=g)
    blocks = torch.arange(channels * block).reshape(channels, block)
    order = greedy_order(weight, gram, blocks)
    assert sorted(order.tolist()) == list(range(channels))
    for alive in (list(range(channels)), order[:4].tolist()):  # the first step, and a later one
        expected = min(alive, key=lambda j: _refit_error(weight, gram, blocks[[c for c in alive if c != j]].reshape(-1)))
        first_dropped = [c for c in reversed(order.tolist()) if c in alive][0]
        assert first_dropped == expected
    assert order[-1].item() in (0, 2)


def test_refit_of_rank_deficient_gram_is_finite() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 8, generator=g)
    rows = torch.randn(3, 8, generator=g, dtype=torch.float64)  # 3 samples: rank 3 < 8 features
    keep_cols = torch.tensor([0, 2, 3, 5, 6, 7])
    for gram in (rows.T @ rows, torch.zeros(8, 8, dtype=torch.float64)):
        out = refit(weight, gram, keep_cols)
        assert out.shape == (4, 6)
        assert torch.isfinite(out).all()


class _DeadChannels(nn.Module):
    """conv -> ReLU -> conv where half of the first conv's outputs are dead (zero weight, negative bias): removing
    exactly those changes nothing, so a re-fit must leave the model exact."""

    def __init__(self, padding_mode: str = "zeros", stride: int = 1, kernel=(3, 3)) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, kernel, stride=stride, padding=(kernel[0] // 2, kernel[1] // 2),
                           padding_mode=padding_mode)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            self.a.weight[::2] = 0.0
            self.a.bias[::2] = -1.0

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.b(F.relu(self.a(x)))), 1).flatten(1))


@pytest.mark.parametrize("variant", [dict(), dict(padding_mode="reflect"), dict(padding_mode="circular", stride=2),
                                     dict(padding_mode="replicate", kernel=(1, 5))],
                         ids=["zeros", "reflect", "circular-strided", "replicate-1x5"])
@pytest.mark.parametrize("method", ["gram", "sequential"])
def test_a_refit_never_adds_error_where_selection_is_exact(variant, method) -> None:
    """Removing only dead channels is exact without a re-fit; the ridged re-fit would add error, so it is
    declined (never worse than no re-fit), for every padding mode and both re-fits."""
    torch.manual_seed(0)
    model = _DeadChannels(**variant).eval()
    x = torch.randn(64, 2, 8, 8)
    pruner = ChannelPruner(model, (2, 8, 8))
    pruner.calibrate(x.split(32))
    counts = np.array([3 if name == "a" else c for name, c in zip(pruner.names, pruner.channels)])
    assert pruner.kept_indices(counts)["a"].tolist() == [1, 3, 5]
    evaluator = RewardEvaluator(pruner, x, torch.zeros(64, dtype=torch.long), refit_x=x[:32], reconstruct=method)
    with torch.no_grad():
        torch.testing.assert_close(evaluator.prune(counts)(x), model(x), rtol=0, atol=1e-6)


def test_the_gram_refit_is_never_worse_than_selection() -> None:
    """On random data the re-fit's output error is at most plain selection's, for every kept set."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 12, generator=g)
    rows = torch.randn(40, 12, generator=g, dtype=torch.float64)
    gram = rows.T @ rows
    for _ in range(20):
        keep = torch.randperm(12, generator=g)[: int(torch.randint(1, 12, (1,), generator=g))]
        errors = [(rows[:, keep] @ w.double().T - rows @ weight.double().T).square().sum().item()
                  for w in (refit(weight, gram, keep), weight[:, keep])]
        assert errors[0] <= errors[1] + 1e-9


def test_refit_keeping_every_column_returns_the_weights() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 8, generator=g)
    rows = torch.randn(100, 8, generator=g, dtype=torch.float64)
    out = refit(weight, rows.T @ rows, torch.arange(8))
    torch.testing.assert_close(out, weight, atol=1e-4, rtol=1e-4)


def test_cpu_latency_in_channels_last_times_a_copy() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    ms = latency(model, (3, 16, 16), 2, repeats=1, min_run_time=0.01, channels_last=True)
    assert ms > 0
    assert model[0].weight.is_contiguous() and model.training  # the caller's model keeps its layout and mode


def test_inference_copy_folds_batchnorm_with_equal_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    for m in model.modules():  # non-trivial statistics, so that folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    deployed = inference_copy(model, channels_last=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   atol=1e-4, rtol=1e-4)


class _Split(nn.Module):
    """Channel operations the dependency graph may map wrongly: a split into unequal parts, a shift (roll)
    and a shuffle of channel groups, each between two convs."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.c1 = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(12)
        self.a = nn.Conv2d(4, 6, 3, padding=1) if kind == "split" else nn.Conv2d(12, 6, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1) if kind == "split" else nn.Identity()
        self.head = nn.Linear(12 if kind == "split" else 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        if self.kind == "split":
            first, second = torch.split(x, [4, 8], dim=1)
            x = torch.cat([self.a(first), self.b(second)], 1)
        elif self.kind == "roll":
            x = self.a(torch.roll(x, 3, dims=1))
        else:  # shuffle: 3 groups of 4 channels, interleaved
            n, c, h, w = x.shape
            x = self.a(x.view(n, 3, 4, h, w).transpose(1, 2).reshape(n, c, h, w))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["split", "roll", "shuffle"])
def test_no_group_with_a_wrong_index_map_survives(kind):
    """Whatever groups survive verification, pruning each equals masking it for random, asymmetric kept sets."""
    torch.manual_seed(0)
    model = _Split(kind).eval()
    example = torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = ChannelPruner(model, (3, 8, 8), selection="l1")
    excluded = {str(w.message).split()[2] for w in caught if "excluded" in str(w.message)}
    assert {g.name for g in pruner.groups} | excluded >= {"c1"}  # c1 is pruned right, or excluded by name
    generator = torch.Generator().manual_seed(1)
    for group in pruner.groups:
        for _ in range(5):
            size = int(torch.randint(group.min_keep, group.channels, (1,), generator=generator))
            keep = {group.name: torch.randperm(group.channels, generator=generator)[:size].sort().values}
            with torch.no_grad():
                torch.testing.assert_close(prune_copy(model, [group], keep)(example),
                                           mask_copy(model, [group], keep)(example), rtol=1e-4, atol=1e-4)


class _Chunked(nn.Module):
    """A producer cut into `sections` equal parts by torch.chunk, each read by its own conv (ShuffleNetV2 / CSP
    style), the parts concatenated again."""

    def __init__(self, sections: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4 * sections, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4 * sections)
        self.branches = nn.ModuleList(nn.Conv2d(4, 5, 3, padding=1) for _ in range(sections))
        self.head = nn.Linear(5 * sections, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(torch.relu(self.b1(self.c1(x))), len(self.branches), dim=1)
        x = torch.cat([torch.relu(conv(part)) for conv, part in zip(self.branches, parts)], 1)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("sections", [2, 3])
def test_a_chunked_producer_keeps_the_same_channels_of_every_section(sections, tmp_path):
    """torch.chunk re-cuts the pruned tensor into equal parts, so the group's unit is one channel per section:
    every kept set prunes like masking, policies are in the producer's channels (a multiple of the sections),
    and the pruned-model file records and reloads the producer's kept channels."""
    from amc.apply import apply_policy
    from amc.engine.budget import Budget
    from amc.models.trained import TrainedModel
    from amc.policy import Policy

    torch.manual_seed(0)
    model = _Chunked(sections).eval()
    x = torch.randn(4, 3, 8, 8)
    pruner = ChannelPruner(model, (3, 8, 8), selection="l1")
    group = next(g for g in pruner.groups if g.name == "c1")
    assert (group.channels, group.sections, group.width) == (4, sections, 4 * sections)
    generator = torch.Generator().manual_seed(2)
    for _ in range(6):
        size = int(torch.randint(1, 4, (1,), generator=generator))
        keep = {"c1": torch.randperm(4, generator=generator)[:size].sort().values}
        with torch.no_grad():
            torch.testing.assert_close(prune_copy(model, [group], keep)(x), mask_copy(model, [group], keep)(x),
                                       rtol=1e-4, atol=1e-4)
    entry = {"name": "c1", "channels": 4 * sections, "keep": 2 * sections}
    policy = Policy.from_dict({"format": "amc-policy/1", "model": "m", "budget": None, "groups": [entry]})
    assert policy.counts_for(pruner)[pruner.names.index("c1")] == 2
    with pytest.raises(AmcError, match=f"multiple of {sections}"):
        Policy.from_dict({"format": "amc-policy/1", "model": "m", "budget": None,
                          "groups": [{**entry, "keep": 2 * sections + 1}]}).counts_for(pruner)
    counts = pruner.channels.copy()
    counts[pruner.names.index("c1")] = 3
    assert Policy.from_counts(pruner, "m", counts, Budget("flops", 1.0)).groups[0].keep == 3 * sections
    trained = TrainedModel(model, "m", 3, (3, 8, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    pruned = apply_policy((trained, pruner), policy)
    kept = pruned.kept["c1"]
    assert len(kept) == 2 * sections and group.to_units(kept).tolist() == sorted({k % 4 for k in kept})
    assert pruned.module.c1.out_channels == 2 * sections
    with torch.no_grad():
        torch.testing.assert_close(pruned.module(x), mask_copy(model, [group], {"c1": group.to_units(kept)})(x),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(AmcError, match="same channels of each section"):
        group.to_units([0, 1])


class _Unusual(nn.Module):
    """Layers and call patterns a cost model can miss: non-square and dilated kernels, a Linear applied per
    token, and an attention-like product of token features."""

    def __init__(self, attention: str = "none") -> None:
        super().__init__()
        self.attention = attention
        self.wide = nn.Conv2d(3, 12, (1, 3), padding=(0, 1))
        self.tall = nn.Conv2d(12, 16, (3, 1), padding=(1, 0), dilation=(1, 1))
        self.dil = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.shared = nn.Conv2d(16, 16, 1)
        self.tok = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.tall(torch.relu(self.wide(x))))
        x = torch.relu(self.dil(x))
        x = torch.relu(self.shared(x))
        t = torch.relu(self.tok(x.flatten(2).transpose(1, 2)))  # [B, tokens, 24]
        if self.attention == "features":  # token mixing over the 24 prunable features: its cost changes
            t = torch.softmax(t @ t.transpose(1, 2) / 5, -1) @ t
        h = self.head(t)  # [B, tokens, 5]: the output layer, never pruned
        if self.attention == "logits":  # token mixing whose cost no pruning changes
            h = torch.softmax(h @ h.transpose(1, 2), -1) @ h
        return h.mean(1)


def test_cost_model_counts_every_multiply_accumulate_of_unusual_layers():
    torch.manual_seed(0)
    model = _Unusual().eval()
    pruner = ChannelPruner(model, (3, 8, 8), selection="l1")
    rng = np.random.default_rng(3)
    for _ in range(5):
        counts = np.array([rng.integers(g.min_keep, g.channels + 1) for g in pruner.groups])
        pruned = pruner.prune(pruner.kept_indices(counts), reconstruct=False)
        assert (int(pruner.cost.macs(counts)), int(pruner.cost.params(counts))) == count_macs_params(pruned, (3, 8, 8))


def test_cost_of_operations_outside_layers_is_a_constant_when_no_pruning_changes_it():
    model = _Unusual("logits").eval()
    pruner = ChannelPruner(model, (3, 8, 8), selection="l1")
    tokens = 8 * 8
    assert pruner.cost.other_macs == 2 * tokens * tokens * 5  # the two token products over 5 logits
    counts = np.array([g.min_keep for g in pruner.groups])
    pruned = pruner.prune(pruner.kept_indices(counts), reconstruct=False)
    assert int(pruner.cost.macs(counts)) == count_macs_params(pruned, (3, 8, 8))[0]


def test_products_whose_cost_pruning_changes_are_refused():
    """Attention over prunable features: the analytic model (conv/Linear only) would miss MACs that shrink
    with pruning, so the model is refused rather than searched with a wrong cost model."""
    with pytest.raises(AmcError, match="cost model"):
        ChannelPruner(_Unusual("features").eval(), (3, 8, 8), selection="l1")


def test_a_cost_model_that_would_break_budgets_is_refused(monkeypatch):
    """Whatever makes the analytic count differ from torch's count of a pruned model, the model is refused."""
    import amc.engine.pruner as pruner_module

    counted = pruner_module.count_macs_params

    def miscounted(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
        macs, params = counted(model, shape)
        return macs + params, params  # MACs the analytic model does not know of, growing with the model's width

    monkeypatch.setattr(pruner_module, "count_macs_params", miscounted)
    with pytest.raises(AmcError, match="cost model"):
        ChannelPruner(create_model("digits_cnn").eval(), (1, 8, 8), selection="l1")
