"""docs/python.md against the package: every public name of fercli is described there, every
`fercli.NAME` it mentions exists, and its examples run as they stand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fercli
import fercli.web
from fercli.data.prepared import save_dataset
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "python.md"


def mentioned(text: str) -> set[str]:
    """The names NAME of `fercli.NAME` (at the top of the package) a text mentions."""
    return set(re.findall(r"`fercli\.([A-Za-z_]\w*)", text))


def test_every_public_name_is_described_in_python_md():
    missing = sorted(set(fercli.__all__) - mentioned(PAGE.read_text()))
    assert not missing, f"in fercli.__all__ but not in docs/python.md: {missing}"


@pytest.mark.parametrize("page", ["docs/python.md", "README.md"])
def test_every_fercli_name_a_page_mentions_exists(page):
    # Subpackages (fercli.core) are rooms, not public names, but they must exist too.
    names = mentioned((ROOT / page).read_text())
    rooms = {path.name for path in Path(fercli.__file__).parent.iterdir() if path.is_dir()}
    unknown = sorted(name for name in names - rooms if name not in fercli.__all__)
    assert not unknown, f"{page} names fercli.{unknown} that fercli does not have"


def test_all_is_the_functions_and_the_types():
    assert sorted(fercli.__all__) == sorted([*fercli.FUNCTIONS, *fercli.TYPES])
    assert sorted(fercli.web.__all__) == sorted(fercli.web.DOOR)


@pytest.mark.parametrize("name", fercli.__all__)
def test_every_public_name_imports_from_the_top(name):
    assert getattr(fercli, name) is not None
    assert name in dir(fercli)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fercli.nope


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(examples())))
def test_the_examples_of_python_md_run_as_they_stand(number, fer_home, tmp_path):
    save_dataset(
        make_dataset(labels=("anger", "happiness"), subjects=3, per_subject=4),
        fer_home / "datasets" / "shapes",
    )
    script = tmp_path / "example.py"
    script.write_text(examples()[number])
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the example printed nothing"
    assert "cannot train" not in result.stdout
