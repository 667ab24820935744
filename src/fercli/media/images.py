"""Image files in and out: reading them as 8-bit grayscale, refusing bad ones before they cost
memory, and writing pictures as PNG.

Every command reads images through `load_gray`, so the same file gives the same pixels in
preprocess and predict. The format is told by content, not by file name; the declared size is
read from the header and checked against a pixel limit before anything is decoded. Every
picture fercli writes goes through `write_png`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import sys
from pathlib import Path

# OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS) is set in fercli/__init__.py,
# which runs before any fercli module imports cv2.
import cv2
import numpy as np

from fercli.core.errors import FerError, ImageError
from fercli.core.store import atomic_write

# Refuse to decode an image with more pixels than this (a 64-megapixel photo is ~8000x8000
# and needs 64 MB as grayscale); decompression bombs declare far more.
MAX_PIXELS = 64_000_000
# Refuse to read a file larger than this at all.
MAX_FILE_BYTES = 256 * 1024 * 1024

# Corrupt files are reported by us, one line each; OpenCV's own log lines would only repeat it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff_format(head: bytes) -> str | None:
    """The image format that a file's first bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[1:2] != b"":
        return "PNM"
    return None


def declared_size(data: bytes, image_format: str) -> tuple[int, int]:
    """(width, height) as the header declares them; ImageError where the header is broken."""
    try:
        size = _HEADER_READERS[image_format](data)
    except (struct.error, IndexError, ValueError):
        size = None
    if size is None:
        raise ImageError(f"damaged {image_format} header")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{image_format} header declares an empty image ({width}x{height})")
    return width, height


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        if marker in (0xDA, 0xD9) or length < 2:
            return None
        offset += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    found: dict[int, int] = {}
    for index in range(count):
        entry = data[ifd + 2 + 12 * index : ifd + 14 + 12 * index]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        # Image width and length, tile width and length. libtiff keeps the first of a
        # duplicated tag: reading a later one would let a huge first size past the limit.
        if tag in (256, 257, 322, 323) and tag not in found:
            if kind == 3:
                found[tag] = struct.unpack(order + "H", entry[8:10])[0]
            elif kind == 4:
                found[tag] = struct.unpack(order + "I", entry[8:12])[0]
    if 256 in found and 257 in found:
        # The decoder inflates whole tiles: a 100x100 image in 8192x8192 tiles costs the
        # memory of an 8192x8192 image, so that is the size to check against the limit.
        return max(found[256], found.get(322, 0)), max(found[257], found.get(323, 0))
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", data[6:10])


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)*(\d+)")


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    width_match = _PNM_TOKEN.match(data, 2)
    if width_match is None:
        return None
    height_match = _PNM_TOKEN.match(data, width_match.end())
    if height_match is None:
        return None
    return int(width_match.group(1)), int(height_match.group(1))


_HEADER_READERS = {
    "PNG": _png_size,
    "JPEG": _jpeg_size,
    "TIFF": _tiff_size,
    "BMP": _bmp_size,
    "WebP": _webp_size,
    "GIF": _gif_size,
    "PNM": _pnm_size,
}


def _png_header_chunks_fit(data: bytes) -> bool:
    """Whether every chunk up to the first IDAT lies inside the data. OpenCV reads these
    chunks itself and allocates what a chunk's length field says before reading it: one
    damaged byte in a 7 KB file asked it for 4 GB. (libpng reads the rest within bounds.)"""
    offset = 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        offset += 12 + length  # length, type, payload, CRC
        if offset > len(data):
            return False
        if kind in (b"IDAT", b"IEND"):
            return True
    return False


def _check_complete(data: bytes, image_format: str) -> None:
    """Raise for the truncations that decoders would otherwise patch over or print about."""
    # IEND with its fixed CRC: cannot occur by chance inside compressed data, and trailing
    # bytes after it (some writers append metadata) do not matter.
    if image_format == "PNG" and data.rfind(b"IEND\xaeB`\x82") < 0:
        raise ImageError("truncated PNG (no IEND chunk at the end)")
    if image_format == "PNG" and not _png_header_chunks_fit(data):
        raise ImageError("truncated or damaged PNG (a chunk runs past the end of the file)")
    if image_format == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0:
            raise ImageError("truncated JPEG (no end-of-image marker after the image data)")


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C libraries print straight to the process's stderr (a decoder's "libpng
    error: IDAT: CRC error", Ray's connection retries); the caller reports a failure as one
    line of its own."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield  # no usable stderr to protect
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_file(path: Path) -> bytes:
    """A file's bytes, refusing empty, huge and unreadable files with a reason."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):  # whose size says nothing of what it gives
            raise ImageError("not a regular file (a FIFO, socket or device)")
        size = info.st_size
        if size == 0:
            raise ImageError("empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                f"file too large ({size / 2**20:.0f} MB; limit {MAX_FILE_BYTES // 2**20} MB)"
            )
        return path.read_bytes()
    except PermissionError:
        raise ImageError("cannot read the file: permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as error:
        raise ImageError(f"cannot read the file: {error.strerror or error}") from None


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    """The format of image bytes, after the checks that need no decoding; ImageError if bad."""
    image_format = sniff_format(data[:16])
    if image_format is None:
        raise ImageError("not an image (unrecognised content)")
    width, height = declared_size(data, image_format)
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels declared, limit {max_pixels:,} pixels"
        )
    _check_complete(data, image_format)
    return image_format


def _decode(data: bytes, max_pixels: int, flags: int) -> np.ndarray:
    """OpenCV's decoder behind the checks; ImageError where it gives up."""
    image_format = check_image(data, max_pixels)
    try:
        with quiet_stderr():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageError(f"corrupt or truncated {image_format} (the decoder gave up)")
    return image


def decode_gray(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a 2-D uint8 array; ImageError with the reason otherwise.

    Colour, RGBA, palette and 16-bit or float images all come out as 8-bit grayscale; a
    deeper image is scaled by its own maximum so that 12-bit data keeps its contrast.
    """
    return _gray_8bit(_decode(data, max_pixels, cv2.IMREAD_ANYDEPTH))


def _gray_8bit(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        image = _to_8bit(image)
    return np.ascontiguousarray(image)


# cv2.imdecode's flags for colours decoded at 1/n of the size: a JPEG does that while it
# decodes (a 4000x3000 photo at a quarter: 24 ms against 84 ms for all of it, and a 12th of
# the memory); other formats are decoded whole and shrunk.
_REDUCED_COLOUR = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_gray_and_colour(
    data: bytes, max_pixels: int = MAX_PIXELS, colour_side: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode image bytes to decode_gray's grey, bit for bit, and the picture in colour
    (8-bit BGR; None for a grey PNG or one of 16 bits a channel, whose grey says more).

    A PNG is decoded once: its grey is libpng's, which bgr_to_gray computes exactly from the
    colours. Other formats are decoded twice: a JPEG's grey is its stored brightness, which no
    conversion of the decoded colours gives back exactly (about 1 ms more a 512x512 photo).
    A file decode_gray reads is read (colours None where only they cannot be decoded); one it
    refuses is refused with its reason. colour_side: the colours are wanted this large at
    least (on the longer side): decoded twice, they then come at a half, a quarter or an
    eighth of the size where that is still as large (the same shape, fewer pixels).
    """
    if sniff_format(data[:16]) != "PNG":
        gray = decode_gray(data, max_pixels)
        reduction = _reduction(max(gray.shape), colour_side)
        try:
            return gray, _decode(data, max_pixels, _REDUCED_COLOUR[reduction])
        except ImageError:  # damaged where only the colours are: the grey is what counts
            return gray, None
    try:
        image = _decode(data, max_pixels, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except ImageError:
        return decode_gray(data, max_pixels), None  # readable as grey, or its reason
    if image.ndim == 2:
        return _gray_8bit(image), None  # a grey PNG: what decode_gray reads
    if image.dtype != np.uint8 or image.shape[2] < 3:
        return decode_gray(data, max_pixels), None
    colour = np.ascontiguousarray(image[:, :, :3])
    return bgr_to_gray(colour), colour


def _reduction(longest: int, wanted: int) -> int:
    """The largest of 1, 2, 4, 8 that longest divided by it (rounded up) is wanted or more."""
    if wanted <= 0:
        return 1
    return max(n for n in _REDUCED_COLOUR if n == 1 or -(-longest // n) >= wanted)


def _to_8bit(image: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    values -= min(float(values.min()), 0.0)
    peak = float(values.max())
    if peak > 0:
        values *= 255.0 / peak
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def load_gray(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 2-D uint8 grayscale; ImageError with the reason otherwise."""
    return decode_gray(read_file(Path(path)), max_pixels)


def load_color(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit BGR for drawing on (annotated copies)."""
    return _decode(read_file(Path(path)), max_pixels, cv2.IMREAD_COLOR)


def write_png(path: Path, picture: np.ndarray, keep_existing: bool = False) -> Path:
    """Write a picture (8-bit grey, BGR or BGRA) as a PNG file, atomically: a failure leaves
    no half-written file, and any file that was there as it was. keep_existing: never replace
    a file; the next free name (x-2.png) instead. Returns the path written. FerError naming
    the file if the picture cannot be encoded, StoreError if it cannot be written (a full
    disk, a sub-folder's name taken by a file)."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(".png", picture)
    except cv2.error:
        ok = False
    if not ok:
        raise FerError(f"cannot write {path}: OpenCV could not encode the picture as PNG")
    data = encoded.tobytes()
    return atomic_write(path, lambda stream: stream.write(data), keep_existing=keep_existing)


# libpng's colour to grey (what OpenCV asks of it when a colour PNG is read as grey, as photos
# are): 0.299 red and 0.587 green in steps of 1/32768, blue the rest, the sum truncated. The
# offset of -16383.5 makes cv2.transform's rounding that truncation (checked equal for all
# 16.7 million colours).
PNG_GRAY = np.array([[3737, 19234, 9797, -16383.5]], np.float64) / 32768


def bgr_to_gray(image: np.ndarray) -> np.ndarray:
    """An 8-bit BGR (or BGRA) image in grey exactly as fercli reads a PNG photo of it: video
    frames and photos then give the same detections and scores. (cvtColor rounds where libpng
    truncates: 44% of the test photo's pixels differ by 1 and a detection's score by up to
    0.04, enough for a borderline one to pass --min-face-score in a video and not in the
    photo of the same frame.) About 0.8 ms a 640x480 frame, against 0.16 ms for cvtColor."""
    gray = cv2.transform(np.ascontiguousarray(image[:, :, :3]), PNG_GRAY)
    return gray if gray.ndim == 2 else gray[:, :, 0]


def image_name(image: object) -> str | None:
    """The file an image argument of fercli's functions names, as open() takes one: a str, a
    bytes path or an os.PathLike (pathlib's paths among them), as text; None for anything
    else (an array)."""
    if isinstance(image, (str, bytes, os.PathLike)):
        return os.fsdecode(image)
    return None


def as_gray(image: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A 2-D uint8 image from a path (a str or os.PathLike, read as fercli reads images) or an
    array: grayscale, BGR or BGRA, 8-bit. ImageError for anything else."""
    if isinstance(image, (str, os.PathLike)):
        name = os.fsdecode(image)
        if not name.strip():  # Path("") is the current folder
            raise ImageError("an empty path: give an image file or array")
        return load_gray(Path(name))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"an image array must be 8-bit (uint8), not {array.dtype}")
    if array.ndim in (2, 3) and (array.shape[0] == 0 or array.shape[1] == 0):
        raise ImageError(f"an empty image array (shape {array.shape}): no pixels to look at")
    if array.ndim in (2, 3) and array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageError(
            f"image array too large ({array.shape[1]}x{array.shape[0]} pixels; limit "
            f"{MAX_PIXELS:,})"
        )
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return bgr_to_gray(array)
    raise ImageError(
        f"an image array must be (height, width) or (height, width, 3 or 4), not {array.shape}"
    )


def single_threaded_opencv() -> None:
    """A run_tasks initializer for OpenCV work: one process per core already, so OpenCV's
    own threads would only compete with them."""
    cv2.setNumThreads(1)
