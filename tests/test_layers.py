"""The package's architecture, kept: subpackages in layers, no import cycles, TensorFlow only
where training happens. Imports are read from the source with ast, those inside functions
included (they run too, only later); imports under `if TYPE_CHECKING:` are type hints and
never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fercli
import fercli.web

PACKAGE = Path(fercli.__file__).resolve().parent

# Each subpackage's layer: a module may import its own layer's modules and lower layers'.
LAYERS = {"core": 0, "media": 1, "faces": 2, "data": 3, "learn": 4, "infer": 4}
TOP = 5  # api, cli, web and the package itself
# Imports that a layer may not make, lower layers aside.
FORBIDDEN = {
    "core": {"cv2", "dlib", "tensorflow", "keras"},
    "media": {"dlib", "tensorflow", "keras"},
    "faces": {"tensorflow", "keras"},
    "data": {"tensorflow", "keras"},
    # The predict path: a NumPy forward pass, never TensorFlow, and nothing of training or
    # datasets.
    "infer": {"tensorflow", "keras", "fercli.learn", "fercli.data"},
    "web": {"tensorflow", "keras", "fercli.learn", "fercli.data", "fercli.cli", "fercli.api"},
    "api": {"fercli.cli", "fercli.web"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imported(path: Path) -> set[str]:
    """The absolute names of everything a module imports at run time, at any depth."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _type_checking(node)
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {other for other in imported(path) if other in MODULES and other != name}
    for name, path in MODULES.items()
}


def layer_of(name: str) -> tuple[str, int]:
    parts = name.split(".")
    room = parts[1] if len(parts) > 1 else ""
    return room, LAYERS.get(room, TOP)


def test_the_rooms_are_the_ones_the_table_names():
    rooms = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert rooms == set(LAYERS) | {"cli", "web"}
    loose = {path.name for path in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "api.py"}


def test_no_module_imports_a_higher_layer():
    wrong = []
    for name, targets in GRAPH.items():
        room, level = layer_of(name)
        for target in targets:
            target_room, target_level = layer_of(target)
            if target_level > level and not (room == target_room):
                wrong.append(f"{name} -> {target}")
    assert not wrong


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_forbidden_imports(room):
    prefix = "fercli.api" if room == "api" else f"fercli.{room}"
    wrong = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name == prefix or name.startswith(prefix + ".")
        for target in imported(path)
        for banned in FORBIDDEN[room]
        if target == banned or target.startswith(banned + ".")
    ]
    assert not wrong


# The command line goes through the public door: fercli.api (and fercli's own types), the
# settings, errors and labels of core, and fer live's page through fercli.web's door, never
# the rooms below api (issue 34: the layer map of docs/design.md is true of the CLI).
CLI_MAY_IMPORT = ("fercli.api", "fercli.core", "fercli.cli", "fercli.web")


def test_the_command_line_reaches_below_the_api_only_for_core():
    wrong = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name.startswith("fercli.cli")
        for target in imported(path)
        if target.startswith("fercli")
        and target not in ("fercli", *(f"fercli.{name}" for name in fercli.__all__))
        and target != "fercli.__version__"
        and not any(
            target == allowed or target.startswith(allowed + ".") for allowed in CLI_MAY_IMPORT
        )
        or target.startswith("fercli.web.")
        and target.split(".")[2] not in fercli.web.__all__
    ]
    assert not wrong


def test_no_import_cycles():
    """Tarjan's strongly connected components: each must be one module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not cycles


def test_the_checks_see_a_cycle_and_a_climb(tmp_path):
    """The reader finds imports inside functions and skips type-checking ones: a check that
    saw nothing would pass for ever."""
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from fercli.learn.training import fit\n"
        "def late():\n"
        "    from fercli.api import train\n"
    )
    names = imported(source)
    assert "fercli.api.train" in names
    assert "fercli.learn.training" not in names
    assert layer_of("fercli.core.config") < layer_of("fercli.faces.align")
    assert layer_of("fercli.api")[1] == TOP


def test_no_module_is_longer_than_about_500_lines():
    long = {
        name: count
        for name, path in MODULES.items()
        if (count := len(path.read_text().splitlines())) > 560
    }
    assert not long


def test_every_module_imports():
    """Each module on its own (ast cannot see a name that its import does not provide)."""
    import importlib

    for name in MODULES:
        if name == "fercli.__main__":
            continue
        if name.startswith("fercli.web") and importlib.util.find_spec("starlette") is None:
            continue
        importlib.import_module(name)
