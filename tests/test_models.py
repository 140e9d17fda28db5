"""Model registry, user model specs and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import assert_one_line, real_checkpoint

from amc.errors import AmcError
from amc.models import create_model, list_models, load_checkpoint, read_checkpoint
from amc.models.mobilenetv2 import mobilenetv2

BUILT_IN = {
    *("digits_cnn", "mobilenetv2", "plain20", "vgg16"),
    *("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
}
ALL_MODELS = list_models()


def example_input(name: str) -> torch.Tensor:
    return torch.randn(2, 1, 8, 8) if name == "digits_cnn" else torch.randn(2, 3, 32, 32)


def test_registry_lists_every_built_in_model() -> None:
    assert BUILT_IN <= set(list_models())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_registered_model_forward_shape(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(example_input(name)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torch_pruning_builds_dependency_graph(name: str) -> None:
    import torch_pruning as tp

    model = create_model(name)
    tp.DependencyGraph().build_dependency(model, example_inputs=example_input(name)[:1])


@pytest.mark.parametrize(("name", "params"), [("resnet20", 269_722), ("resnet56", 853_018), ("plain20", 269_722)])
def test_cifar_resnet_parameter_counts(name: str, params: int) -> None:
    assert sum(p.numel() for p in create_model(name).parameters()) == params


def test_resnet_downsampling_block_pads_channels_into_shortcut() -> None:
    block = create_model("resnet20").layer2[0]
    out = block.shortcut(torch.ones(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0 and (out[:, 8:24] == 1).all()


def test_plain20_has_no_shortcuts() -> None:
    model = create_model("plain20")
    assert all(block.shortcut is None for stage in (model.layer1, model.layer2, model.layer3) for block in stage)


def test_mobilenetv2_block_layout_and_width() -> None:
    model = create_model("mobilenetv2")
    first, second = model.features[0], model.features[1]
    assert first.expand is None and first.bn1 is None
    assert isinstance(second.expand, nn.Conv2d) and second.depthwise.groups == second.depthwise.in_channels
    thin = mobilenetv2(num_classes=5, width_mult=0.5).eval()
    assert thin.features[-1].project.out_channels == 160
    with torch.no_grad():
        assert thin(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_real_checkpoint_loads_strictly(name: str) -> None:
    path = real_checkpoint(name)
    _, meta = read_checkpoint(path)
    model = create_model(name, num_classes=meta["num_classes"])
    meta = load_checkpoint(model, path)
    assert meta["arch"] == name and len(meta["mean"]) == 3 and len(meta["std"]) == 3


@pytest.mark.realdata
def test_real_checkpoint_into_wrong_model_names_missing_key() -> None:
    path = real_checkpoint("resnet20")
    with pytest.raises(AmcError) as excinfo:
        load_checkpoint(create_model("resnet56"), path, model_name="resnet56")
    assert_one_line(excinfo.value, "does not fit model resnet56", "missing keys layer1.3.", "arch resnet20")


def test_unknown_model_name_lists_known_names_and_forms() -> None:
    with pytest.raises(AmcError) as excinfo:
        create_model("resnet57")
    assert_one_line(excinfo.value, "resnet57", "resnet56", "module:factory", "file.py:factory")


USER_MODEL = """
import torch.nn as nn

def factory(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

def fixed():
    return nn.Linear(4, 3)

def broken():
    raise ValueError("bad width\\nsecond line")

def not_a_model():
    return 42
"""


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.py"
    path.write_text(USER_MODEL)
    return path


def test_user_file_factory_builds_and_receives_num_classes(user_file: Path) -> None:
    assert create_model(f"{user_file}:factory")(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model(f"{user_file}:factory", num_classes=4)(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_user_factory_without_num_classes_is_called_without_arguments(user_file: Path) -> None:
    assert create_model(f"{user_file}:fixed", num_classes=4).out_features == 3


def test_package_module_factory_builds() -> None:
    model = create_model("amc.models.digits:digits_cnn", num_classes=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("attr", "fragments"),
    [
        ("missing", ("has no attribute 'missing'",)),
        ("broken", ("failed", "ValueError: bad width second line")),
        ("not_a_model", ("returned int", "nn.Module")),
    ],
)
def test_user_factory_errors(user_file: Path, attr: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(AmcError) as excinfo:
        create_model(f"{user_file}:{attr}")
    assert_one_line(excinfo.value, *fragments)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("no/such/file.py:factory", "not found"), ("no_such_package_xyz.models:factory", "cannot import module")],
)
def test_user_spec_location_errors(spec: str, fragment: str) -> None:
    with pytest.raises(AmcError) as excinfo:
        create_model(spec)
    assert_one_line(excinfo.value, fragment)


def test_state_dict_with_ddp_prefix_loads(tmp_path: Path) -> None:
    source = create_model("digits_cnn")
    path = tmp_path / "ddp.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model("digits_cnn")
    assert load_checkpoint(target, path) == {}
    assert torch.equal(target.fc1.weight, source.fc1.weight)


def test_raw_state_dict_loads_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "raw.pt"
    torch.save(create_model("digits_cnn").state_dict(), path)
    assert load_checkpoint(create_model("digits_cnn"), path) == {}


def test_wrong_arch_names_missing_key_and_leaves_model_untouched(tmp_path: Path) -> None:
    path = tmp_path / "r20.pt"
    torch.save({"state_dict": create_model("resnet20").state_dict(), "arch": "resnet20"}, path)
    target = create_model("resnet32")
    before = target.linear.weight.clone()
    with pytest.raises(AmcError) as excinfo:
        load_checkpoint(target, path, model_name="resnet32")
    assert_one_line(excinfo.value, "missing keys layer1.3.conv1.weight", "pass the --model")
    assert torch.equal(target.linear.weight, before)


def test_num_classes_mismatch_names_misshaped_key(tmp_path: Path) -> None:
    path = tmp_path / "c100.pt"
    torch.save(create_model("resnet20", num_classes=100).state_dict(), path)
    with pytest.raises(AmcError) as excinfo:
        load_checkpoint(create_model("resnet20"), path)
    assert_one_line(excinfo.value, "mis-shaped keys linear.weight (checkpoint [100, 64], model [10, 64])")


def test_garbage_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x13 this is not a torch file \xff" * 10)
    with pytest.raises(AmcError) as excinfo:
        read_checkpoint(path)
    assert_one_line(excinfo.value, "not a readable torch file")


def test_missing_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(AmcError) as excinfo:
        read_checkpoint(tmp_path / "absent.pt")
    assert_one_line(excinfo.value, "not found")


def test_nan_weight_raises_naming_key(tmp_path: Path) -> None:
    state = create_model("digits_cnn").state_dict()
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(AmcError) as excinfo:
        load_checkpoint(create_model("digits_cnn"), path)
    assert_one_line(excinfo.value, "conv2.weight")


def test_pickled_objects_in_a_checkpoint_are_never_unpickled(tmp_path: Path, monkeypatch) -> None:
    """A whole pickled model is refused with the fix named; a crafted pickle never runs its code."""
    whole = tmp_path / "whole.pt"
    torch.save({"model": create_model("digits_cnn"), "num_classes": 10}, whole)
    with pytest.raises(AmcError) as excinfo:
        read_checkpoint(whole)
    assert_one_line(excinfo.value, "pickled Python objects", "state_dict()")

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Exploit(str(marker))}, evil)
    with pytest.raises(AmcError, match="pickled Python objects"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_a_pickled_whole_model_loads_only_when_asked_in_so_many_words(tmp_path: Path, capsys) -> None:
    """`--unsafe-unpickle` (the CLI) / `unsafe_unpickling()` (Python) is the one way in; the refusal names it."""
    from conftest import assert_user_error

    from amc.cli import main
    from amc.models.checkpoint import unsafe_unpickling

    model = create_model("digits_cnn")
    whole = tmp_path / "whole.pt"
    torch.save({"model": model, "num_classes": 10}, whole)
    argv = ["eval", "--model", "digits_cnn", "--checkpoint", str(whole), "--dataset", "digits", "--json"]
    code = main(argv)
    assert_user_error(code, capsys.readouterr().err, "--unsafe-unpickle")
    assert main([*argv, "--unsafe-unpickle"]) == 0
    assert "accuracy" in capsys.readouterr().out
    with unsafe_unpickling():
        state, meta = read_checkpoint(whole)
    assert meta == {"num_classes": 10}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(AmcError, match="--unsafe-unpickle"):  # the switch ends with its block
        read_checkpoint(whole)


def test_unpickling_a_model_whose_class_is_not_importable_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """The class of a pickled model lives in the user's module: it imports from the working folder (where
    torch.save ran), and from anywhere else the refusal says how to make it importable."""
    import importlib
    import sys

    from conftest import assert_one_line

    from amc.models.checkpoint import unsafe_unpickling

    (tmp_path / "usernet.py").write_text("import torch.nn as nn\n\nclass UserNet(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("usernet")
    torch.save(module.UserNet(nn.Linear(3, 2)), tmp_path / "whole.pt")
    sys.modules.pop("usernet")
    sys.path.remove(str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    with unsafe_unpickling(), pytest.raises(AmcError) as excinfo:
        read_checkpoint(tmp_path / "whole.pt")
    assert_one_line(excinfo.value, "could not be unpickled", "PYTHONPATH")
    monkeypatch.chdir(tmp_path)
    with unsafe_unpickling():
        state, _ = read_checkpoint(tmp_path / "whole.pt")
    sys.modules.pop("usernet", None)
    assert set(state) == {"0.weight", "0.bias"}


class _Exploit:
    """Pickles as a call that creates a file: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
