"""Names that runs make up (a model or crossval folder named by the time) are taken by
creating them, so that runs started in the same second never write over each other."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fercli.core.errors import StoreError
from fercli.core.store import atomic_save, atomic_write, atomic_write_bytes, new_dir

RUNS = 6


def test_keep_existing_writes_beside_a_file_that_is_there(tmp_path):
    path = tmp_path / "model-20261125-101010.npz"
    path.write_bytes(b"first")

    second = atomic_write(path, lambda stream: stream.write(b"second"), keep_existing=True)
    third = atomic_write(path, lambda stream: stream.write(b"third"), keep_existing=True)

    assert [second.name, third.name] == [
        "model-20261125-101010-2.npz",
        "model-20261125-101010-3.npz",
    ]
    assert [path.read_bytes(), second.read_bytes(), third.read_bytes()] == [
        b"first",
        b"second",
        b"third",
    ]


def test_without_keep_existing_a_given_path_is_replaced(tmp_path):
    path = tmp_path / "chosen.npz"
    path.write_bytes(b"old")

    assert atomic_write_bytes(path, b"new") == path
    assert path.read_bytes() == b"new"


def write_at_once(path: str, barrier, number: int) -> None:
    barrier.wait()
    atomic_write(
        Path(path), lambda stream: stream.write(b"run %d;" % number * 5000), keep_existing=True
    )


def make_dir_at_once(path: str, barrier, made) -> None:
    barrier.wait()
    made.put(str(new_dir(Path(path))))


def start_together(target, arguments) -> None:
    """RUNS processes, each calling target(*arguments(barrier, number)); target waits at the
    barrier, so that they all go at one moment."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(RUNS)
    processes = [
        context.Process(target=target, args=arguments(barrier, number)) for number in range(RUNS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0


@pytest.mark.fork
def test_runs_that_made_up_the_same_model_name_at_once_each_get_a_file(tmp_path):
    path = tmp_path / "models" / "jaffe-20261125-101010.npz"

    start_together(write_at_once, lambda barrier, number: (str(path), barrier, number))

    files = sorted(path.parent.iterdir())
    assert len(files) == RUNS  # no temporary or empty file left
    contents = sorted(file.read_bytes() for file in files)
    assert contents == sorted(b"run %d;" % number * 5000 for number in range(RUNS))


@pytest.mark.fork
def test_runs_that_made_up_the_same_folder_name_at_once_each_get_a_folder(tmp_path):
    path = tmp_path / "runs" / "crossval-jaffe-20261125-101010"
    made = multiprocessing.get_context("fork").SimpleQueue()

    start_together(make_dir_at_once, lambda barrier, number: (str(path), barrier, made))

    folders = sorted(made.get() for _ in range(RUNS))
    assert len(set(folders)) == RUNS
    assert sorted(str(folder) for folder in path.parent.iterdir()) == folders
    assert str(path) in folders and str(path) + "-2" in folders


def test_a_failed_write_leaves_neither_a_file_nor_a_taken_name(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"first")

    def fail(stream) -> None:
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(StoreError, match="No space left"):
        atomic_write(path, fail, keep_existing=True)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"first"


def test_a_folder_name_with_a_dot_is_numbered_at_its_end(tmp_path):
    path = tmp_path / "crossval-ck48.v2-20261125-101010"

    first, second = new_dir(path), new_dir(path)

    assert (first.name, second.name) == (path.name, f"{path.name}-2")
    assert first.is_dir() and second.is_dir()


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    """Run a test under a umask, restoring the old one after."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_get_the_mode_open_would_give_them(tmp_path, umask):
    expected = 0o666 & ~umask
    reference = tmp_path / "reference"
    reference.write_bytes(b"made with open()")
    plain = atomic_write_bytes(tmp_path / "plain.json", b"{}")
    chosen = tmp_path / "model.npz"
    chosen.write_bytes(b"first")
    beside = atomic_write(chosen, lambda stream: stream.write(b"second"), keep_existing=True)
    saved = atomic_save(tmp_path / "saved.npy", lambda name: Path(name).write_bytes(b"x"))
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode) for path in (reference, plain, beside, saved)
    }
    assert modes == dict.fromkeys(modes, expected)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_a_command_writes_gets_the_usual_mode(tmp_path, fer_home, astronaut_path, mask):
    # A fresh process started under the umask, as a user's shell would start it; its
    # worker processes inherit it.
    process = subprocess.run(
        [sys.executable, "-m", "fercli", "preprocess", str(astronaut_path.parent.parent), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        umask=mask,
    )
    assert process.returncode == 0, process.stderr
    files = [path for path in fer_home.rglob("*") if path.is_file()]
    assert any(path.name == "dataset.npz" for path in files) and any(
        path.suffix == ".png" for path in files
    )
    modes = {
        str(path.relative_to(fer_home)): oct(stat.S_IMODE(path.stat().st_mode)) for path in files
    }
    assert modes == dict.fromkeys(modes, oct(0o666 & ~mask))


def test_a_made_up_name_appears_with_the_whole_file_behind_it(tmp_path, monkeypatch):
    """keep_existing takes the first free name by hard-linking the finished file to it: no
    moment in which a reader could find that name empty (an empty claim file, renamed onto
    later, was once seen by a watcher as a damaged newest model)."""
    from fercli.core.store import atomic_write

    (tmp_path / "m.npz").write_bytes(b"older")
    names_seen_empty = []
    real_replace = os.replace

    def replace(source, target):
        # A rename onto a name that is already there and empty: the window readers could see.
        if os.path.exists(target) and os.path.getsize(target) == 0:
            names_seen_empty.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    written = atomic_write(
        tmp_path / "m.npz", lambda stream: stream.write(b"newer"), keep_existing=True
    )
    assert written == tmp_path / "m-2.npz" and written.read_bytes() == b"newer"
    assert (tmp_path / "m.npz").read_bytes() == b"older" and names_seen_empty == []
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "m-2.npz",
        "m.npz",
    ]  # no temporary left

    # Where hard links are not supported: the name is claimed, then the file renamed onto it.
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    third = atomic_write(
        tmp_path / "m.npz", lambda stream: stream.write(b"third"), keep_existing=True
    )
    assert third == tmp_path / "m-3.npz" and third.read_bytes() == b"third"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m-2.npz", "m-3.npz", "m.npz"]


def test_a_python_without_os_fchmod_still_writes(tmp_path, monkeypatch):
    # Windows before Python 3.13 has no os.fchmod: a write must not fail for want of it.
    monkeypatch.delattr(os, "fchmod")
    path = atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert path.read_bytes() == b"data"
