"""A cache location that is read-only or full: one clear line, a non-zero exit, and what was
already there stays byte for byte as it was, with no temporary files left behind.

Tests run as root here, whom file permissions do not stop, so the read-only and full
locations are made with mounts in a user namespace of the fer process alone (`unshare`):
a read-only bind mount of FER_HOME, and a small tmpfs holding a copy of it. Where user
namespaces are not allowed these tests are skipped; the file-size limit (RLIMIT_FSIZE),
which any process may lower, stands in for a full disk everywhere.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import face_variant, write_image
from synthetic import make_dataset, save_synthetic

FER = Path(sys.executable).with_name("fer")
IMAGES = 12


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file below a folder."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_one_error_line(completed: subprocess.CompletedProcess, *fragments: str) -> str:
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def prepared(make_face_dataset, fer_home) -> Path:
    """A dataset preprocessed into FER_HOME, then grown by four new faces that are not cached."""
    root = make_face_dataset(IMAGES)
    completed = subprocess.run(
        [str(FER), "preprocess", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return root


def add_new_faces(root: Path, astronaut_gray, count: int = 4) -> None:
    for index in range(count):
        face = face_variant(astronaut_gray, index, 256)
        face[0, 0] = 250 - index
        write_image(root / "happy" / f"new{index}.png", face)


# --- read-only ---------------------------------------------------------------------------------

READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


NAMESPACE = ["unshare", "--user", "--map-root-user", "--mount"]


def skip_unless_namespace_allows(script: list[str], what: str) -> None:
    """Skip the test unless a process may run script (mounts) in a namespace of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    probe = subprocess.run(
        NAMESPACE + script, capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        reason = probe.stderr.strip() or f"exit code {probe.returncode}"
        pytest.skip(f"{what} in a user namespace is not allowed here ({reason})")


@pytest.fixture(scope="session")
def read_only_mounts() -> None:
    """Skip unless this machine lets a process mount a read-only view in its own namespace."""
    skip_unless_namespace_allows(
        [
            "sh",
            "-c",
            READ_ONLY + " 2>/dev/null",
            "/tmp",
            "sh",
            "-c",
            "! touch /tmp/.fer-read-only-probe 2>/dev/null",
        ],
        "a read-only bind mount",
    )


def run_read_only(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`fer ARGS` with FER_HOME read-only for it alone."""
    command = [
        *NAMESPACE,
        "sh",
        "-c",
        READ_ONLY,
        str(home),
        str(FER),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_preprocess_with_a_read_only_cache(read_only_mounts, prepared, fer_home, astronaut_gray):
    before = snapshot(fer_home)

    # Everything cached: only the prepared dataset would be written.
    unchanged = run_read_only(fer_home, "preprocess", str(prepared))
    add_new_faces(prepared, astronaut_gray)
    # New images: their crops would be cached first.
    grown = run_read_only(fer_home, "preprocess", str(prepared))

    for completed in (unchanged, grown):
        assert_one_error_line(completed, "cannot write", "Read-only file system", "FER_HOME")
    assert snapshot(fer_home) == before


def test_train_and_crossval_with_a_read_only_home_refuse_before_working(read_only_mounts, fer_home):
    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=3))
    before = snapshot(fer_home)

    train = run_read_only(fer_home, "train", "--epochs", "1")
    crossval = run_read_only(fer_home, "crossval", "--folds", "2", "--epochs", "1")

    assert_one_error_line(train, "cannot write", "models", "Read-only file system")
    assert_one_error_line(crossval, "cannot write", "runs", "Read-only file system")
    assert snapshot(fer_home) == before


# --- full ----------------------------------------------------------------------------------------

# Runs in the namespace: a tmpfs over FER_HOME holding a copy of it, filled up to keep_kb free,
# then the command, then a copy of what the tmpfs holds afterwards.
ON_A_FULL_DISK = r"""
import json, os, shutil, subprocess, sys
home, original, after, size_kb, keep_kb, *command = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", home], check=True)
shutil.copytree(original, home, dirs_exist_ok=True)
left = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize - int(keep_kb) * 1024
with open(os.path.join(home, "filler"), "wb") as filler:
    while left > 0:
        try:
            left -= filler.write(bytes(min(left, 4096)))
            filler.flush()
        except OSError:
            break
completed = subprocess.run(command, capture_output=True, text=True)
os.remove(os.path.join(home, "filler"))
shutil.copytree(home, after)
outcome = {"code": completed.returncode, "stdout": completed.stdout, "stderr": completed.stderr}
print(json.dumps(outcome))
"""


@pytest.fixture(scope="session")
def tmpfs_mounts() -> None:
    """Skip unless this machine lets a process mount a tmpfs in its own namespace."""
    skip_unless_namespace_allows(
        ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], "mounting a tmpfs"
    )


def run_on_a_full_disk(
    home: Path, keep_kb: int, *args: str
) -> tuple[subprocess.CompletedProcess, Path]:
    """`fer ARGS` with FER_HOME on a tmpfs with keep_kb free (2 MB more than FER_HOME holds,
    then filled); returns the outcome and a copy of FER_HOME as the command left it."""
    original = home.with_name("home-before")
    after = home.with_name("home-after")
    shutil.rmtree(after, ignore_errors=True)
    shutil.rmtree(original, ignore_errors=True)
    shutil.copytree(home, original)
    command = [
        *NAMESPACE,
        sys.executable,
        "-c",
        ON_A_FULL_DISK,
        str(home),
        str(original),
        str(after),
        str(
            2048
            + sum(path.stat().st_size // 1024 + 4 for path in home.rglob("*") if path.is_file())
        ),
        str(keep_kb),
        str(FER),
        *args,
    ]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    outcome = json.loads(ran.stdout)
    return subprocess.CompletedProcess(
        args, outcome["code"], outcome["stdout"], outcome["stderr"]
    ), after


def assert_kept(before: dict[str, str], after: Path) -> None:
    """Every file that was there is byte-identical, and no temporary file is left."""
    now = snapshot(after)
    assert {name: now.get(name) for name in before} == before
    assert [name for name in now if Path(name).name.startswith(".tmp-")] == []


@pytest.mark.parametrize("keep_kb", [0, 48])
def test_preprocess_on_a_full_disk(tmpfs_mounts, prepared, fer_home, astronaut_gray, keep_kb):
    """No space at all, or room for a few crops but not for all of them."""
    before = snapshot(fer_home)
    add_new_faces(prepared, astronaut_gray, count=40)

    completed, after = run_on_a_full_disk(fer_home, keep_kb, "preprocess", str(prepared))

    assert_one_error_line(completed, "cannot write", "No space left on device")
    assert_kept(before, after)


def test_preprocess_with_everything_cached_on_a_full_disk(tmpfs_mounts, prepared, fer_home):
    """The crops need no writing; the prepared dataset cannot be written, and the old one stays."""
    before = snapshot(fer_home)
    (prepared / "sad" / "face001.png").unlink()  # a different dataset to save

    completed, after = run_on_a_full_disk(fer_home, 0, "preprocess", str(prepared))

    assert_one_error_line(completed, "cannot write", "dataset.npz", "No space left on device")
    assert_kept(before, after)


# --- a file-size limit, as a full disk that needs no mounts --------------------------------------


def limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FER), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=limit_file_size(limit),
    )


def test_preprocess_when_files_cannot_grow(prepared, fer_home, astronaut_gray):
    before = snapshot(fer_home)
    add_new_faces(prepared, astronaut_gray, count=20)

    # Cache entries are ~1.5 KB: not one can be written.
    completed = run_with_file_size_limit(1024, "preprocess", str(prepared))

    assert_one_error_line(completed, "cannot write", "File too large")
    assert_kept(before, fer_home)


@pytest.mark.slow
def test_train_when_the_model_cannot_be_written(fer_home):
    save_synthetic(make_dataset(labels=("anger", "happiness"), subjects=3))

    # The model file (~200 KB) cannot be written; the check that the folder is writable can.
    completed = run_with_file_size_limit(64 * 1024, "train", "--epochs", "1")

    assert_one_error_line(completed, "cannot write", "models", "File too large")
    models = fer_home / "models"
    assert not models.exists() or list(models.iterdir()) == []
