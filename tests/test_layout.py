"""The house rules of the source tree: one package per stage, imports pointing down only.

Rooms, from the bottom: `core` (errors, records, config engine, models, checkpoints), `text`
and `sandbox` side by side (neither imports the other), `tasks`, `rewards`, `rollout`, `train`
(what trainers share), `eval`, then the stages (`grpo` and `sft` side by side, `sample`,
`distill`, `pipeline`, `serve`) and the entry points on top. A module may import its own room
and rooms below it; every import counts (function-level ones and those under TYPE_CHECKING
too), so no cycle can hide behind a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "r1lab"

RANKS = {
    "core": 0,
    "text": 1,
    "sandbox": 1,  # runs model-written code; the code tasks grade with it
    "tasks": 2,
    "rewards": 3,
    "rollout": 4,
    "train": 5,
    "eval": 6,
    "grpo": 7,
    "sft": 7,
    "sample": 8,
    "distill": 9,
    "pipeline": 10,
    "serve": 10,  # serving and chatting: rollout engines, text formats, model loading
    "cli": 11,
    "__main__": 12,
    "config": 12,  # kept import paths for scripts: `r1lab.config.build_config`
    "models": 12,  # `r1lab.models.load_model`
}
ARGUMENT_TABLES = {"build_parser"}  # plain argparse tables: long, and flat by nature


def module_name(path: Path) -> str:
    parts = ("r1lab", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def room(module: str) -> str | None:
    """The top-level package (or module) under r1lab; None for r1lab itself (the version)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(module: str) -> set[str]:
    """Every r1lab module `module` imports, resolved to modules (a name imported from a
    package is the submodule when there is one, else the package)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("r1lab")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("r1lab"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    unknown = found - set(MODULES)
    assert not unknown, f"{module} imports modules that do not exist: {unknown}"
    return found - {module}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_room_has_a_rank():
    rooms = {room(m) for m in MODULES} - {None}
    assert rooms <= set(RANKS), f"rooms without a rank: {rooms - set(RANKS)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    here = room(module)
    upward = [
        target
        for target in GRAPH[module]
        if room(target) is not None
        and room(target) != here
        and (here is None or RANKS[room(target)] >= RANKS[here])
    ]
    assert not upward, f"{module} ({here}) imports upward or sideways: {upward}"


def test_no_import_cycles():
    """Depth-first search for a back edge anywhere in the module graph."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_stay_small(module):
    """Files under 400 lines, functions under 60 (argument tables aside)."""
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= 400, f"{module} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if node.name not in ARGUMENT_TABLES:
                assert length <= 60, f"{module}.{node.name} is {length} lines"


def test_cycle_detection_catches_a_cycle(monkeypatch):
    """The cycle test can fail: a planted back edge is found."""
    monkeypatch.setitem(GRAPH, "r1lab.core.errors", GRAPH["r1lab.core.errors"] | {"r1lab.cli"})
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def test_import_paths_of_user_scripts_still_work():
    """Reward plugins and scripts written before the move import these; they stay."""
    from r1lab.config import build_config
    from r1lab.core.models import load_model as core_load_model
    from r1lab.grpo.config import build_config as grpo_build_config
    from r1lab.models import load_model
    from r1lab.rewards import RewardInputs, register_reward
    from r1lab.rewards.registry import RewardInputs as registry_inputs
    from r1lab.tasks import make_task

    assert build_config is grpo_build_config and load_model is core_load_model
    assert RewardInputs is registry_inputs and callable(register_reward)
    assert make_task("arith").examples("train", limit=1)
