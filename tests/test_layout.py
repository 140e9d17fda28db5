"""The package layout's rules (see amc/__init__.py and the README's "How it works"): import layering, lazy
public names, a command line that answers without loading torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import amc

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(folder: str, allowed: callable) -> dict[str, list[str]]:
    bad = {}
    for path in files(folder):
        wrong = sorted(m for m in imports(path) if not allowed(m))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    return bad


def top(module: str) -> str:
    return module.split(".")[0]


def test_engine_imports_only_torch_torch_pruning_numpy_and_itself():
    def allowed(m: str) -> bool:
        return (top(m) in STDLIB | {"torch", "torch_pruning", "numpy"}
                or m == "amc.errors" or m == "amc.engine" or m.startswith("amc.engine."))

    assert offending("amc/engine", allowed) == {}


def test_data_is_the_base_layer():
    def allowed(m: str) -> bool:
        return top(m) != "amc" or m in ("amc.errors", "amc.fileio", "amc.data") or m.startswith("amc.data.")

    assert offending("amc/data", lambda m: allowed(m) and top(m) not in ("agents", "envs")) == {}


def test_models_know_no_reward_apply_training_or_cli():
    forbidden = ("amc.reward", "amc.apply", "amc.train", "amc.cli", "agents", "envs")
    assert offending("amc/models", lambda m: not m.startswith(forbidden)) == {}


def test_only_the_cli_wires_agents_and_envs_into_amc():
    bad = {p: ms for p, ms in offending("amc", lambda m: top(m) not in ("agents", "envs")).items()
           if not p.startswith("amc/cli/")}
    assert bad == {}


def test_envs_never_import_agents():
    assert offending("envs", lambda m: top(m) != "agents") == {}


@pytest.mark.parametrize("name", amc.__all__)
def test_lazy_public_names_resolve(name):
    assert getattr(amc, name) is not None
    assert name in dir(amc) or name in amc.__all__


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        amc.no_such_thing  # noqa: B018


@pytest.mark.parametrize("argv", [["--help"], ["train-agent", "--help"], ["apply", "--help"],
                                  ["train-agent", "--episodes", "many"], ["eval", "--dataset", "mnist"]])
def test_cli_answers_help_and_argument_errors_without_torch(argv):
    code = ("import sys\nfrom amc.cli import main\ncode = main(%r)\n"
            "assert 'torch' not in sys.modules and 'stable_baselines3' not in sys.modules, 'heavy import'\n"
            "sys.exit(code)" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == (0 if argv[-1] == "--help" else 2), done.stderr
    assert "heavy import" not in done.stderr


def test_help_shows_defaults_from_the_code():
    from agents.config import SearchConfig

    done = subprocess.run([sys.executable, "-m", "amc.cli", "train-agent", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    text = " ".join(done.stdout.split())
    assert f"episodes in all (default {SearchConfig.episodes})" in text
    assert "--out DIR" in text and "50% FLOPs" in text and "%%" not in text


def test_cli_export_choices_are_the_exporters():
    from amc.cli.finetune import EXPORT_FORMATS
    from amc.export import EXPORT_FORMATS as EXPORTER_FORMATS

    assert EXPORT_FORMATS == EXPORTER_FORMATS


def test_agent_names_map_to_classes():
    from agents.config import ALGORITHMS
    from agents.ddpg import AGENTS

    assert tuple(AGENTS) == ALGORITHMS
