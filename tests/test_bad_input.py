"""Every bad input a user can give: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from amc.cli import main
from amc.models import create_model
from amc.models.zoo import digits_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = digits_checkpoint()
    state = torch.load(good, weights_only=False)
    nan = {**state, "state_dict": {**state["state_dict"]}}
    nan["state_dict"]["fc1.weight"] = nan["state_dict"]["fc1.weight"].clone()
    nan["state_dict"]["fc1.weight"][0, 0] = float("nan")
    torch.save(nan, root / "nan.pt")
    torch.save({"state_dict": create_model("resnet20").state_dict()}, root / "resnet20.pt")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    (root / "not_json.json").write_text("{ this is not json")
    (root / "old_format.json").write_text(json.dumps({"format": "amc-policy/0", "model": "digits_cnn", "groups": []}))
    (root / "wrong_groups.json").write_text(json.dumps({
        "format": "amc-policy/1", "model": "digits_cnn",
        "groups": [{"name": "layer9.conv", "channels": 16, "keep": 8}]}))
    (root / "bad_factory.py").write_text("def factory():\n    raise RuntimeError('boom')\n")
    for split in ("train", "test"):
        (root / "empty" / split).mkdir(parents=True)
        for cls in ("a", "b"):
            folder = root / "mixed" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                size = (16, 16) if (split, cls, i) == ("train", "b", 2) else (32, 32)
                Image.new("RGB", size, (i * 40, 0, 0)).save(folder / f"{i}.png")
    return {"root": root, "good": good}


def cases(f: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    root, good = f["root"], str(f["good"])
    digits = ["--model", "digits_cnn", "--checkpoint", good, "--dataset", "digits"]
    return [
        ("missing checkpoint", ["eval", "--model", "digits_cnn", "--checkpoint", str(root / "nope.pt"),
                                "--dataset", "digits"], "nope.pt"),
        ("unreadable checkpoint", ["eval", "--model", "digits_cnn", "--checkpoint", str(root / "garbage.pt"),
                                   "--dataset", "digits"], "garbage.pt"),
        ("checkpoint of another architecture", ["eval", "--model", "digits_cnn", "--checkpoint",
                                                str(root / "resnet20.pt"), "--dataset", "digits"], "missing keys"),
        ("unknown model", ["eval", "--model", "resnet57", "--dataset", "digits"], "resnet57"),
        ("factory that fails", ["eval", "--model", f"{root / 'bad_factory.py'}:factory", "--dataset", "digits"],
         "boom"),
        ("missing data folder", ["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir",
                                 str(root / "nowhere")], "nowhere"),
        ("empty data folder", ["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir",
                               str(root / "empty")], "empty"),
        ("images of the wrong size", ["eval", "--model", "resnet20", "--dataset", "imagefolder", "--data-dir",
                                      str(root / "mixed")], "2.png"),
        ("images of the wrong mode for the model", ["eval", "--model", "resnet20", "--dataset", "digits"],
         "shape"),
        ("budget above 1", ["baseline", *digits, "--target-flops", "1.5", "--out", str(root / "p.json")], "(0, 1]"),
        ("budget of 0", ["baseline", *digits, "--target-flops", "0", "--out", str(root / "p.json")], "(0, 1]"),
        ("budget the lower bound cannot reach", ["train-agent", *digits, "--target-flops", "0.01", "--out",
                                                 str(root / "run-unreachable")], "at least"),
        ("policy that is not JSON", ["apply", *digits, "--policy", str(root / "not_json.json"), "--out",
                                     str(root / "x.pt")], "JSON"),
        ("policy of another format version", ["apply", *digits, "--policy", str(root / "old_format.json"), "--out",
                                              str(root / "x.pt")], "amc-policy/1"),
        ("policy naming groups the model lacks", ["apply", *digits, "--policy", str(root / "wrong_groups.json"),
                                                  "--out", str(root / "x.pt")], "layer9.conv"),
        ("NaN in the weights", ["eval", "--model", "digits_cnn", "--checkpoint", str(root / "nan.pt"),
                                "--dataset", "digits"], "fc1.weight"),
        ("fewer images than --val-size", ["train-agent", *digits, "--val-size", "5000", "--out",
                                          str(root / "run-val")], "--val-size"),
        ("unknown agent file", ["apply", *digits, "--agent", str(root / "none.zip"), "--target-flops", "0.5",
                                "--out", str(root / "y.pt")], "none.zip"),
        ("--image-size without data", ["profile", "--model", "resnet20", "--image-size", "64"], "--dataset imagefolder"),
        ("--input-shape with data", ["profile", "--model", "resnet20", "--input-shape", "3,64,64", "--dataset",
                                     "imagefolder", "--data-dir", str(root / "mixed"), "--image-size", "32"],
         "drop --input-shape"),
        ("a budget only --channel-round puts out of reach", ["baseline", "--model", "resnet20", "--target-flops", "0.1",
                                                             "--channel-round", "8", "--out", str(root / "r.json")],
         "--channel-round 8"),
    ]


CASE_NAMES = [c[0] for c in cases({"root": Path("."), "good": Path(".")})]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_line(files, capsys, name):
    argv, needle = next((a, n) for c, a, n in cases(files) if c == name)
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("amc: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert needle in errors[0], err
    assert "Traceback" not in err


def test_existing_run_folder_is_kept(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train-agent", "--episodes", "4", "--warmup", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_existing_out_file_is_kept(files, capsys, tmp_path):
    out = tmp_path / "policy.json"
    out.write_text("mine")
    code = main(["baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "0.5",
                 "--out", str(out)])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_debug_shows_the_traceback():
    from amc.errors import AmcError

    with pytest.raises(AmcError):
        main(["eval", "--model", "resnet57", "--dataset", "digits", "--debug"])


def test_workers_without_image_files_is_a_warning(files, capsys, tmp_path):
    """`--workers` only decodes files read with --image-size: a run without it says the flag does nothing."""
    model = tmp_path / "p.pt"
    assert main(["apply", "--model", "digits_cnn", "--checkpoint", str(files["good"]), "--dataset", "digits",
                "--out", str(model), "--policy", str(_uniform(tmp_path))]) == 0
    code = main(["finetune", "--model", str(model), "--dataset", "digits", "--epochs", "1", "--workers", "2",
                "--out", str(tmp_path / "f.pt")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "amc: warning: --workers decodes image files read with --image-size" in err


def _uniform(tmp_path: Path) -> Path:
    path = tmp_path / "u.json"
    assert main(["baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "0.5",
                 "--out", str(path)]) == 0
    return path


def test_a_run_refused_during_its_set_up_leaves_nothing_behind(files, capsys, tmp_path):
    digits = ["train-agent", "--model", "digits_cnn", "--checkpoint", str(files["good"]), "--dataset", "digits",
              "--episodes", "4", "--warmup", "2", "--no-progress", "--target-flops", "0.01"]
    assert main([*digits, "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert main([*digits, "--out", str(mine)]) == 2
    assert "at least" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir() if p.name != ".lock") == ["notes.txt"]
