"""Nothing the user wrote is lost and every failure is one line: bad flags, --force, two writers, damaged
run folders, outputs that cannot be written, models that do not fit their data, damaged model files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line, assert_user_error, rows

from agents.config import SearchConfig
from agents.runfolder import RunFolder
from agents.search import run_search
from amc.cli import main
from amc.cli.common import output_lock
from amc.errors import AmcError
from amc.models.zoo import digits_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory) -> tuple[Path, Path]:
    """A uniform 50%-FLOPs policy for the digits CNN and the pruned-model file it gives (read only)."""
    root = tmp_path_factory.mktemp("digits_files")
    policy, pruned = root / "u.json", root / "p.pt"
    assert main(["baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "0.5",
                 "--out", str(policy)]) == 0
    assert main(["apply", "--model", "digits_cnn", "--checkpoint", str(digits_checkpoint()), "--dataset", "digits",
                 "--policy", str(policy), "--out", str(pruned)]) == 0
    return policy, pruned


# ---- every numeric flag of every command is checked when parsed -------------------------------------

DIGITS_APPLY = ["apply", "--model", "digits_cnn", "--dataset", "digits", "--policy", "p.json", "--out", "o.pt"]
BAD_FLAGS = {
    "train-agent": {
        "--seed": ["-1", "4294967296", "100000000000000000000", "nan"],
        "--episodes": ["0", "-1", "nan", "inf"],
        "--warmup": ["-1", "nan"],
        "--lbound": ["-0.1", "1", "nan", "inf", "1e30"],
        "--rbound": ["0", "-1", "1.5", "nan", "inf"],
        "--val-size": ["0", "-1", "nan"],
        "--target-flops": ["0", "-1", "1.5", "nan", "inf"],
        "--target-params": ["0", "nan"],
        "--target-latency": ["0", "inf"],
        "--latency-batch": ["0", "-1", "100000000000000000000", "nan"],
        "--device": ["banana", "cuda:x", "gpu"],
    },
    "baseline": {
        "--lbound": ["-1", "1", "nan", "inf"],
        "--episodes": ["0", "nan"],
        "--seed": ["-1", "100000000000000000000"],
        "--target-flops": ["0", "nan"],
    },
    "apply": {
        "--finetune-epochs": ["-1", "nan"],
        "--lr": ["0", "-1", "nan", "inf", "1e30"],
        "--batch-size": ["0", "-1", "nan"],
        "--weight-decay": ["-1", "nan", "inf", "1", "1e30"],
        "--label-smoothing": ["-1", "1", "nan"],
        "--distill-alpha": ["-1", "1.5", "nan", "inf"],
        "--threads": ["0", "-1", "100000000000000000000", "nan"],
        "--seed": ["-1", "100000000000000000000"],
        "--device": ["banana"],
        "--val-size": ["0"],
    },
    "finetune": {
        "--epochs": ["0", "-1", "nan"],
        "--lr": ["nan", "0"],
        "--weight-decay": ["nan", "1e30"],
        "--threads": ["0"],
        "--seed": ["-1"],
        "--batch-size": ["0"],
    },
    "eval": {"--seed": ["100000000000000000000", "-1"], "--val-size": ["0", "nan"]},
    "profile": {"--input-shape": ["0,8,8", "nan", "1,8"]},
}
BASE_ARGV = {
    "train-agent": ["train-agent", "--out", "run"],
    "baseline": ["baseline", "--model", "digits_cnn", "--input-shape", "1,8,8", "--target-flops", "0.5", "--out", "b.json"],
    "apply": DIGITS_APPLY + ["--finetune-epochs", "1"],
    "finetune": ["finetune", "--model", "m.pt", "--dataset", "digits", "--out", "f.pt"],
    "eval": ["eval", "--model", "digits_cnn", "--dataset", "digits", "--split", "val"],
    "profile": ["profile", "--model", "digits_cnn"],
}
CASES = [(cmd, flag, value) for cmd, flags in BAD_FLAGS.items() for flag, values in flags.items() for value in values]


@pytest.mark.parametrize(("command", "flag", "value"), CASES, ids=[f"{c}{f}={v}" for c, f, v in CASES])
def test_bad_flag_value_is_one_line_before_any_work(capsys, tmp_path, monkeypatch, command, flag, value):
    monkeypatch.chdir(tmp_path)
    argv = list(BASE_ARGV[command])
    if flag in argv:  # replace the base value (a budget flag of baseline)
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    started = time.monotonic()
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, flag)
    assert time.monotonic() - started < 5  # refused at parse time, not after a set-up
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("argv", [
    ["--lbound", "0.6", "--rbound", "0.5"],  # each in range, together contradictory
    ["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"],  # never silently the CPU
])
def test_contradictory_or_missing_settings_of_a_search_are_one_line(capsys, tmp_path, argv):
    code, _, err = run(capsys, "train-agent", "--episodes", "4", "--warmup", "2", "--out", tmp_path / "r", *argv)
    assert_user_error(code, err, argv[0])
    assert not (tmp_path / "r" / "config.json").exists()


# ---- --force removes only what amc wrote --------------------------------------------------------------

SEARCH = ["train-agent", "--episodes", "4", "--warmup", "2", "--no-progress"]


def user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("precious")
    (folder / "config.json").write_text('{"mine": true}')  # the user's own config.json
    (folder / "src").mkdir(exist_ok=True)
    (folder / "src" / "thesis.tex").write_text("x")
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [True, False])
def test_force_never_touches_a_folder_of_the_users(capsys, tmp_path, monkeypatch, force):
    mine = tmp_path / "myproject"
    before = user_files(mine)
    extra = ["--force"] if force else []
    code, _, err = run(capsys, *SEARCH, "--out", mine, *extra)
    assert_user_error(code, err, "amc did not write", "choose another --out")
    assert snapshot(mine) == before

    monkeypatch.chdir(mine)  # `--out .`: the current folder
    code, _, err = run(capsys, *SEARCH, "--out", ".", *extra)
    assert_user_error(code, err, "amc did not write")
    assert snapshot(mine) == before


def test_force_replaces_only_amcs_files_in_a_run_folder(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *SEARCH, "--out", out)[0] == 0
    (out / "my-analysis.ipynb").write_text("kept")  # the user added a file to the run folder
    old_log = (out / "episodes.csv").read_text()
    code, _, err = run(capsys, *SEARCH, "--seed", "1", "--out", out, "--force")
    assert code == 0, err
    assert (out / "my-analysis.ipynb").read_text() == "kept"
    assert (out / "episodes.csv").read_text() != old_log and json.loads((out / "config.json").read_text())["seed"] == 1


def test_out_that_is_a_file_is_kept(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, *SEARCH, "--out", afile, *extra)
        assert_user_error(code, err, "is a file")
        assert afile.read_text() == "mine"


# ---- one writer at a time ------------------------------------------------------------------------------

def test_a_second_search_on_a_locked_run_folder_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *SEARCH, "--out", out)[0] == 0
    before = snapshot(out)
    with RunFolder(out).locked():  # another process holds the folder (flock conflicts across open files)
        for extra in ([], ["--resume"], ["--force"]):
            code, _, err = run(capsys, *SEARCH, "--episodes", "6", "--out", out, *extra)
            assert code == 2 and "in use by another amc process" in err, err
        assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == before
    assert run(capsys, *SEARCH, "--episodes", "6", "--out", out, "--resume")[0] == 0  # free once the holder is done


def test_a_second_apply_on_one_output_is_refused(capsys, tmp_path, digits_files):
    policy, _ = digits_files
    out = tmp_path / "same.pt"
    apply = ["apply", "--model", "digits_cnn", "--checkpoint", digits_checkpoint(), "--dataset", "digits",
             "--policy", policy, "--out", out]
    with output_lock(out):
        code, _, err = run(capsys, *apply)
        assert code == 2 and "in use by another amc process" in err, err
        assert not out.exists()
    assert run(capsys, *apply)[0] == 0
    assert not (tmp_path / ".same.pt.lock").exists()  # the lock file goes with its holder


@pytest.mark.slow
def test_two_search_processes_on_one_run_folder(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "amc.cli", *SEARCH[:1], "--episodes", "300", "--warmup", "10", "--no-progress",
               "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (out / "episodes.csv").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        for extra in ([], ["--resume"], ["--force"]):
            second = subprocess.run(command + extra, capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert second.returncode == 2 and "in use by another amc process" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
    logged = [int(r["episode"]) for r in rows(out)]
    assert logged == list(range(1, len(logged) + 1))  # no duplicated or interleaved episodes


# ---- every damaged run folder resumes from its last whole checkpoint, or is refused with the fix --------

@pytest.fixture(scope="module")
def finished(digits_task, tmp_path_factory) -> tuple[SearchConfig, Path]:
    """A search cut at 6 of 8 episodes (to be resumed), and the uninterrupted 8-episode run to compare with."""
    root = tmp_path_factory.mktemp("damage")
    config = SearchConfig(checkpoint=str(digits_checkpoint()), budget_ratio=0.4, episodes=8, warmup=3,
                          out=str(root / "whole"))
    run_search(config, progress=False, task=digits_task)
    run_search(replace(config, episodes=6, out=str(root / "cut")), progress=False, task=digits_task)
    return config, root


def damaged_copy(finished, tmp_path, damage) -> SearchConfig:
    config, root = finished
    out = tmp_path / "run"
    shutil.copytree(root / "cut", out)
    damage(out)
    return replace(config, out=str(out))


def edit_row(path: Path, index: int, change) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = change(lines[index])
    path.write_text("".join(lines))


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


REFUSED = {
    "config-truncated": (lambda d: truncate(d / "config.json", 30), "config.json is damaged"),
    "config-null": (lambda d: (d / "config.json").write_text("null"), "config.json is damaged"),
    "config-garbled": (lambda d: (d / "config.json").write_bytes(b"\xe8\xff\x00" * 50), "config.json is damaged"),
    "log-deleted": (lambda d: (d / "episodes.csv").unlink(), "holds 0 whole episodes"),
    "log-rows-removed": (lambda d: (d / "episodes.csv").write_text(
        "".join((d / "episodes.csv").read_text().splitlines(keepends=True)[:1] +
                (d / "episodes.csv").read_text().splitlines(keepends=True)[3:])), "whole episodes"),
    "log-garbled": (lambda d: (d / "episodes.csv").write_bytes(b"\xaf\xff" * 100), "episodes.csv is damaged"),
    "log-extra-field": (lambda d: edit_row(d / "episodes.csv", 2, lambda line: line.replace("\n", ",x\n")),
                        "whole episodes"),
    "state-truncated": (lambda d: truncate(d / "checkpoint" / "state.pkl"), "no checkpoint loads"),
    "agent-garbled": (lambda d: (d / "checkpoint" / "agent.zip").write_bytes(b"PK\x03\x04garbage"), "no checkpoint loads"),
    "replay-deleted": (lambda d: (d / "checkpoint" / "replay.pkl").unlink(), "no checkpoint loads"),
    "checkpoint-deleted": (lambda d: shutil.rmtree(d / "checkpoint"), "no checkpoint/ folder"),
    "checkpoint-is-a-file": (lambda d: (shutil.rmtree(d / "checkpoint"), (d / "checkpoint").write_text("x")),
                             "no checkpoint/ folder"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_damaged_run_folder_is_refused_with_the_fix_and_force_restarts_it(digits_task, finished, tmp_path, case):
    damage, message = REFUSED[case]
    config = damaged_copy(finished, tmp_path, damage)
    before = snapshot(Path(config.out))
    with pytest.raises(AmcError) as excinfo:
        run_search(config, resume=True, progress=False, task=digits_task)
    assert_one_line(excinfo.value, message, "--force")
    after = snapshot(Path(config.out))
    assert {k: v for k, v in after.items() if k != ".lock"} == before  # the refusal changed nothing
    result = run_search(config, force=True, progress=False, task=digits_task)  # the fix it names works
    assert result.episodes == 8


def test_torn_checkpoint_resumes_from_the_previous_one(digits_task, finished, tmp_path):
    def damage(out: Path) -> None:
        shutil.copytree(out / "checkpoint", out / "checkpoint.old")  # the whole one a swap leaves behind
        truncate(out / "checkpoint" / "state.pkl")

    config = damaged_copy(finished, tmp_path, damage)
    with pytest.warns(UserWarning, match="resuming from checkpoint.old"):
        run_search(config, resume=True, progress=False, task=digits_task)
    assert rows(Path(config.out)) == rows(finished[1] / "whole")


def test_a_run_killed_during_its_set_up_resumes_from_the_start(digits_task, finished, tmp_path):
    config = damaged_copy(finished, tmp_path, lambda d: [shutil.rmtree(d / "checkpoint"), (d / "episodes.csv").unlink()])
    run_search(config, resume=True, progress=False, task=digits_task)
    assert rows(Path(config.out)) == rows(finished[1] / "whole")


def test_damaged_latency_table_is_measured_again(capsys, tmp_path):
    out = tmp_path / "lat"
    code, printed, _ = run(capsys, *SEARCH, "--target-latency", "0.9", "--out", out)
    assert code == 0
    measured = json.loads((out / "best_policy.json").read_text())["latency_measured"]
    assert f"latency {100 * measured:.1f}% (table" in printed  # the summary says what the budget was met at
    (out / "latency.json").write_bytes(b"\x00\xffgarbage")
    code, _, err = run(capsys, *SEARCH, "--episodes", "6", "--target-latency", "0.9", "--out", out, "--resume")
    assert code == 0, err
    assert "latency.json is damaged" in err and json.loads((out / "latency.json").read_text())["dense_ms"] > 0


# ---- outputs, models and files ------------------------------------------------------------------------

def test_unwritable_outputs_are_refused_before_any_work(capsys, tmp_path, digits_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # nothing can be created under a file, for any user (root included)
    code, _, err = run(capsys, *SEARCH, "--out", blocker / "run")
    assert_user_error(code, err, "cannot write")
    policy, _ = digits_files
    started = time.monotonic()
    code, _, err = run(capsys, "apply", "--model", "digits_cnn", "--checkpoint", digits_checkpoint(), "--dataset",
                       "digits", "--policy", policy, "--finetune-epochs", "3", "--out", blocker / "x.pt")
    assert_user_error(code, err, "cannot write")
    assert time.monotonic() - started < 20  # found before the fine-tuning, not after its first epoch


@pytest.mark.parametrize(("argv", "message"), [
    (["train-agent", "--dataset", "synthetic"], "fails on dataset synthetic's images"),
    (["train-agent", "--model", "FIVE", "--dataset", "digits"], "has 5 outputs but digits has 10 classes"),
    (["baseline", "--model", "resnet20", "--dataset", "digits", "--method", "dp", "--target-flops", "0.5"],
     "fails on dataset digits's images"),
])
def test_model_and_data_that_do_not_fit_are_one_line(capsys, tmp_path, argv, message):
    five = tmp_path / "five.py"
    five.write_text("import torch.nn as nn\n\ndef f():\n    return nn.Sequential(nn.Conv2d(1, 8, 3), "
                    "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))\n")
    argv = [a.replace("FIVE", f"{five}:f") for a in argv]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "o")
    assert_user_error(code, err, message)


def test_model_files_by_content_and_damaged_weights(capsys, tmp_path, digits_files):
    policy, _ = digits_files
    pth = tmp_path / "model.pth"
    assert run(capsys, "apply", "--model", "digits_cnn", "--checkpoint", digits_checkpoint(), "--dataset", "digits",
               "--policy", policy, "--out", pth)[0] == 0
    code, out, err = run(capsys, "eval", "--model", pth, "--dataset", "digits", "--json")
    assert code == 0, err  # any suffix: the file says what it is
    state = torch.load(pth, weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    for argv in (["eval", "--model", tmp_path / "nan.pt", "--dataset", "digits"],
                 ["finetune", "--model", tmp_path / "nan.pt", "--dataset", "digits", "--epochs", "1", "--out",
                  tmp_path / "f.pt"]):
        code, _, err = run(capsys, *argv)
        assert_user_error(code, err, "NaN or Inf", key)


def test_apply_without_checkpoint_warns_and_is_reproducible(capsys, tmp_path, digits_files):
    policy, _ = digits_files
    made = []
    for name in ("a.pt", "b.pt"):
        code, _, err = run(capsys, "apply", "--model", "digits_cnn", "--dataset", "digits", "--policy", policy,
                           "--out", tmp_path / name)
        assert code == 0 and "no --checkpoint" in err, err
        made.append(torch.load(tmp_path / name, weights_only=True)["state_dict"])
    assert all(torch.equal(made[0][k], made[1][k]) for k in made[0])


def test_finetuning_restarts_with_force_whatever_was_left(capsys, tmp_path, digits_files):
    policy, pruned = digits_files
    tune = ["finetune", "--model", pruned, "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "ft.pt"]
    assert run(capsys, *tune)[0] == 0
    code, _, err = run(capsys, *tune)
    assert_user_error(code, err, "--force", "--resume")
    assert run(capsys, *tune, "--force")[0] == 0
    (tmp_path / "ft.last.pt").unlink()  # killed between the two writes of epoch 1
    code, _, err = run(capsys, *tune, "--resume")
    assert_user_error(code, err, "--force")  # the way out is named: no circle
    assert run(capsys, *tune, "--force")[0] == 0


def test_rare_inputs_are_one_line(capsys, tmp_path, digits_files):
    policy, pruned = digits_files
    (tmp_path / "half.pt").write_bytes(pruned.read_bytes()[: pruned.stat().st_size // 2])
    edited = torch.load(pruned, weights_only=True)
    edited["base"] = "resnet20"
    torch.save(edited, tmp_path / "edited.pt")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "linear.py").write_text("import torch.nn as nn\n\ndef f():\n    return nn.Sequential(nn.Flatten(), "
                                        "nn.Linear(64, 10))\n")
    loop = tmp_path / "loop"
    (loop / "train" / "a").mkdir(parents=True)
    (loop / "test" / "a").mkdir(parents=True)
    (loop / "train" / "a" / "self").symlink_to(loop / "train" / "a")
    cases = [
        (["eval", "--model", tmp_path / "half.pt", "--dataset", "digits"], "damaged torch file"),
        (["eval", "--model", tmp_path / "edited.pt", "--dataset", "digits"], "prune the model again"),
        (["apply", "--model", "digits_cnn", "--checkpoint", digits_checkpoint(), "--dataset", "digits", "--policy",
          tmp_path / "deep.json", "--out", tmp_path / "x.pt"], "nested too deeply"),
        ([*SEARCH, "--model", f"{tmp_path / 'exits.py'}:f", "--dataset", "digits", "--out", tmp_path / "r1"], "failed"),
        (["baseline", "--model", f"{tmp_path / 'linear.py'}:f", "--input-shape", "1,8,8", "--target-flops", "0.5",
          "--out", tmp_path / "l.json"], "no prunable channel group"),
        ([*SEARCH, "--model", "torch.nn:Identity", "--dataset", "synthetic", "--out", tmp_path / "r2"], "class logits"),
        # the link loop is followed once, then the folder is what it is: a class without images
        (["eval", "--model", "digits_cnn", "--dataset", "imagefolder", "--data-dir", loop], "has no images"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_user_error(code, err, message)


class _Payload:
    """A pickle that creates a file when it is unpickled: what a hostile agent archive would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_an_agent_archive_is_read_without_unpickling(digits_task, finished, tmp_path):
    """`apply --agent` reads only the archive's network weights (torch's safe loader): a pickled payload in
    its data never runs, and the policy is the one the archive's actor gives."""
    import base64
    import pickle
    import zipfile

    from agents.search import policy_from_agent
    from amc.engine.budget import Budget

    run = tmp_path / "agent-run"
    shutil.copytree(finished[1] / "whole", run)
    want, _ = policy_from_agent(run / "agent.zip", digits_task, Budget("flops", 0.5))
    marker = tmp_path / "code-ran"
    with zipfile.ZipFile(run / "agent.zip") as z:
        entries = {name: z.read(name) for name in z.namelist()}
    data = json.loads(entries["data"])
    data["lr_schedule"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(run / "agent.zip", "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    got, _ = policy_from_agent(run / "agent.zip", digits_task, Budget("flops", 0.5))
    assert not marker.exists()
    assert np.array_equal(got, want)
    from agents.ddpg import AGENTS
    AGENTS["ddpg"].load(run / "agent.zip", device="cpu")  # the unsafe path this avoids
    assert marker.exists()

    weights = torch.load(io.BytesIO(entries["policy.pth"]), weights_only=True)
    entries["policy.pth"] = _saved({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                    for k, v in weights.items()})
    with zipfile.ZipFile(run / "agent.zip", "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    with pytest.raises(AmcError) as excinfo:
        policy_from_agent(run / "agent.zip", digits_task, Budget("flops", 0.5))
    assert_one_line(excinfo.value, "NaN or Inf weights")


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_an_agent_whose_run_config_is_damaged_is_one_line(digits_task, finished, tmp_path):
    from agents.search import policy_from_agent
    from amc.engine.budget import Budget

    run = tmp_path / "agent-run"
    shutil.copytree(finished[1] / "whole", run)
    (run / "config.json").write_bytes(b"\xe8\xff" * 20)
    with pytest.raises(AmcError) as excinfo:
        policy_from_agent(run / "agent.zip", digits_task, Budget("flops", 0.5))
    assert_one_line(excinfo.value, "config.json is damaged")
