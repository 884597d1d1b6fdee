"""The house rules, read from the code's own imports (every import, the ones inside functions too).

    roof        orchestrator/   launcher, pools, cli, offline passes, metrics, autoscale, model registry
    experiments experiments/    the testbeds (task, corpus, base model)
    components  actors/ preprocess/ learner/  (and broker/, the wire format and streams, below them)
    floor       pope/           config, problems, datasets, prompts, units, passk, verify, models

An import runs down the list, never up; the floor imports no Ray; nothing imports itself in a circle.
bench/ and scripts/ stand on top and may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pope", "broker", "actors", "preprocess", "learner", "experiments", "orchestrator")
# what each package may import among the project's packages (besides itself)
ALLOWED = {
    "pope": set(),
    "broker": {"pope"},
    "actors": {"pope", "broker"},
    "preprocess": {"pope", "broker"},
    "learner": {"pope", "broker"},
    "experiments": {"pope"},
    "orchestrator": {"pope", "broker", "actors", "preprocess", "learner", "experiments"},
}
NO_RAY = ("pope", "broker", "experiments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pope import method` imports the module pope.method
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _raw_imports() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def test_no_import_runs_up_the_house():
    wrong = []
    for module, imported in _raw_imports().items():
        package = module.split(".")[0]
        for target in imported:
            top = target.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{module} imports {target}")
            if top in ("bench", "scripts", "tests"):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports that run up the house:\n" + "\n".join(sorted(wrong))


def test_floor_broker_and_experiments_import_no_ray():
    wrong = [
        f"{module} imports {target}"
        for module, imported in _raw_imports().items()
        if module.split(".")[0] in NO_RAY
        for target in imported
        if target.split(".")[0] == "ray"
    ]
    assert not wrong, "\n".join(sorted(wrong))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of imports met by a depth-first walk, as the path that closes it."""
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: a floor module that imports the roof, and a two-module circle, are found."""
    floor = tmp_path / "a.py"
    floor.write_text("def f():\n    from orchestrator.launcher import train\n    import ray\n")
    assert {"orchestrator.launcher", "orchestrator.launcher.train", "ray"} <= _imports(floor)
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def _names(path: Path) -> set[str]:
    """Every name ``path`` imports from a module (``from m import X`` gives X)."""
    tree = ast.parse(path.read_text(), str(path))
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_components_get_their_own_sections_not_the_whole_config():
    """Actors, workers and the learner are built from ``PopeConfig.for_*`` (their sections), so no
    component module takes the root config."""
    wrong = [
        str(p.relative_to(ROOT))
        for pkg in ("actors", "preprocess", "learner")
        for p in (ROOT / pkg).rglob("*.py")
        if "PopeConfig" in _names(p)
    ]
    assert not wrong, "components that take the whole PopeConfig: " + ", ".join(sorted(wrong))
    assert "PopeConfig" in _names(ROOT / "orchestrator" / "launcher.py")  # the check reads real imports
