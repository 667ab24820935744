"""What pyproject.toml declares: every library fercli imports, each at a lower bound no older
than the version the suite ran with (the table of docs/design.md#dependencies), so that what
a user installs is what was tested, or newer."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml: the dependencies and every extra's."""
    extras = PROJECT["optional-dependencies"].values()
    return [Requirement(text) for text in [*PROJECT["dependencies"], *sum(extras, [])]]


def versions_tested() -> dict[str, Version]:
    """The table of docs/design.md#dependencies: package -> the oldest version tested."""
    section = DESIGN.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([\w.-]+) \| ([^|]+) \|$", section, re.M)
    versions = {}
    for name, cell in rows:
        found = [Version(text) for text in re.findall(r"\d+(?:\.\w+)+", cell)]
        if found:
            versions[canonicalize_name(name)] = min(found)
    return versions


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [
        Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", "==")
    ]
    return max(bounds) if bounds else None


def test_the_table_of_versions_tested_is_read():
    versions = versions_tested()
    assert versions["numpy"] >= Version("2") and versions["python"] >= Version("3.11")
    assert versions["opencv-python-headless"] == Version("5.0.0.93")  # the older of two


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_no_declared_lower_bound_is_older_than_the_version_tested(requirement):
    versions = versions_tested()
    name = canonicalize_name(requirement.name)
    assert name in versions, f"{name} is declared, but docs/design.md names no tested version"
    bound = lower_bound(requirement)
    assert bound is not None, f"{requirement} has no lower bound"
    assert bound >= versions[name], (
        f"{requirement}: its lower bound is older than the {versions[name]} tested"
    )


def test_the_python_declared_is_no_older_than_the_one_versions_tested():
    bound = Version(PROJECT["requires-python"].removeprefix(">="))
    assert bound >= Version(
        f"{versions_tested()['python'].major}.{versions_tested()['python'].minor}"
    )


def test_this_run_uses_versions_within_the_bounds():
    """The suite runs on versions the bounds allow: the figures of design.md stay honest."""
    for requirement in declared():
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue  # another platform's package
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement.name} {installed} is installed, outside {requirement.specifier}"
        )


def imported_names() -> set[str]:
    """The top-level names of every module fercli's code imports, at any depth."""
    names = set()
    for path in (ROOT / "src" / "fercli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - {"fercli"} - set(sys.stdlib_module_names)


def providers(module: str) -> set[str]:
    """The installed distributions that provide a top-level module: as their top_level.txt
    says, else by their files (dlib-bin's names only its extension, not its dlib folder)."""
    found = importlib.metadata.packages_distributions().get(module, [])
    if not found:
        found = [
            distribution.metadata["Name"]
            for distribution in importlib.metadata.distributions()
            if any(
                file.parts[0] == module or file.name.split(".")[0] == module
                for file in distribution.files or []
            )
        ]
    return {canonicalize_name(name) for name in found}


def test_every_library_fercli_imports_is_declared():
    # issue 31.9: scipy (sweeps) and h11 (fer live's server) were imported but not declared.
    names = {canonicalize_name(requirement.name) for requirement in declared()}
    undeclared = {}
    for module in sorted(imported_names()):
        distributions = providers(module)
        assert distributions, f"fercli imports {module}, which is not installed here"
        # tensorflow's module comes from tensorflow-cpu here, or from tensorflow (macOS).
        if not distributions & names:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert {"scipy", "h11"} <= imported_names()  # the search sees them
