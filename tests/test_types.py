"""The records that cross fercli's seams (a fold's outcome, a cross-validation's run and
reports, the media report) and the public functions of api.py pass a type checker: mypy,
pinned in the test extra and configured in pyproject.toml (not strict: annotated functions
are checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install '.[test]'")

# api.py and the modules that hold the records crossing the seams between learn's rooms.
CHECKED = [
    "fercli/api.py",
    "fercli/core/interrupts.py",
    "fercli/__init__.py",
    "fercli/faces/pipeline.py",
    "fercli/infer/files.py",
    "fercli/learn/crossval.py",
    "fercli/learn/crossval_files.py",
    "fercli/learn/engines.py",
    "fercli/learn/evaluate.py",
    "fercli/learn/folds.py",
    "fercli/learn/reports.py",
    "fercli/learn/sweep.py",
    "fercli/learn/where.py",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def mypy(cache: Path, *paths: Path) -> subprocess.CompletedProcess:
    """mypy with the project's settings on paths; fercli's imports are read from this
    checkout's source, whatever fercli is installed."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            *map(str, paths),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(SOURCE)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_records_and_the_api_pass_mypy(cache):
    result = mypy(cache, *(SOURCE / path for path in CHECKED))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no issues found in {len(CHECKED)} source files" in result.stdout


def test_mypy_finds_a_record_used_against_its_type(cache, tmp_path):
    """The check can fail: a fold's accuracy is None when the fold diverged, and its
    exported network is None when there is none; code that forgets either is refused."""
    wrong = tmp_path / "careless.py"
    wrong.write_text(
        "from fercli.learn.folds import FoldOutcome\n"
        "from fercli.learn.reports import CrossvalRun\n"
        "\n"
        "\n"
        "def shown(outcome: FoldOutcome) -> str:\n"
        "    return outcome.accuracy\n"
        "\n"
        "\n"
        "def first_network(run: CrossvalRun) -> object:\n"
        "    return run.outcomes[0].export.network\n"
    )
    result = mypy(cache, wrong)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "careless.py:6: error: Incompatible return value type" in result.stdout
    assert 'careless.py:10: error: Item "None" of "FoldExport | None"' in result.stdout
    assert "Found 2 errors in 1 file" in result.stdout
