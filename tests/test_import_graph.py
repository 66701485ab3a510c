"""The import direction of docs/ARCHITECTURE.md, read from the source (no module is imported): evaluation imports no
training, the training loop and its tasks do not import each other, and no package imports cli/ or demo/.

Every import counts, those inside functions too: a deferred import is still a dependency (it only hides a circle).
``python tests/test_import_graph.py`` prints which package imports which.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "guided_diffusers"
# Links resolved on first use through a module's __getattr__, kept as old public names (see docs/ARCHITECTURE.md).
LAZY_NAMES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (at the top or inside a function)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from . import x` names a submodule when one exists
                targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def _area(module: str) -> str:
    """The package part a module belongs to: ``training``, ``data``, ``publishing``..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def area_imports(skip_lazy: bool = True) -> dict[str, set[str]]:
    """Each subpackage (or top-level module) -> the others it imports."""
    areas: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_imports().items():
        for target in targets:
            if skip_lazy and (module, target) in LAZY_NAMES:
                continue
            if _area(target) != _area(module):
                areas[_area(module)].add(_area(target))
    return areas


def _cycles(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """The import circles among ``nodes`` (each found once, from its first node in a depth-first walk)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target not in nodes:
                continue
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(nodes):
        if node not in state:
            visit(node, [node])
    return found


def test_evaluation_imports_no_training():
    graph = module_imports()
    offending = {m: sorted(t for t in targets if _area(t) == "training") for m, targets in graph.items() if _area(m) == "evaluation"}
    assert not any(offending.values()), offending


def test_the_training_loop_and_its_tasks_do_not_import_each_other():
    graph = module_imports()
    trainer = "guided_diffusers.training.trainer"
    tasks = {"guided_diffusers.training.diffusion_task", "guided_diffusers.training.classifier_task"}
    assert tasks <= set(graph) and not graph[trainer] & tasks, graph[trainer]
    assert all(trainer in graph[task] for task in tasks)  # the tasks build on the loop's interface, one way
    training = {m for m in graph if _area(m) == "training" and m != "guided_diffusers.training"}
    assert _cycles(graph, training) == []


def test_the_package_follows_the_architecture_direction():
    areas = area_imports()
    assert not any({"cli", "demo"} & targets for area, targets in areas.items() if area not in ("cli", "demo")), dict(areas)
    for core in ("models", "schedulers"):  # the diffusers-level core imports nothing else of ours but the checks
        assert areas.get(core, set()) <= {"(root)", "checks"}, (core, areas.get(core))
    assert not areas.get("checks"), areas.get("checks")  # the number checks are a leaf
    assert "training" not in areas["conversion"] and "training" not in areas["pipelines"]
    assert "training" not in areas["evaluation"] and "conversion" not in areas["evaluation"]


if __name__ == "__main__":
    for area, targets in sorted(area_imports(skip_lazy=False).items()):
        print(f"{area:12s} -> {', '.join(sorted(targets))}")
