"""Shared fixtures: a private FER_HOME for every test, the test photo, and small dataset trees
made from real faces (variants of the photo), so that dlib really has something to find."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
# The face of the test photo, roughly; resized to 256x256 it is a JAFFE-sized portrait.
FACE_BOX = (120, 20, 330, 230)  # x0, y0, x1, y1
# A tight box around the face: at 48x48 (CK+48 size) dlib finds it only after upsampling.
TIGHT_FACE_BOX = (160, 60, 290, 190)


@pytest.fixture(autouse=True)
def fer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own FER_HOME, so that no test reads or writes the real one."""
    home = tmp_path / "fer-home"
    monkeypatch.setenv("FER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    """The public-domain test photo: 512x512 RGB, one frontal face (see tests/data/NOTICE.md)."""
    return DATA / "faces" / "happiness" / "astronaut.png"


@pytest.fixture(scope="session")
def astronaut_gray(astronaut_path: Path) -> np.ndarray:
    image = cv2.imread(str(astronaut_path), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (512, 512)
    return image


def crop_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def face_variant(photo: np.ndarray, index: int, size: int = 256, box=FACE_BOX) -> np.ndarray:
    """A distinct (different bytes for each index) but recognisable face: the photo's face,
    mirrored for odd indices and a little brighter or darker."""
    face = crop_box(photo, box, size)
    if index % 2:
        face = face[:, ::-1]
    shift = (index // 2) * 3 - 6
    return np.clip(face.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def preprocessed_crop(image, config=None) -> np.ndarray:
    """The crop fer preprocess makes of an image's largest face (a path, bytes or an array):
    what a training crop must equal. (Predict, which needs every face, finds them otherwise:
    faces.yunet.)"""
    from fercli.core.config import PreprocessConfig
    from fercli.faces.pipeline import align_images

    [(_, found)] = align_images([(0, image)], config or PreprocessConfig(), largest_only=True)
    return found.faces[0].crop


def write_image(path: Path, image: np.ndarray, ext: str | None = None) -> Path:
    """Write an image with OpenCV, in the format of ext (default: the file's suffix).

    Encoded in memory so that names OpenCV's own file functions trip on (no suffix,
    non-ASCII) work too.
    """
    ok, encoded = cv2.imencode(ext or path.suffix or ".png", image)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
    return path


@pytest.fixture
def faces(astronaut_gray: np.ndarray) -> Callable[..., np.ndarray]:
    """faces(index, size=256): the index-th distinct face image."""
    return lambda index, size=256: face_variant(astronaut_gray, index, size)


@pytest.fixture
def no_face_image(astronaut_gray: np.ndarray) -> np.ndarray:
    """A real photo region without a face (the suit and background below the face)."""
    return np.ascontiguousarray(astronaut_gray[300:512, 300:512])


@pytest.fixture
def make_jaffe(tmp_path: Path, faces) -> Callable[..., Path]:
    """make_jaffe(names, folder="jaffe"): a flat JAFFE folder, one face per file name."""

    def make(names: list[str], folder: str = "jaffe") -> Path:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(names):
            write_image(root / name, faces(index), ".tiff")
        return root

    return make


@pytest.fixture
def make_ck(tmp_path: Path, faces) -> Callable[..., Path]:
    """make_ck({(subject, sequence): (frames, emotion text or None)}, folder="ckplus"):
    a CK+ tree, cohn-kanade-images/S005/001/S005_001_00000001.png ... and
    Emotion/S005/001/S005_001_<last>_emotion.txt where the text is given."""

    def make(
        sequences: dict[tuple[str, str], tuple[int, str | None]], folder: str = "ckplus"
    ) -> Path:
        root = tmp_path / folder
        images, emotion = root / "cohn-kanade-images", root / "Emotion"
        images.mkdir(parents=True, exist_ok=True)
        emotion.mkdir(parents=True, exist_ok=True)
        index = 0
        for (subject, sequence), (frames, text) in sequences.items():
            for frame in range(1, frames + 1):
                name = f"{subject}_{sequence}_{frame:08d}.png"
                write_image(images / subject / sequence / name, faces(index))
                index += 1
            if text is not None:
                label_file = (
                    emotion / subject / sequence / f"{subject}_{sequence}_{frames:08d}_emotion.txt"
                )
                label_file.parent.mkdir(parents=True, exist_ok=True)
                label_file.write_text(text)
        return root

    return make


@pytest.fixture
def make_folders(tmp_path: Path, faces) -> Callable[..., Path]:
    """make_folders({class: [file names]}, folder="classes"): <class>/<image> folders, one
    distinct face per file (PNG bytes whatever the name says)."""

    def make(classes: dict[str, list[str]], folder: str = "classes") -> Path:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        index = 0
        for label, names in classes.items():
            for name in names:
                write_image(root / label / name, faces(index), ".png")
                index += 1
        return root

    return make


# Linux capabilities that let root read, write and search whatever the permission bits say.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_override() -> None:
    """Drop, in this process, root's capabilities to ignore file permission bits."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Sets(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    header, sets = Header(0x20080522, 0), (Sets * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    sets[0].effective &= keep
    sets[0].permitted &= keep
    if libc.capset(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def run_unprivileged(function: Callable[[], None]) -> None:
    """Run a test of permission errors where permission bits apply.

    For anyone but root that is this process. Root reads and writes whatever the bits say, so
    for root the function runs in a forked child that has dropped the capabilities allowing
    that; an assertion that fails there fails the test here, with the child's traceback.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:  # no root (or no such thing): as it is
        function()
        return
    import traceback

    # A forked child inherits OpenCV's thread pool without its threads and can hang in its
    # first OpenCV call (see fercli.parallel): stop them for the fork.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        os.close(read_end)
        try:
            _drop_permission_override()
            function()
            report = b"ok"
        except BaseException:
            report = traceback.format_exc().encode()
        os.write(write_end, report)
        os._exit(0)
    os.close(write_end)
    cv2.setNumThreads(threads)
    with os.fdopen(read_end, "rb") as stream:
        report = stream.read()
    os.waitpid(pid, 0)
    if report != b"ok":
        pytest.fail(f"in a child process without root's permission override:\n{report.decode()}")


# The first variants of the photo, whose face dlib finds with room to spare (from index ~69
# on, the brightened photo has no face dlib finds).
ALIGNABLE_VARIANTS = 16


@pytest.fixture
def make_face_dataset(tmp_path: Path, astronaut_gray: np.ndarray) -> Callable[..., Path]:
    """make_face_dataset(count, folder="faces", size=256): count faces with distinct bytes,
    every one of which aligns, alternately in class folders happy/ and sad/."""

    def make(count: int, folder: str = "faces", size: int = 256) -> Path:
        root = tmp_path / folder
        for index in range(count):
            face = face_variant(astronaut_gray, index % ALIGNABLE_VARIANTS, size)
            face[0, 0] = index // ALIGNABLE_VARIANTS  # distinct bytes past the variants
            label = "happy" if index % 2 == 0 else "sad"
            write_image(root / label / f"face{index:03d}.png", face)
        return root

    return make


def tiff(entries: list[tuple[int, int, int]], pixels: bytes, order: str = "<") -> bytes:
    """A one-strip TIFF with the given (tag, type, value) entries in this order, in Intel
    ("<") or Motorola (">") byte order; the value of tags 273 and 324 (strip and tile
    offsets) is replaced by where the pixel data starts."""
    pixels_at = 8 + 2 + 12 * len(entries) + 4
    directory = struct.pack(order + "H", len(entries))
    for tag, kind, value in entries:
        value = pixels_at if tag in (273, 324) else value
        packed = (
            struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
        )
        directory += struct.pack(order + "HHI", tag, kind, 1) + packed
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    return magic + struct.pack(order + "I", 8) + directory + b"\x00" * 4 + pixels


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked fork need os.fork (not on Windows): skipped there, not failed."""
    if hasattr(os, "fork"):
        return
    skip = pytest.mark.skip(reason="needs os.fork, which this platform lacks")
    for item in items:
        if item.get_closest_marker("fork"):
            item.add_marker(skip)
