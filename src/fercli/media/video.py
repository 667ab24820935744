"""Video files in: containers told by their first bytes, opened with OpenCV's FFmpeg, read
as a stream by a reader thread (a few frames ahead), and why a file cannot be read."""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import FerError

# Decoded frames the reader thread may hold ahead of the analysis, and the most memory they
# may take together (a 4K frame is 25 MB: then one frame ahead).
READ_AHEAD = 4
READ_AHEAD_BYTES = 32 * 2**20
# A video whose header declares more frames than could be read, by more than this share
# (containers estimate the count from the duration), was cut short or is damaged.
FRAME_COUNT_SLACK = 0.01
# A frame rate a video file may believably declare; outside it (0, a millionth, two billion: a
# damaged or crafted header) the video is timed at FALLBACK_FPS instead, and the user told.
MIN_FPS, MAX_FPS = 0.1, 1000.0
FALLBACK_FPS = 25.0


def file_fps(declared: float) -> tuple[float, str | None]:
    """The frame rate to time a video file by, and a note when its declared one is absurd."""
    if math.isfinite(declared) and MIN_FPS <= declared <= MAX_FPS:
        return declared, None
    return FALLBACK_FPS, (
        f"its header declares {declared:g} frames a second: timed at {FALLBACK_FPS:g} instead"
    )


# Container signatures (first 16 bytes): told by content, as images are.
_RIFF_VIDEO = (b"AVI ", b"AVIX")
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def sniff_video(head: bytes) -> str | None:
    """The video container that a file's first bytes announce, or None."""
    if head[4:8] in _ISO_BOXES:
        return "MP4/QuickTime"
    if head[:4] == b"RIFF" and head[8:12] in _RIFF_VIDEO:
        return "AVI"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"FLV\x01"):
        return "FLV"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "ASF/WMV"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "MPEG"
    return None


def is_video(path: Path) -> bool:
    """Whether a file's first bytes are a video container's (False for anything but a
    regular file: reading a FIFO could wait for ever)."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as stream:
            return sniff_video(stream.read(16)) is not None
    except OSError:
        return False


class FrameReader:
    """The frames of a video, decoded by a thread a few frames ahead: (number, seconds, BGR
    frame) for the frames wanted(number, seconds) accepts; the others are only grabbed.
    start: the number of the capture's next frame (a capture moved there first); limit: read
    at most this many frames (None: to the end)."""

    def __init__(
        self,
        capture,
        fps: float | None,
        wanted: Callable[[int, float], bool],
        frame_bytes: int,
        start: int = 0,
        limit: int | None = None,
    ) -> None:
        self.capture = capture
        self.fps = fps
        self.wanted = wanted
        self.start = start
        self.limit = limit
        self.frames = queue.Queue(max(1, min(READ_AHEAD, READ_AHEAD_BYTES // max(1, frame_bytes))))
        self.stop = threading.Event()
        self.count = 0  # frames read
        self.failure: str | None = None
        self.thread = threading.Thread(target=self._run, name="video-reader", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.count == self.limit or not self.capture.grab():
                    break
                number = self.start + self.count
                self.count += 1
                seconds = (
                    number / self.fps
                    if self.fps
                    else self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                )
                if not self.wanted(number, seconds):
                    continue
                ok, frame = self.capture.retrieve()
                if not ok or frame is None:
                    self.count -= 1
                    break
                self._put((number, seconds, frame))
        except Exception as error:  # a decoder failure must not leave the reader waiting
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self._put(None)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        self.thread.start()
        try:
            while True:
                item = self.frames.get()
                if item is None:
                    return
                yield item
        finally:
            self.stop.set()
            self.thread.join()


def open_video(path: Path):
    """cv2.VideoCapture on path, through FFmpeg; FerError if it does not open."""
    from fercli.media.images import quiet_stderr

    if not path.is_file():
        raise FerError("no such file" if not path.exists() else "not a regular file")
    with quiet_stderr():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise FerError(f"cannot open it as a video: {_why_unreadable(path)}")
    return capture


def _why_unreadable(path: Path) -> str:
    """Why FFmpeg could not open a video, as far as its container's structure tells."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(16)
            size = path.stat().st_size
            if sniff_video(head) == "MP4/QuickTime":
                return _mp4_problem(stream, size)
            if sniff_video(head) == "AVI":
                return _avi_problem(head + stream.read(1 << 16))
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"
    return "no video stream, or a container or codec this OpenCV build cannot read"


def _mp4_problem(stream, size: int) -> str:
    """What is wrong with an MP4/QuickTime file's top-level boxes."""
    offset, boxes = 0, {}
    while offset + 8 <= size:
        stream.seek(offset)
        header = stream.read(16)
        length, kind = int.from_bytes(header[:4], "big"), header[4:8]
        if length == 1 and len(header) >= 16:
            length = int.from_bytes(header[8:16], "big")
        elif length == 0:
            length = size - offset
        if length < 8 or offset + length > size:
            return (
                f"truncated MP4 (its {kind.decode('latin-1')!r} box runs past the end of the file, "
                f"at byte {size:,})"
            )
        boxes[kind] = (offset, length)
        offset += length
    if b"moov" not in boxes:
        return (
            "MP4 without its index (no 'moov' box): cut off before its end, or still being written"
        )
    start, length = boxes[b"moov"]
    stream.seek(start)
    index = stream.read(min(length, 1 << 24))
    if b"vide" not in index:
        return "no video stream (the file's tracks hold no video)"
    return "a codec this OpenCV build cannot decode, or damaged data"


def _avi_problem(data: bytes) -> str:
    """What is wrong with an AVI file, from its stream headers ('strh' chunks: size, then the
    stream type, then the codec)."""
    found = data.find(b"strh")
    while found >= 0 and data[found + 8 : found + 12] != b"vids":
        found = data.find(b"strh", found + 4)
    if found < 0:
        return "no video stream (the AVI has no video stream header)"
    codec = data[found + 12 : found + 16]
    name = codec.decode("latin-1") if codec.isascii() and codec.strip(b"\x00 ") else "unknown"
    return f"a codec ({name!r}) this OpenCV build cannot decode, or damaged data"


def reading_problem(reader: FrameReader, declared: int) -> str | None:
    """Why reading stopped early, if it did: a damaged or cut-off file, or no frame at all."""
    return stream_problem(reader.count, reader.failure, declared)


def stream_problem(count: int, failure: str | None, declared: int) -> str | None:
    """reading_problem of a video of which count frames were read from the start, then the
    decoder failed (failure) or the frames ended (None)."""
    if failure:
        return f"the decoder failed after {count} frames ({failure})"
    if count == 0:
        if declared:
            return (
                f"no frame could be decoded (the header declares {declared}): a codec this OpenCV "
                "build "
                "cannot decode, or damaged data"
            )
        return "no frames: the video is empty"
    if declared and count < declared * (1 - FRAME_COUNT_SLACK) - 1:
        return (
            f"the video ends after {count} of the {declared} frames its header declares "
            "(truncated or damaged); the frames before are reported"
        )
    return None


def avi_frames_on_disk(path: Path) -> int | None:
    """The video frames ('##dc'/'##db' chunks of the 'movi' lists, in every RIFF segment) an
    AVI file holds whole, read from its chunk headers alone (a seek per frame, no decoding);
    None if it is not a RIFF AVI. A file cut short by a full disk holds fewer than were
    written, whatever its patched-up header says."""
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if stream.read(12)[8:12] != b"AVI ":
            return None
        count, offset = 0, 0
        while offset + 12 <= size:
            stream.seek(offset)
            head = stream.read(12)
            if head[:4] != b"RIFF" or head[8:12] not in _RIFF_VIDEO:
                break
            end = offset + 8 + int.from_bytes(head[4:8], "little")
            count += _frames_in(stream, offset + 12, min(end, size), size)
            offset = end + (end & 1)
        return count


def _frames_in(stream, start: int, end: int, size: int) -> int:
    """Whole frame chunks among the chunks from start to end, inside 'movi' lists."""
    count, offset = 0, start
    while offset + 8 <= end:
        stream.seek(offset)
        head = stream.read(12)
        kind, length = head[:4], int.from_bytes(head[4:8], "little")
        if kind == b"LIST" and head[8:12] == b"movi":
            count += _movi_frames(stream, offset + 12, min(offset + 8 + length, end), size)
        offset += 8 + length + (length & 1)
    return count


def _movi_frames(stream, start: int, end: int, size: int) -> int:
    count, offset = 0, start
    while offset + 8 <= end:
        stream.seek(offset)
        head = stream.read(8)
        length = int.from_bytes(head[4:8], "little")
        if offset + 8 + length > size:
            break  # cut off here
        if head[2:4] in (b"dc", b"db"):
            count += 1
        elif head[:4] == b"LIST":  # 'rec ' lists group chunks
            count += _movi_frames(stream, offset + 12, offset + 8 + length, size)
        offset += 8 + length + (length & 1)
    return count
