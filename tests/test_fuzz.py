"""Whatever bytes and folders users feed fercli: every image ends in an array, a crop or a
one-line reason, every folder in a Scan or a LayoutError, and nothing hangs or crashes.

Property-based (hypothesis), derandomized so that CI tests the same cases on every run.
Each case runs in a separate process with a time limit: a decoder stuck in C code or
crashing in C code fails the test there, instead of hanging or killing the whole run, and so
does a case that makes that process grow by gigabytes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import resource
import shutil
import struct
import sys
import tempfile
import traceback
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import DATA, FACE_BOX, crop_box, tiff
from fercli.core.config import PreprocessConfig, ScanConfig
from fercli.core.errors import ImageError, LayoutError
from fercli.media.images import MAX_PIXELS

# A case that takes longer than this is a hang (decoding a seed takes milliseconds).
CASE_TIMEOUT = 60
# A case process that grows past this has spent memory on a file of a few KB (the process
# itself, with dlib's models loaded, takes about 300 MB).
MEMORY_LIMIT_MB = 1024

FUZZ = settings(
    max_examples=200,
    derandomize=True,  # the same cases on every run: CI cannot go red by luck
    database=None,
    # The sandbox's timeout bounds each case and actually stops a hang; a deadline would
    # only measure after the fact, and fail on a busy machine.
    deadline=None,
    # FER_HOME (the autouse fixture) is not used by these cases.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- running each case in a separate process ------------------------------------------------


class Sandbox:
    """A worker process that runs one case at a time; a hang, a crash or a case that makes
    the process grow past MEMORY_LIMIT_MB fails the test."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        # spawn: a fresh interpreter, unaffected by what this process has loaded (TensorFlow,
        # OpenCV threads) and free to crash.
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def _restart(self) -> None:
        for process in list((getattr(self.pool, "_processes", None) or {}).values()):
            process.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._start()

    def run(self, function, *args, timeout: float = CASE_TIMEOUT):
        future = self.pool.submit(_measured, function, *args)
        try:
            outcome, peak_mb = future.result(timeout=timeout)
        except TimeoutError:
            self._restart()
            pytest.fail(f"{function.__name__} still running after {timeout} s: a hang")
        except BrokenProcessPool:
            self._restart()
            pytest.fail(f"{function.__name__} killed its process (a crash in C code)")
        if peak_mb > MEMORY_LIMIT_MB:
            self._restart()  # a fresh process, so that the next case is measured on its own
            pytest.fail(f"{function.__name__} grew its process to {peak_mb} MB")
        return outcome

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox()
    yield box
    box.close()


def _measured(function, *args) -> tuple:
    """Runs in the sandbox: function(*args), and the process's peak resident size in MB."""
    outcome = function(*args)
    return outcome, _peak_mb()


def _peak_mb() -> int:
    """This interpreter's peak resident size. On Linux the high-water mark of its own memory
    (VmHWM, new at exec): ru_maxrss there also counts the moment between fork and exec, when
    a spawned worker still had the test process's memory (over 1 GB after training tests)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB; bytes on macOS
    return peak // (2**20 if sys.platform == "darwin" else 1024)


def _unexpected() -> tuple:
    return ("unexpected", traceback.format_exc())


def decode_case(data: bytes) -> tuple:
    """Runs in the sandbox: what decode_gray makes of some bytes."""
    from fercli.media.images import decode_gray

    try:
        image = decode_gray(data)
    except ImageError as error:
        return ("refused", str(error))
    except BaseException:
        return _unexpected()
    return ("decoded", image.shape, str(image.dtype))


def colour_case(data: bytes) -> tuple:
    """Runs in the sandbox: what fer predict's decoding (grey and colours for YuNet,
    faces.pipeline.decode) makes of some bytes, beside decode_gray's answer."""
    from fercli.faces.pipeline import decode
    from fercli.media.images import decode_gray

    try:
        gray = decode_gray(data)
    except ImageError as error:
        gray = str(error)
    except BaseException:
        return _unexpected()
    try:
        picture = decode(data, colour=True)
    except ImageError as error:
        return ("refused", str(error), gray)
    except BaseException:
        return _unexpected()
    colour = picture.colour
    shape = None if colour is None else (colour.ndim, colour.shape[-1], str(colour.dtype))
    same = isinstance(gray, np.ndarray) and np.array_equal(picture.gray, gray)
    return ("decoded", same, shape)


def check_case(data: bytes) -> tuple:
    """Runs in the sandbox: what check_image makes of some bytes."""
    from fercli.media.images import check_image

    try:
        return ("accepted", check_image(data))
    except ImageError as error:
        return ("refused", str(error))
    except BaseException:
        return _unexpected()


def align_case(data: bytes, name: str) -> tuple:
    """Runs in the sandbox: align_file on a file holding the bytes, through a crop cache,
    twice (the second answer must come from the cache and agree)."""
    from fercli.data.cache import CropCache
    from fercli.data.preprocess import align_file

    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / name
        path.write_bytes(data)
        cache = CropCache(PreprocessConfig(), folder / "cache")
        cache.prepare()
        entry, hit = align_file(path, PreprocessConfig(), cache)
        again, hit_again = align_file(path, PreprocessConfig(), cache)
    except BaseException:
        return _unexpected()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if entry.crop is None:
        return ("reason", entry.reason, again.reason, hit, hit_again)
    same = again.crop is not None and np.array_equal(entry.crop, again.crop)
    return ("crop", entry.crop.shape, str(entry.crop.dtype), hit, hit_again, same)


def scan_case(root: str, layout: str | None) -> tuple:
    """Runs in the sandbox: what scan_dataset makes of a folder."""
    from fercli.data.datasets import scan_dataset

    try:
        scan = scan_dataset(Path(root), ScanConfig(layout=layout))
    except LayoutError as error:
        return ("refused", str(error))
    except BaseException:
        return _unexpected()
    records = [(str(record.path), record.label, record.subject) for record in scan.records]
    skipped = [(item.path, item.reason) for item in scan.skipped]
    return ("scan", scan.layout, records, skipped)


def cli_case(root: str, home: str, as_json: bool) -> tuple:
    """Runs in the sandbox: `fer preprocess ROOT --workers 1` through Typer's test runner."""
    from typer.testing import CliRunner

    from fercli.cli import app

    os.environ["FER_HOME"] = home
    arguments = ["preprocess", root, "--workers", "1"] + (["--json"] if as_json else [])
    try:
        result = CliRunner().invoke(app, arguments)
    except BaseException:
        return _unexpected()
    failure = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        failure = "".join(traceback.format_exception(result.exception))
    return ("ran", result.exit_code, result.stdout, result.stderr, failure)


def assert_one_line(message: str) -> None:
    assert message.strip(), "empty message"
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message, message


def assert_array_or_reason(outcome: tuple) -> None:
    """decode_case's outcome is a 2-D uint8 array or a one-line ImageError."""
    assert outcome[0] != "unexpected", outcome[1]
    if outcome[0] == "refused":
        assert_one_line(outcome[1])
    else:
        _, shape, dtype = outcome
        assert len(shape) == 2 and min(shape) >= 1 and dtype == "uint8"


# --- seeds: real encoded images --------------------------------------------------------------


def _photo() -> tuple[np.ndarray, np.ndarray]:
    colour = cv2.imread(str(DATA / "faces" / "happiness" / "astronaut.png"), cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    return gray, colour


def _encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, encoded = cv2.imencode(ext, image, list(params))
    assert ok
    return encoded.tobytes()


def _pillow(image: np.ndarray, image_format: str, mode: str | None = None, **options) -> bytes:
    picture = Image.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    stream = io.BytesIO()
    picture.save(stream, image_format, **options)
    return stream.getvalue()


def _big_endian_tiff(image: np.ndarray) -> bytes:
    """An uncompressed 8-bit grayscale TIFF in Motorola byte order (Pillow and OpenCV write
    Intel order only)."""
    height, width = image.shape
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, image.size),
    ]
    return tiff(entries, image.tobytes(), order=">")


def _seeds(side: int) -> dict[str, bytes]:
    """The face of the test photo, side x side, in every format and flavour fercli reads."""
    gray, colour = _photo()
    face = crop_box(gray, FACE_BOX, side)
    face_colour = cv2.resize(colour[20:230, 120:330], (side, side), interpolation=cv2.INTER_AREA)
    rgb = face_colour[:, :, ::-1]
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"
    return {
        "gray.png": _encode(face, ".png"),
        "colour.png": _encode(face_colour, ".png"),
        "palette.png": _pillow(face, "PNG", "P"),
        "16bit.png": _pillow((face.astype(np.uint16) * 257), "PNG"),
        "rgba.png": _pillow(rgb, "PNG", "RGBA"),
        "gray.jpg": _encode(face, ".jpg"),
        "colour.jpg": _encode(face_colour, ".jpg"),
        "progressive.jpg": _pillow(rgb, "JPEG", progressive=True),
        "opencv.tiff": _encode(face, ".tiff"),
        "deflate.tiff": _pillow(face, "TIFF", compression="tiff_deflate"),
        "palette.tiff": _pillow(face, "TIFF", "P"),
        "big-endian.tiff": _big_endian_tiff(face),
        "gray.bmp": _encode(face, ".bmp"),
        "colour.bmp": _encode(face_colour, ".bmp"),
        "lossless.webp": _encode(face_colour, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101),
        "lossy.webp": _pillow(rgb, "WEBP"),
        "extended.webp": _pillow(rgb, "WEBP", exif=exif),
        "gray.gif": _pillow(face, "GIF"),
        "gray.pgm": _encode(face, ".pgm"),
    }


SEEDS = _seeds(48)
# Faces large enough that alignment succeeds on the undamaged file.
FACE_SEEDS = _seeds(96)
MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"GIF89a",
    b"P5",
    b"P1",
    b"P4",
]


def test_seeds_decode_and_align(sandbox):
    """The undamaged seeds decode (and the face seeds align), so that the damage is what the
    properties below test."""
    for name, data in SEEDS.items():
        outcome = sandbox.run(decode_case, data)
        assert outcome[0] == "decoded", (name, outcome)
    for name, data in FACE_SEEDS.items():
        outcome = sandbox.run(align_case, data, name)
        assert outcome[0] == "crop", (name, outcome)


# --- damaging them ---------------------------------------------------------------------------


def _format_of(name: str) -> str:
    return {
        "png": "PNG",
        "jpg": "JPEG",
        "tiff": "TIFF",
        "bmp": "BMP",
        "webp": "WebP",
        "gif": "GIF",
        "pgm": "PNM",
    }[name.rsplit(".", 1)[1]]


def _jpeg_frame(data: bytes) -> int | None:
    """Offset of the start-of-frame marker of a JPEG."""
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return offset
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        offset += 2 + length
    return None


def _tiff_entries(data: bytes) -> tuple[str, dict[int, int]]:
    """Byte order and {tag: offset of its 12-byte entry} of a TIFF's first directory."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    entries = {}
    for index in range(count):
        at = ifd + 2 + 12 * index
        (tag,) = struct.unpack(order + "H", data[at : at + 2])
        entries.setdefault(tag, at)
    return order, entries


def declare_size(data: bytes, image_format: str, width: int, height: int) -> tuple[bytes, int, int]:
    """The image with its header rewritten to declare width x height, as far as the format's
    fields hold them; returns the bytes and the size now declared."""
    out = bytearray(data)
    if image_format == "PNG":
        width, height = width % 2**32, height % 2**32
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))  # a valid header
    elif image_format == "JPEG":
        width, height = width % 2**16, height % 2**16
        frame = _jpeg_frame(data)
        out[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    elif image_format == "TIFF":
        width, height = width % 2**32, height % 2**32
        order, entries = _tiff_entries(data)
        for tag, value in ((256, width), (257, height)):
            at = entries[tag]
            out[at + 2 : at + 12] = struct.pack(order + "HII", 4, 1, value)  # one LONG
    elif image_format == "BMP":
        width, height = width % 2**31, height % 2**31
        out[18:26] = struct.pack("<ii", width, height)
    elif image_format == "WebP":
        chunk = bytes(out[12:16])
        if chunk == b"VP8X":
            width, height = width % 2**24 or 1, height % 2**24 or 1
            out[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        elif chunk == b"VP8L":
            width, height = width % 2**14 or 1, height % 2**14 or 1
            (bits,) = struct.unpack("<I", out[21:25])
            bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
            out[21:25] = struct.pack("<I", bits)
        else:
            width, height = width % 2**14, height % 2**14
            out[26:30] = struct.pack("<HH", width, height)
    elif image_format == "GIF":
        width, height = width % 2**16, height % 2**16
        out[6:10] = struct.pack("<HH", width, height)
    elif image_format == "PNM":
        text = re.sub(rb"^(P\d\s+)\d+(\s+)\d+", b"\\g<1>%d\\g<2>%d" % (width, height), bytes(out))
        out = bytearray(text)
    return bytes(out), width, height


SIZES = st.one_of(
    st.sampled_from([0, 1, 2, 255, 8_000, 60_000, 65_535, 100_000, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def damaged(draw, seeds: dict[str, bytes]) -> bytes:
    """A seed with one to three kinds of damage: flipped or overwritten bytes (mostly in the
    header), a cut, inserted or deleted bytes, a rewritten declared size."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        kind = draw(
            st.sampled_from(["flip", "overwrite", "cut", "insert", "delete", "size", "word"])
        )
        header = draw(st.booleans())
        where = draw(st.integers(0, min(len(data), 64) - 1 if header else len(data) - 1))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            data[where] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:where]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif kind == "word":
            # A 32-bit field (a length, an offset, a size) set to an extreme.
            value = draw(st.sampled_from([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFF00]))
            data[where : where + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
        else:
            try:
                data = bytearray(
                    declare_size(bytes(data), _format_of(name), draw(SIZES), draw(SIZES))[0]
                )
            except (TypeError, struct.error, KeyError, IndexError, ValueError, OverflowError):
                pass  # the header is already too damaged to find the size fields
    return bytes(data)


# --- properties of the image loader ----------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_decode_to_an_array_or_a_reason(sandbox, data):
    assert_array_or_reason(sandbox.run(decode_case, data))


@FUZZ
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=2048))
def test_random_bytes_behind_a_real_signature(sandbox, magic, rest):
    assert_array_or_reason(sandbox.run(decode_case, magic + rest))
    outcome = sandbox.run(check_case, magic + rest)
    assert outcome[0] != "unexpected", outcome[1]
    if outcome[0] == "refused":
        assert_one_line(outcome[1])


# A PNG whose first chunk after the header claims 4 GB: OpenCV allocated all of it.
@example(data=SEEDS["gray.png"][:33] + b"\xff\xff\x19\xb1" + SEEDS["gray.png"][37:])
@FUZZ
@given(data=damaged(SEEDS))
def test_damaged_images_decode_to_an_array_or_a_reason(sandbox, data):
    assert_array_or_reason(sandbox.run(decode_case, data))


@FUZZ
@given(data=damaged(SEEDS))
def test_predicts_decoding_reads_the_grey_decode_gray_reads_or_gives_its_reason(sandbox, data):
    # fer predict decodes the colours too (faces.yunet): the grey, and which files are read,
    # stay decode_gray's.
    outcome = sandbox.run(colour_case, data)
    assert outcome[0] != "unexpected", outcome[1]
    if outcome[0] == "refused":
        assert outcome[1] == outcome[2]  # the same one-line reason
    else:
        _, same, shape = outcome
        assert same and shape in (None, (3, 3, "uint8"))


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), width=SIZES, height=SIZES)
def test_declared_sizes_beyond_the_limit_are_refused_naming_it(sandbox, name, width, height):
    data, width, height = declare_size(SEEDS[name], _format_of(name), width, height)
    outcome = sandbox.run(decode_case, data)
    assert_array_or_reason(outcome)
    if width * height > MAX_PIXELS:
        assert outcome[0] == "refused"
        assert "too large" in outcome[1] and f"{width}x{height}" in outcome[1], outcome[1]
        assert f"{MAX_PIXELS:,}" in outcome[1]
    elif width == 0 or height == 0:
        assert outcome[0] == "refused"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_cut_of_a_header_is_refused(sandbox, name):
    """Files cut anywhere in their first 100 bytes: a reason each, never an image."""
    data = SEEDS[name]
    for length in range(min(100, len(data))):
        outcome = sandbox.run(decode_case, data[:length])
        assert outcome[0] == "refused", (length, outcome)
        assert_one_line(outcome[1])


@FUZZ
@given(
    data=damaged(FACE_SEEDS), name=st.sampled_from(["face.png", "face", "face.jpg", "f a c e.tiff"])
)
def test_damaged_files_align_to_a_crop_or_a_reason(sandbox, data, name):
    outcome = sandbox.run(align_case, data, name)
    assert outcome[0] != "unexpected", outcome[1]
    if outcome[0] == "reason":
        _, reason, reason_again, hit, hit_again = outcome
        assert_one_line(reason)
        # Empty files are refused before they have a cache key; the rest come from the cache.
        assert reason_again == reason and (hit_again or "empty file" in reason)
    else:
        _, shape, dtype, hit, hit_again, same = outcome
        assert shape == (32, 32) and dtype == "uint8"
        assert not hit and hit_again and same


# --- properties of layout detection ----------------------------------------------------------


def _fit_name(name: str) -> str:
    """name, shortened to the 255 bytes a file name may take."""
    while len(os.fsencode(name)) > 255:
        name = name[:-1]
    return name


def _usable(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


LOOKALIKES = [
    "KA.AN1.39.tiff",
    "ka.ha2.40.TIF",
    "KA.XX1.39.tiff",
    "KA.AN1.39",
    "KA.AN.39.tiff",
    "K.AN1.39.tiff",
    "KA.AN1.39.tiff.txt",
    "KA.AN1.39.tiff ",
    " KA.AN1.39.tiff",
    "S005_001_00000001.png",
    "S5_1_1.png",
    "s005_001_00000001.png",
    "S005_001_",
    "S005",
    "S005_001_00000011_emotion.txt",
    "_emotion.txt",
    "cohn-kanade-images",
    "Cohn-Kanade-Images",
    "Emotion",
    "emotion",
    "happy",
    "Happy ",
    "sad",
    "neutral",
    "contempt",
    "[x]",
    "[bold]",
    "caf\udce9",
    "顔",
    "😀",
    "a b",
    "-",
    "--help",
    "~",
    "$HOME",
    "*",
    "?",
    "\\",
    "\t",
    "\n",
    "con",
    "nul.png",
    ".hidden",
    "._KA.AN1.39.tiff",
    "x.png",
    "x.PNG",
    "x.jpg",
    "x.jpeg",
]
NAMES = st.one_of(
    st.sampled_from(LOOKALIKES),
    st.text(
        st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)),
        min_size=1,
        max_size=24,
    ),
    # Names of undecodable bytes, as zip archives from other systems leave them.
    st.binary(min_size=1, max_size=16).map(
        lambda raw: os.fsdecode(raw.replace(b"/", b"_").replace(b"\x00", b"_"))
    ),
    # Names at the file system's 255-byte limit, in one- to four-byte characters.
    st.tuples(
        st.sampled_from(["a", "é", "顔", "😀", " ", "KA.AN1."]),
        st.sampled_from(["", ".png", ".tiff"]),
    )
    .map(lambda pair: _fit_name(pair[0] * 255)[: -len(pair[1]) or None] + pair[1])
    .map(_fit_name),
).filter(_usable)
EMOTIONS = [
    "3.0000000e+00",
    "7",
    "0",
    "8",
    "-1",
    "7.5",
    "inf",
    "nan",
    "-inf",
    "1e999",
    "",
    "3 4",
    "seven",
    "\x00",
]
KINDS = ["face", "face", "face", "noise", "empty", "text", "folder", "fifo", "link", "loop"] + [
    f"emotion {text}" for text in EMOTIONS
]
RANDOM_TREES = st.lists(
    st.tuples(st.lists(NAMES, min_size=1, max_size=3), st.sampled_from(KINDS)),
    min_size=0,
    max_size=12,
)


@st.composite
def ck_trees(draw) -> list[tuple[list[str], str]]:
    """CK+ trees: cohn-kanade-images/S005/001/S005_001_00000001.png ... and
    Emotion/S005/001/S005_001_<last>_emotion.txt, with odd names, counts and contents."""
    part = st.one_of(st.sampled_from(["S005", "S010", "001", "002"]), NAMES)
    entries = []
    sequences = st.tuples(part, part, st.integers(0, 4), st.sampled_from([None, "fifo"] + EMOTIONS))
    for subject, sequence, frames, emotion in draw(st.lists(sequences, max_size=4)):
        for frame in range(1, frames + 1):
            name = f"{subject}_{sequence}_{frame:08d}.png"
            entries.append((["cohn-kanade-images", subject, sequence, name], "face"))
        if emotion is not None:
            name = f"{subject}_{sequence}_{frames:08d}_emotion.txt"
            entries.append(
                (
                    ["Emotion", subject, sequence, name],
                    "fifo" if emotion == "fifo" else f"emotion {emotion}",
                )
            )
    if draw(st.booleans()):  # the tree one level down, as archives unpack it
        entries = [(["CK+"] + parts, kind) for parts, kind in entries]
    return entries + draw(
        st.lists(
            st.tuples(st.lists(NAMES, min_size=1, max_size=2), st.sampled_from(KINDS)), max_size=3
        )
    )


@st.composite
def jaffe_trees(draw) -> list[tuple[list[str], str]]:
    """Flat folders of names like KA.AN1.39.tiff, some of them not quite."""
    names = st.builds(
        lambda subject, code, repeat, serial, suffix: f"{subject}.{code}{repeat}.{serial}{suffix}",
        st.sampled_from(["KA", "KL", "ka", "K", "KAA", "12"]),
        st.sampled_from(["AN", "DI", "FE", "HA", "NE", "SA", "SU", "XX", "ha", "A"]),
        st.sampled_from(["1", "2", "", "x"]),
        st.sampled_from(["39", "0", "99999999999999999999", ""]),
        st.sampled_from([".tiff", ".tif", ".TIFF", ".png", "", ".tiff.bak"]),
    )
    flat = st.lists(
        st.tuples(names.map(lambda name: [name]), st.sampled_from(KINDS)), min_size=1, max_size=10
    )
    return draw(flat) + draw(
        st.lists(
            st.tuples(st.lists(NAMES, min_size=1, max_size=2), st.sampled_from(KINDS)), max_size=2
        )
    )


TREES = st.one_of(RANDOM_TREES, ck_trees(), jaffe_trees())


def build_tree(root: Path, entries: list[tuple[list[str], str]]) -> None:
    """Create files and folders; entries whose path clashes with an earlier one are left out."""
    face = FACE_SEEDS["gray.png"]
    for number, (parts, kind) in enumerate(entries):
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                continue
            if kind == "face":
                # Distinct bytes for each file (PNG allows trailing bytes), so that the cache
                # has one entry per file.
                path.write_bytes(face + number.to_bytes(2, "big"))
            elif kind == "noise":
                path.write_bytes(
                    np.random.default_rng(number).integers(0, 256, 300, np.uint8).tobytes()
                )
            elif kind == "empty":
                path.touch()
            elif kind == "text":
                path.write_text("not an image\n")
            elif kind.startswith("emotion "):
                path.write_text(f"   {kind.split(' ', 1)[1]}\n")
            elif kind == "folder":
                path.mkdir()
            elif kind == "fifo":
                os.mkfifo(path)  # reading it would wait for ever
            elif kind == "link":
                path.symlink_to(root / "nowhere")
            else:
                path.symlink_to(path.parent)  # a folder that contains itself
        except OSError:
            continue  # a clash with an earlier entry (a file where a folder should be)


@pytest.fixture
def tree_root():
    """A fresh folder per hypothesis case (tmp_path would be shared by all of them)."""

    def make(entries) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="fer-fuzz-")) / "dataset"
        folder.mkdir()
        build_tree(folder, entries)
        made.append(folder.parent)
        return folder

    made: list[Path] = []
    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def assert_scan_or_layout_error(outcome: tuple, root: Path) -> None:
    assert outcome[0] != "unexpected", outcome[1]
    if outcome[0] == "refused":
        assert_one_line(outcome[1])
        return
    _, layout, records, skipped = outcome
    assert layout in ("jaffe", "ck+", "folders")
    assert records, "a Scan holds at least one labelled image"
    for path, label, subject in records:
        assert Path(path).is_relative_to(root)
        assert isinstance(label, str) and label
        assert subject is None or subject.strip()
    for path, reason in skipped:
        assert reason.strip()


@FUZZ
@given(entries=TREES, layout=st.sampled_from([None, None, "jaffe", "ck+", "folders"]))
def test_any_folder_scans_to_records_or_a_layout_error(sandbox, tree_root, entries, layout):
    root = tree_root(entries)
    assert_scan_or_layout_error(sandbox.run(scan_case, str(root), layout), root)


@pytest.mark.parametrize(
    "layout_files",
    [
        # JAFFE-looking names that are not JAFFE, and CK+ trees that are not CK+.
        ["KA.XX1.39.tiff", "KA.AN1.39", "KA.AN1.39.tiff/inner.png"],
        ["cohn-kanade-images/S005/001/S005_001_00000001.png", "Emotion"],
        ["cohn-kanade-images", "Emotion/S005/001/S005_001_00000001_emotion.txt"],
        [
            "cohn-kanade-images/S005/001/S005_001_00000001.png",
            "Emotion/S005/001/S005_001_00000001_emotion.txt:fifo",
        ],
        [
            "Emotion/S005/001/S005_001_00000001_emotion.txt:fifo",
            "cohn-kanade-images/S005/001/S005_001_00000001.png:fifo",
        ],
    ],
)
def test_lookalike_layouts_end_in_records_or_a_layout_error(sandbox, tree_root, layout_files):
    entries = []
    for item in layout_files:
        path, _, kind = item.partition(":")
        kind = kind or ("emotion 3" if path.endswith("_emotion.txt") else "face")
        entries.append((path.split("/"), kind))
    root = tree_root(entries)
    for layout in (None, "jaffe", "ck+", "folders"):
        assert_scan_or_layout_error(sandbox.run(scan_case, str(root), layout), root)


def check_cli_outcome(outcome: tuple, as_json: bool) -> None:
    assert outcome[0] != "unexpected", outcome[1]
    _, code, stdout, stderr, failure = outcome
    assert failure is None, failure
    assert "Traceback" not in stdout + stderr
    assert code in (0, 1), (code, stderr)
    if code == 1:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    if code == 0 and as_json:
        report = json.loads(stdout)
        assert report["aligned"] >= 1 and report["found"] >= report["aligned"]


@settings(FUZZ, max_examples=100)
@given(entries=TREES, as_json=st.booleans())
def test_the_cli_on_any_folder_prints_no_traceback(sandbox, tree_root, entries, as_json):
    root = tree_root(entries)
    home = root.parent / "home"
    check_cli_outcome(sandbox.run(cli_case, str(root), str(home), as_json), as_json)


@pytest.mark.parametrize("label", ["[x]", "[bold]", "caf\udce9", "a\tb", "顔"])
def test_class_folder_names_are_shown_as_they_are(sandbox, tree_root, label):
    """Class names are data: rich markup in them is shown, not applied; undecodable bytes
    are shown escaped and do not crash the contact sheet."""
    root = tree_root(
        [([label, "a.png"], "face"), ([label, "b.png"], "face"), (["other", "c.png"], "face")]
    )
    outcome = sandbox.run(cli_case, str(root), str(root.parent / "home"), False)
    check_cli_outcome(outcome, False)
    _, code, stdout, _, _ = outcome
    assert code == 0
    shown = label.encode("utf-8", "backslashreplace").decode().replace("\t", "\\t")
    assert shown in stdout, stdout
