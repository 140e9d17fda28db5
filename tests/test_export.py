"""Model export (`amc.export`): the torch.export program and ONNX files, their dynamic batch axis, running
them without amc, atomic replacement of the target, and the errors a user can fix."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from amc.errors import AmcError
from amc.export import EXPORT_FORMATS, ONNX_OPSET, export, export_onnx, export_program
from amc.models import create_model

REPO = Path(__file__).resolve().parents[1]
DIGITS_SHAPE = (1, 8, 8)
CIFAR_SHAPE = (3, 32, 32)


def with_bn_statistics(name: str, input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """`create_model(name)` in train mode with non-trivial BatchNorm running statistics (so that folding
    BatchNorm into the convs is exercised by the output comparisons)."""
    torch.manual_seed(seed)
    model = create_model(name).train()
    with torch.no_grad():
        for _ in range(3):
            model(2.0 * torch.randn(16, *input_shape) + 0.5)
    return model


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model`'s eval-mode output for `x`, computed on a copy (the caller's model keeps its mode)."""
    with torch.no_grad():
        return copy.deepcopy(model).eval()(x)


class DataDependent(nn.Module):
    """Branches on a tensor value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class FixedBatch(nn.Module):
    """Reshapes to a hard-coded batch of 2: the batch dimension cannot stay dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 64))


@pytest.fixture(scope="module")
def digits() -> nn.Module:
    return with_bn_statistics("digits_cnn", DIGITS_SHAPE)


def no_torch_deprecations(caught: list[warnings.WarningMessage]) -> None:
    bad = [f"{w.category.__name__}: {w.message}" for w in caught
           if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not bad, bad


def test_export_formats_and_paths(digits, tmp_path: Path) -> None:
    assert EXPORT_FORMATS == ("program", "onnx", "torchscript")
    before = copy.deepcopy(digits.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = export(digits, DIGITS_SHAPE, tmp_path / "run" / "model.pt", "program")
    no_torch_deprecations(caught)
    assert written == tmp_path / "run" / "model.pt2" and written.is_file()
    assert sorted(p.name for p in written.parent.iterdir()) == ["model.pt2"]  # no temporary file left
    assert digits.training  # the caller's model keeps its mode and weights
    assert all(torch.equal(before[k], v) for k, v in digits.state_dict().items())

    with pytest.raises(AmcError, match="unknown export format 'tflite'; choose one of program, onnx, torchscript"):
        export(digits, DIGITS_SHAPE, tmp_path / "model.pt", "tflite")
    with pytest.raises(AmcError, match="would overwrite"):
        export(digits, DIGITS_SHAPE, tmp_path / "model.pt2", "program")


def test_program_runs_without_amc_for_any_batch_size(digits, tmp_path: Path) -> None:
    path = export(digits, DIGITS_SHAPE, tmp_path / "model.pt", "program")
    xs = [torch.randn(1, *DIGITS_SHAPE), torch.randn(3, *DIGITS_SHAPE)]
    torch.save(xs, tmp_path / "xs.pt")
    # A fresh interpreter without the repository on sys.path, in which amc cannot be imported.
    code = textwrap.dedent(f"""
        import sys
        sys.path = [p for p in sys.path if p and not p.startswith({str(REPO)!r})]
        sys.modules["amc"] = None
        try:
            import amc
        except ImportError:
            pass
        else:
            raise SystemExit("amc is importable")
        import torch
        torch.set_num_threads(1)
        module = torch.export.load({str(path)!r}).module()
        xs = torch.load({str(tmp_path / 'xs.pt')!r})
        with torch.no_grad():
            torch.save([module(x) for x in xs], {str(tmp_path / 'ys.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ys = torch.load(tmp_path / "ys.pt")
    for x, y in zip(xs, ys):
        assert y.shape == (len(x), 10)
        assert torch.allclose(y, reference(digits, x), atol=1e-5)


def test_onnx_runs_in_onnxruntime_for_batch_1_and_4(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = with_bn_statistics("resnet20", CIFAR_SHAPE)  # residual blocks with zero-padded shortcuts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export(model, CIFAR_SHAPE, tmp_path / "model.pt", "onnx")
    no_torch_deprecations(caught)
    assert path == tmp_path / "model.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one file: no external weights

    graph = onnx.load(str(path))
    assert {(o.domain, o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {("", ONNX_OPSET)}
    assert ONNX_OPSET >= 18
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = torch.randn(batch, *CIFAR_SHAPE)
        (y,) = session.run(None, {"input": x.numpy()})
        assert y.shape == (batch, 10)
        assert torch.allclose(torch.from_numpy(y), reference(model, x), atol=1e-4)


def test_export_onnx_writes_to_the_given_path(digits, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = tmp_path / "deploy" / "digits.onnx"
    export_onnx(digits, DIGITS_SHAPE, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.onnx"]


@pytest.mark.parametrize("kind", ["program", "onnx"])  # tracing (torchscript) records one branch: torch's own limit
@pytest.mark.parametrize(("model", "problem"), [(DataDependent(), "data-dependent control flow"),
                                                 (FixedBatch(), "fixes the batch size")],
                         ids=["data_dependent", "fixed_batch"])
def test_failed_export_is_one_line_and_keeps_the_old_file(kind: str, model: nn.Module, problem: str,
                                                          tmp_path: Path) -> None:
    if kind == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
    target = tmp_path / f"model.{'pt2' if kind == 'program' else 'onnx'}"
    target.write_bytes(b"old export")
    with pytest.raises(AmcError, match=problem) as info:
        export(model, (1, 8, 8), tmp_path / "model.pt", kind)
    message = str(info.value)
    assert "\n" not in message and type(model).__name__ in message and "state-dict checkpoint" in message
    assert target.read_bytes() == b"old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left


def test_export_program_writes_to_the_given_path(digits, tmp_path: Path) -> None:
    path = tmp_path / "exported.pt2"
    path.write_bytes(b"old export")
    export_program(digits, DIGITS_SHAPE, path)
    x = torch.randn(2, *DIGITS_SHAPE)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(path).module()(x), reference(digits, x), atol=1e-5)


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_onnx_export_without_its_packages_is_a_one_line_error(digits, tmp_path: Path, monkeypatch,
                                                               package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` fail
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old export")
    with pytest.raises(AmcError, match=rf"ONNX export needs .*{package}.*: pip install 'amc\[onnx\]'") as info:
        export_onnx(digits, DIGITS_SHAPE, path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"old export"


def test_torchscript_is_kept_for_deployments_that_need_it(tmp_path):
    """The legacy format still works, with amc's one-line deprecation notice and no torch warnings."""
    import warnings

    from amc.export import export
    from amc.models import create_model

    model = create_model("digits_cnn").eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export(model, (1, 8, 8), tmp_path / "m.pt", "torchscript")
    assert path.name == "m.torchscript.pt"
    assert [str(w.message) for w in caught if w.category is not UserWarning] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # loading TorchScript warns too: torch's, not amc's
        loaded = torch.jit.load(str(path))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)
