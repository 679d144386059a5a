"""The package's shape: commands on top, one folder per stage below them, imports only downwards."""

import ast
import importlib
from pathlib import Path

import pytest
from helpers.runner import ROOT

PACKAGE = ROOT / "fer_exp"
COMMANDS = {"run", "evaluate", "predict", "ensemble", "compare", "story", "reproduce", "sync"}
# Higher imports lower, never the other way. A command's private helpers sit just under the commands.
LAYERS = [
    {"fer_exp", "fer_exp.config", "fer_exp.plots"},
    {"fer_exp.data", "fer_exp.tracking"},
    {"fer_exp.models"},
    {"fer_exp.sweeps"},
    {"fer_exp.training"},
    {"fer_exp.cli", "fer_exp.story_page", "fer_exp.differences"},
    {f"fer_exp.{c}" for c in COMMANDS},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer entry a module belongs to: its stage package, or itself at the top."""
    return ".".join(module.split(".")[:2])


def layer(module: str) -> int:
    (index,) = [i for i, names in enumerate(LAYERS) if unit(module) in names]
    return index


def imports() -> dict[str, set[str]]:
    """Every fer_exp module -> the fer_exp modules it imports, at the top or inside a function."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_exp"):
                # `from fer_exp.data import sources`: the submodule, when it is one
                found |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("fer_exp")}
        graph[name] = found - {name}
    return graph


def test_commands_sit_on_top_and_the_library_in_stage_folders():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    stages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert COMMANDS <= top and len(top) + 1 <= 14, sorted(top)
    assert {"data", "models", "training", "sweeps", "tracking"} <= stages


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = imports()
    upward = [
        (m, i) for m, found in graph.items() for i in found if unit(i) != unit(m) and layer(i) > layer(m)
    ]  # fmt: skip
    assert not upward, upward
    for module in graph:
        if module.split(".")[-1] in COMMANDS and unit(module) == module:
            assert not [m for m, found in graph.items() if module in found and m != module], f"{module} is imported"


def test_no_import_cycles():
    graph = imports()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert not cycles, cycles


@pytest.mark.parametrize("package", ["fer_exp.data", "fer_exp.models", "fer_exp.training", "fer_exp.sweeps"])
def test_a_stage_package_re_exports_the_names_its_callers_use(package):
    pkg = importlib.import_module(package)
    for name in pkg.__all__:  # a name moved or renamed in its module fails here
        assert getattr(pkg, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        pkg.nothing_here  # noqa: B018
