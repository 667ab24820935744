"""Every image comes in as 2-D uint8 grayscale, and every bad file is refused with one line."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_unprivileged, write_image
from fercli.core.errors import ImageError
from fercli.media.images import MAX_FILE_BYTES, load_gray


def assert_refused(path: Path, *fragments: str) -> str:
    """load_gray raises ImageError with a one-line message containing every fragment."""
    with pytest.raises(ImageError) as raised:
        load_gray(path)
    message = str(raised.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message.lower(), message
    return message


def mean_difference(image: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(image.astype(int) - expected.astype(int)).mean())


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tiff", ".bmp"])
def test_colour_files_written_by_opencv_load_as_gray(
    tmp_path, astronaut_path, astronaut_gray, suffix
):
    colour = cv2.imread(str(astronaut_path), cv2.IMREAD_COLOR)
    path = write_image(tmp_path / f"photo{suffix}", colour)

    image = load_gray(path)

    assert image.shape == (512, 512) and image.dtype == np.uint8
    assert mean_difference(image, astronaut_gray) < 2.0


def test_format_is_told_by_content_not_name(tmp_path, astronaut_gray):
    path = write_image(tmp_path / "really-a-png.jpg", astronaut_gray, ".png")
    np.testing.assert_array_equal(load_gray(path), astronaut_gray)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path, astronaut_gray):
    full_range = tmp_path / "full.png"
    Image.fromarray(astronaut_gray.astype(np.uint16) * 257).save(full_range)
    # 12-bit data in a 16-bit file: scaled by its own maximum so that it keeps its contrast.
    twelve_bit = tmp_path / "twelve.png"
    Image.fromarray(astronaut_gray.astype(np.uint16) * 16).save(twelve_bit)
    assert Image.open(full_range).mode.startswith("I;16")

    for path in (full_range, twelve_bit):
        image = load_gray(path)
        assert image.shape == (512, 512) and image.dtype == np.uint8
        assert mean_difference(image, astronaut_gray) < 1.0


def test_rgba_png_loads_as_gray(tmp_path, astronaut_path, astronaut_gray):
    path = tmp_path / "rgba.png"
    rgba = Image.open(astronaut_path).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(path)

    image = load_gray(path)

    assert image.shape == (512, 512) and image.dtype == np.uint8
    assert mean_difference(image, astronaut_gray) < 2.0


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_grey_palette_images_load_through_their_palette(tmp_path, astronaut_gray, suffix):
    # An inverted grey palette: a reader that returned the raw palette indices would give
    # the negative of the picture.
    path = tmp_path / f"palette{suffix}"
    palette_image = Image.fromarray(255 - astronaut_gray, "L").convert("P")
    palette_image.putpalette([255 - index for index in range(256) for _ in range(3)])
    palette_image.save(path)
    assert Image.open(path).mode == "P"

    image = load_gray(path)

    assert image.shape == (512, 512) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, astronaut_gray)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    assert_refused(path, "empty")


@pytest.fixture
def photo_files(tmp_path, astronaut_gray) -> dict[str, Path]:
    pillow_tiff = tmp_path / "pillow.tiff"  # Pillow writes the directory first, OpenCV last
    Image.fromarray(astronaut_gray).save(pillow_tiff)
    return {
        "png": write_image(tmp_path / "photo.png", astronaut_gray),
        "jpeg": write_image(tmp_path / "photo.jpg", astronaut_gray),
        "opencv tiff": write_image(tmp_path / "photo.tiff", astronaut_gray),
        "pillow tiff": pillow_tiff,
        "bmp": write_image(tmp_path / "photo.bmp", astronaut_gray),
    }


@pytest.mark.parametrize("kind", ["png", "jpeg", "opencv tiff", "pillow tiff", "bmp"])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_files(tmp_path, photo_files, kind, fraction):
    data = photo_files[kind].read_bytes()
    path = tmp_path / f"cut{photo_files[kind].suffix}"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_refused(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(
        b"\x00" + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    )
    assert_refused(path, "not an image")


def test_text_file(tmp_path):
    path = tmp_path / "README.jpg"
    path.write_text("These are the JAFFE images.\nSee the licence.\n")
    assert_refused(path, "not an image")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares width x height 8-bit gray pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_png_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100_000, 100_000))

    # Decoding 10 gigapixels would take 10 GB; the header alone is enough to refuse it.
    message = assert_refused(path, "too large", "limit", "100000x100000")
    assert "64,000,000" in message


@pytest.mark.parametrize("kind", ["jpeg", "bmp"])
def test_other_headers_declaring_huge_images_are_refused(tmp_path, photo_files, kind):
    data = bytearray(photo_files[kind].read_bytes())
    if kind == "jpeg":
        start_of_frame = data.find(b"\xff\xc0")
        data[start_of_frame + 5 : start_of_frame + 9] = struct.pack(">HH", 60_000, 60_000)
    else:
        data[18:26] = struct.pack("<ii", 60_000, 60_000)
    path = tmp_path / f"bomb{photo_files[kind].suffix}"
    path.write_bytes(bytes(data))
    assert_refused(path, "too large", "60000x60000")


def test_huge_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as stream:
        stream.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk space
    assert_refused(path, "too large")


def test_folder_is_not_an_image(tmp_path):
    folder = tmp_path / "photo.png"
    folder.mkdir()
    assert_refused(folder, "folder")


def test_a_fifo_or_device_is_not_an_image_and_is_never_opened(tmp_path):
    # They were reported as "empty file (0 bytes)", from the size stat gives them.
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    assert_refused(fifo, "not a regular file")
    assert_refused(Path(os.devnull), "not a regular file")


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "gone.png", "no such file")


def test_unreadable_file(tmp_path, astronaut_gray):
    path = write_image(tmp_path / "secret.png", astronaut_gray)
    path.chmod(0)
    try:
        run_unprivileged(lambda: assert_refused(path, "permission denied"))
    finally:
        path.chmod(0o644)


def _png_1bit(width: int, height: int) -> bytes:
    """A valid black 1-bit grayscale PNG of width x height, built without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the bits
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_opencvs_own_pixel_limit_is_in_force_in_a_fresh_process(tmp_path):
    # 16385 x 8192 is just over the 2**27 pixels fercli sets, far under OpenCV's own 2**30.
    path = tmp_path / "large.png"
    path.write_bytes(_png_1bit(16385, 8192))
    script = (
        "import fercli.faces.align\n"  # imports cv2 the way every command does
        "import cv2, numpy\n"
        "try:\n"
        f"    print(cv2.imdecode(numpy.fromfile({str(path)!r}, numpy.uint8), "
        "cv2.IMREAD_GRAYSCALE).shape)\n"
        "except cv2.error as error:\n"
        "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(error) else error)\n"
    )
    environment = {
        key: value for key, value in os.environ.items() if key != "OPENCV_IO_MAX_IMAGE_PIXELS"
    }

    def run(extra: dict) -> str:
        process = subprocess.run(
            [sys.executable, "-c", script],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env={**environment, **extra},
        )
        return process.stdout.strip()

    assert run({}) == "refused"
    # The file is a good PNG: with a higher limit set by the user (which fercli keeps), it decodes.
    assert run({"OPENCV_IO_MAX_IMAGE_PIXELS": str(2**28)}) == "(8192, 16385)"


def test_a_video_frame_is_grey_exactly_as_the_png_photo_of_it(tmp_path, astronaut_path):
    """Video frames and photos go through one grey conversion: a borderline detection (the
    mission patch of the test photo scores near 0) cannot pass --min-face-score in a video
    and fail it in the photo of the same frame."""
    from fercli.faces.align import face_detector
    from fercli.media.images import as_gray, bgr_to_gray

    frame = cv2.imread(str(astronaut_path), cv2.IMREAD_COLOR)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for picture in (frame, noise, np.dstack([noise, noise[:, :, :1]])):  # BGR and BGRA
        path = write_image(tmp_path / "frame.png", picture)
        assert np.array_equal(bgr_to_gray(picture), load_gray(path))
        assert np.array_equal(as_gray(picture), load_gray(path))
    detector = face_detector()
    as_photo = detector.run(load_gray(astronaut_path), 0, -0.5)[1]
    as_frame = detector.run(bgr_to_gray(frame), 0, -0.5)[1]
    assert len(as_photo) == 2 and list(as_photo) == list(as_frame)  # the face and the patch


def test_pictures_are_written_whole_or_not_at_all_with_one_line_errors(tmp_path):
    # Every PNG fercli writes goes through write_png; a picture OpenCV cannot encode was a
    # ValueError (issue 31), which reached the user as a traceback.
    from fercli.core.errors import FerError, StoreError
    from fercli.media.drawing import confusion_image
    from fercli.media.images import write_png

    picture = np.full((20, 30, 3), 200, np.uint8)
    path = write_png(tmp_path / "new" / "x.png", picture)
    assert path == tmp_path / "new" / "x.png"
    assert np.array_equal(cv2.imread(str(path)), picture)
    again = write_png(path, picture, keep_existing=True)
    assert again == tmp_path / "new" / "x-2.png"
    with pytest.raises(FerError) as unencodable:
        write_png(tmp_path / "empty.png", np.zeros((0, 0), np.uint8))
    assert str(unencodable.value) == (
        f"cannot write {tmp_path / 'empty.png'}: OpenCV could not encode the picture as PNG"
    )
    (tmp_path / "taken").write_text("a file where a folder would go")
    for write in (
        lambda target: write_png(target, picture),
        lambda target: confusion_image(np.eye(2, dtype=int), ["a", "b"], target),
    ):
        with pytest.raises(StoreError) as caught:
            write(tmp_path / "taken" / "x.png")
        assert str(caught.value) == f"cannot write {tmp_path / 'taken'}: File exists"
    assert sorted(path.name for path in tmp_path.rglob("*")) == [
        "new",
        "taken",
        "x-2.png",
        "x.png",
    ]


def _encoded(image: np.ndarray, mode: str) -> bytes:
    """The BGR image as a file of the given kind (PIL for the PNG variants OpenCV does not
    write)."""
    import io

    if mode.startswith("pil-"):
        picture = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
        kind = mode[4:]
        if kind == "RGBA":
            picture.putalpha(Image.fromarray(image[:, :, 0]))
        elif kind == "P":
            picture = picture.convert("P", palette=Image.ADAPTIVE)
        else:
            picture = picture.convert(kind)
        stream = io.BytesIO()
        picture.save(stream, "PNG")
        return stream.getvalue()
    if mode == "png16":
        ok, encoded = cv2.imencode(".png", image.astype(np.uint16) * 257)
    elif mode == "grey.jpg":
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    else:
        ok, encoded = cv2.imencode(mode, image)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize(
    "mode",
    [
        ".png",
        "pil-RGBA",
        "pil-L",
        "pil-LA",
        "pil-P",
        "png16",
        ".jpg",
        "grey.jpg",
        ".bmp",
        ".tiff",
        ".webp",
    ],
)
def test_decoding_the_colours_too_leaves_the_grey_bit_for_bit_as_it_was(mode, astronaut_path):
    # fer predict decodes a photo's colours for YuNet (faces.yunet): the grey that faces are
    # found and aligned in must stay what it was, so that predict and preprocess see the same
    # pixels.
    from fercli.media.images import decode_gray, decode_gray_and_colour

    data = _encoded(cv2.imread(str(astronaut_path)), mode)
    gray, colour = decode_gray_and_colour(data)
    assert gray.dtype == np.uint8 and np.array_equal(gray, decode_gray(data))
    if mode in ("pil-L", "png16"):
        assert colour is None  # grey, or 16 bits: YuNet looks at the grey
    else:
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert colour.shape == (512, 512, 3) and np.array_equal(colour, expected)
    # Colours wanted no larger than a quarter: a JPEG's come at a quarter, the same picture.
    gray, small = decode_gray_and_colour(data, colour_side=128)
    assert np.array_equal(gray, decode_gray(data))
    if mode == ".jpg":
        assert small.shape == (128, 128, 3)
        shrunk = cv2.resize(colour, (128, 128), interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - shrunk).mean() < 3
