"""Images that would cost gigabytes are refused from their header, before memory is spent.

Each bomb is a small file (a few bytes to a few hundred KB) whose header declares far more
pixels than the limit, or which makes a decoder allocate by other means (tiles, a chunk
length). The memory check runs in a fresh process, whose peak resident size is its own.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import face_variant, tiff, write_image
from fercli.core.errors import ImageError
from fercli.media.images import MAX_PIXELS, load_gray

FER = Path(sys.executable).with_name("fer")
HUGE = 60_000  # 60000 x 60000 = 3.6 gigapixels: 3.6 GB as 8-bit gray


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_declaring(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def deflated_zeros(count: int) -> bytes:
    """zlib data that inflates to count zero bytes, made without holding them all."""
    packer = zlib.compressobj(9)
    block = bytes(2**22)
    parts = [packer.compress(block) for _ in range(count // len(block))]
    parts.append(packer.compress(bytes(count % len(block))))
    return b"".join(parts) + packer.flush()


def jpeg_declaring(face: np.ndarray, width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".jpg", face)[1].tobytes())
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    return tiff(
        [
            (256, 4, width),
            (257, 4, height),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, 0),
            (277, 3, 1),
            (278, 4, 1),
            (279, 4, 64),
        ],
        b"\x00" * 64,
    )


def webp_declaring(face: np.ndarray, width: int, height: int) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(face).save(stream, "WEBP", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    data = bytearray(stream.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def bombs(astronaut_gray, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """{name: (file, what the refusal must say)}."""
    face = face_variant(astronaut_gray, 0, 48)
    limit = f"limit {MAX_PIXELS:,} pixels"
    declared = f"{HUGE}x{HUGE} pixels declared, {limit}"
    bmp = bytearray(cv2.imencode(".bmp", face)[1].tobytes())
    bmp[18:26] = struct.pack("<ii", HUGE, HUGE)
    gif = io.BytesIO()
    Image.fromarray(face).save(gif, "GIF")
    gif = bytearray(gif.getvalue())
    gif[6:10] = struct.pack("<HH", HUGE, HUGE)
    side = 10_000  # 100 megapixels: above the limit, below OpenCV's own backstop
    strip = deflated_zeros(side * side)
    tile = 8192
    tiles = deflated_zeros(tile * tile)
    good_png = cv2.imencode(".png", face)[1].tobytes()
    contents = {
        "bomb.png": (png_declaring(HUGE, HUGE), declared),
        "bomb.jpg": (jpeg_declaring(face, HUGE, HUGE), declared),
        "bomb.tiff": (tiff_declaring(HUGE, HUGE), declared),
        "bomb.bmp": (bytes(bmp), declared),
        "bomb.webp": (webp_declaring(face, HUGE, HUGE), declared),
        "bomb.gif": (bytes(gif), declared),
        "bomb.pgm": (b"P5\n%d %d\n255\n" % (HUGE, HUGE) + b"\x00" * 64, declared),
        # The size twice: libtiff decodes with the first, a reader of the last sees 10x10.
        "duplicate-tags.tiff": (
            tiff(
                [
                    (256, 4, side),
                    (256, 4, 10),
                    (257, 4, side),
                    (257, 4, 10),
                    (258, 3, 8),
                    (259, 3, 8),
                    (262, 3, 1),
                    (273, 4, 0),
                    (277, 3, 1),
                    (278, 4, side),
                    (279, 4, len(strip)),
                ],
                strip,
            ),
            f"{side}x{side} pixels declared, {limit}",
        ),
        # A 100x100 image in 8192x8192 tiles: the decoder inflates whole tiles.
        "huge-tiles.tiff": (
            tiff(
                [
                    (256, 4, 100),
                    (257, 4, 100),
                    (258, 3, 8),
                    (259, 3, 8),
                    (262, 3, 1),
                    (277, 3, 1),
                    (322, 4, tile),
                    (323, 4, tile),
                    (324, 4, 0),
                    (325, 4, len(tiles)),
                ],
                tiles,
            ),
            f"{tile}x{tile} pixels declared, {limit}",
        ),
        # One damaged length field: the first chunk after the header claims 4 GB.
        "chunk-length.png": (
            good_png[:33] + b"\xff\xff\x19\xb1" + good_png[37:],
            "a chunk runs past the end of the file",
        ),
    }
    folder = tmp_path_factory.mktemp("bombs")
    result = {}
    for name, (data, expected) in contents.items():
        assert len(data) < 300_000, name
        (folder / name).write_bytes(data)
        result[name] = (folder / name, expected)
    return result


def test_bombs_are_refused_from_their_header(bombs):
    for name, (path, expected) in bombs.items():
        with pytest.raises(ImageError) as raised:
            load_gray(path)
        message = str(raised.value)
        assert expected in message, (name, message)
        assert "\n" not in message


MEASURE = """
import json, resource, sys
from fercli.core.errors import ImageError
from fercli.media.images import load_gray

def peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB; bytes on macOS
    return peak // (2**20 if sys.platform == "darwin" else 1024)

load_gray(sys.argv[1])  # a real image first: what decoding itself costs is the baseline
baseline = peak_mb()
for path in sys.argv[2:]:
    try:
        load_gray(path)
        outcome = "decoded"
    except ImageError as error:
        outcome = str(error)
    grown = peak_mb() - baseline
    print(json.dumps({"path": path, "outcome": outcome, "grown_mb": grown}), flush=True)
"""


def test_refusing_bombs_costs_no_memory(bombs, faces, tmp_path):
    control = write_image(tmp_path / "face.png", faces(0))
    paths = [str(path) for path, _ in bombs.values()]

    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(control), *paths],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )

    results = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(results) == len(paths)
    for result in results:
        assert result["outcome"] != "decoded", result
        # The peak is cumulative: the first bomb that cost memory shows in every line after.
        assert result["grown_mb"] < 64, f"{Path(result['path']).name} grew the process: {result}"


def test_preprocess_skips_bombs_with_the_limit_and_aligns_the_rest(bombs, faces, tmp_path):
    dataset = tmp_path / "dataset"
    write_image(dataset / "happy" / "face.png", faces(0))
    for name, (path, _) in bombs.items():
        (dataset / "happy" / name).write_bytes(path.read_bytes())

    completed = subprocess.run(
        [str(FER), "preprocess", str(dataset), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["aligned"] == 1 and report["found"] == len(bombs) + 1
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]}
    for name, (_, expected) in bombs.items():
        assert expected in reasons[name], (name, reasons[name])
