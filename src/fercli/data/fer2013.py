"""The FER2013 layout: one CSV of 48x48 grayscale faces (`emotion,pixels,Usage`).

Rows are read, decoded and aligned in a stream: a few chunks of rows are in flight at a time,
so the decoded images are never all in memory (35,887 rows would be 83 MB of pixels, the
text twice that), only the 32x32 crops are kept. Usage (Training, PublicTest, PrivateTest)
is kept per image as its predefined split, which `fer train --split` and `fer evaluate
--split` select.
"""

from __future__ import annotations

import csv
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.core.errors import LayoutError
from fercli.core.events import Progress, items
from fercli.core.labels import label_order
from fercli.data.prepared import face_crops_note, save_prepared, unaligned_counts
from fercli.media.discover import Skipped

if TYPE_CHECKING:
    from fercli.data.prepared import PreparedDataset, PreprocessReport

HEADER = ("emotion", "pixels", "Usage")
SIDE = 48
LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
CHUNK = 256  # rows handed to a worker at a time
# Largest CSV field: one row's pixels are about 9 kB of text; a longer field is no FER2013 row.
MAX_FIELD = 64 * 1024


def is_fer2013(path: Path) -> bool:
    """Whether path is a CSV file whose header is FER2013's (the layout is detected by it)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as stream:
            first = stream.readline(4096)
    except OSError:
        return False
    return [name.strip().lower() for name in first.strip().lstrip("\ufeff").split(",")][:2] == [
        "emotion",
        "pixels",
    ]


def count_rows(path: Path) -> int:
    """The number of rows of a FER2013 CSV after its header (lines, read without parsing):
    how many images it holds, for choosing the crop size before any is aligned."""
    try:
        with open(path, "rb") as stream:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    except OSError as error:
        raise LayoutError(f"{path}: cannot read the file ({error.strerror or error})") from None
    return max(lines - 1, 0)


def read_rows(path: Path, skipped: list[Skipped]) -> Iterator[tuple[int, int, str, np.ndarray]]:
    """(row number, label index, split, 48x48 uint8 image) for each good row of a FER2013
    CSV, read one row at a time. A bad row (wrong pixel count, label out of range, ...) is
    added to skipped with the reason and the rest go on. LayoutError for a file without
    FER2013's header."""
    csv.field_size_limit(MAX_FIELD)
    try:
        stream = open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as error:
        raise LayoutError(f"{path}: cannot read the file ({error.strerror or error})") from None
    with stream:
        reader = csv.reader(stream)
        try:
            header = [name.strip().lstrip("\ufeff") for name in next(reader, [])]
        except csv.Error as error:
            raise LayoutError(f"{path}: not a FER2013 CSV ({error})") from None
        lowered = [name.lower() for name in header]
        if "emotion" not in lowered or "pixels" not in lowered:
            raise LayoutError(
                f"{path}: not a FER2013 CSV: the header is {','.join(header)[:80]!r}, "
                f"expected {','.join(HEADER)}"
            )
        label_column, pixel_column = lowered.index("emotion"), lowered.index("pixels")
        usage_column = lowered.index("usage") if "usage" in lowered else None
        number = 1
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                skipped.append(Skipped(f"{path}#row{number}", f"row {number}: not CSV ({error})"))
                continue
            if not row:
                continue
            problem, item = _parse(row, label_column, pixel_column, usage_column, number)
            if problem:
                skipped.append(Skipped(f"{path}#row{number}", problem))
            else:
                yield item


def _parse(
    row: list[str], label_column: int, pixel_column: int, usage_column: int | None, number: int
):
    """(problem, None) or (None, (number, label, split, image)) for one CSV row."""
    if len(row) <= max(label_column, pixel_column, usage_column or 0):
        return f"row {number}: {len(row)} fields, the header has more", None
    text = row[label_column].strip()
    # isascii(): isdigit() alone accepts "²", which int() refuses; short: int() of 5,000 digits
    # raises too.
    if not (text.isascii() and text.isdigit() and len(text) < 4 and int(text) < len(LABELS)):
        return f"row {number}: label {text[:20]!r} is not one of 0-{len(LABELS) - 1}", None
    values = _pixels(row[pixel_column])
    if values is None:
        return f"row {number}: the pixels are not whole numbers", None
    if values.size != SIDE * SIDE:
        return f"row {number}: {values.size} pixels, not {SIDE * SIDE} ({SIDE}x{SIDE})", None
    if values.min() < 0 or values.max() > 255:
        return f"row {number}: a pixel value outside 0-255", None
    split = row[usage_column].strip() if usage_column is not None else ""
    return None, (number, int(text), split, values.astype(np.uint8).reshape(SIDE, SIDE))


def _pixels(text: str) -> np.ndarray | None:
    """The whole numbers in text, separated by white space; None if it holds anything else.

    NumPy's own text parser reads a row in a quarter of the time that splitting it in Python
    takes, which made reading the CSV a fifth of the work; it stops early at anything it
    cannot read, and such a row is read again the strict way.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy warns, and returns what it read, on bad text
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
            if values.size == SIDE * SIDE:
                return values
        except (ValueError, DeprecationWarning):
            pass
    try:
        return np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        return None


def align_chunk(
    chunk: list[tuple[int, int, str, np.ndarray]], config: PreprocessConfig, face_crops: bool
) -> list[tuple]:
    """(number, label, split, crop or None, reason, whether the crop was aligned as a face crop
    (faces.face_crops), whether it passed the face check) for each row of a chunk; runs in
    workers. face_crops: aligned even where the face check turns the face down (--face-crops)."""
    from fercli.faces.pipeline import FAILED, align_images

    images = (((number, label, split), image) for number, label, split, image in chunk)
    results = []
    aligned = align_images(images, config, largest_only=True, face_crops=face_crops)
    for (number, label, split), found in aligned:
        if found.faces:
            face = found.faces[0]
            results.append(
                (number, label, split, face.crop, None, face.whole_image, face.face_check)
            )
        elif found.status == FAILED:
            reason = f"row {number}: {found.reason}"
            results.append((number, label, split, None, reason, False, True))
        else:
            reason = f"row {number}: {found.reason} in the 48x48 image"
            results.append((number, label, split, None, reason, False, True))
    return results


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def aligned_rows(
    path: Path,
    config: PreprocessConfig,
    workers: int,
    skipped: list[Skipped],
    progress: Progress | None = None,
    face_crops: bool = False,
) -> Iterator[tuple]:
    """align_chunk's results for every good row, in row order. The rows are read as workers
    become free (parallel.run_tasks), so the file is never all in memory."""
    from fercli.core.parallel import run_tasks
    from fercli.faces.align import face_detector, landmark_predictor
    from fercli.media.images import single_threaded_opencv

    if workers > 1:
        # Loaded here first: on a first run the landmark model is converted once, not once in
        # every worker, and forked workers share both models.
        face_detector()
        landmark_predictor()
    done = 0
    chunks = _chunks(read_rows(path, skipped), CHUNK)
    with closing(
        run_tasks(
            partial(align_chunk, config=config, face_crops=face_crops),
            chunks,
            workers,
            initializer=single_threaded_opencv,
        )
    ) as results:
        for chunk_results in results:
            done += len(chunk_results)
            if progress:
                progress(items(done, None))  # the total is not known before the end of the file
            yield from chunk_results


def preprocess_fer2013(
    path: Path,
    config: PreprocessConfig,
    workers: int,
    progress: Progress | None = None,
    made_by: str = "preprocess",
    face_crops: bool = False,
):
    """Align every face of a FER2013 CSV and save the prepared dataset (with each image's
    split); returns a PreprocessReport. Rows that are not FER2013 rows and faces dlib cannot
    find are skipped with the reason. face_crops: as preprocess_dataset's."""
    from fercli.data.prepared import PreprocessReport

    started = time.perf_counter()
    path = Path(path)
    bad_rows: list[Skipped] = []
    no_face: list[Skipped] = []
    crops, labels, splits, paths = [], [], [], []
    unaligned: list[tuple[str, str]] = []  # (label, split) of the rows that gave no crop
    rows = whole_images = unchecked = 0
    for number, label, split, crop, reason, whole_image, face_check in aligned_rows(
        path, config, workers, bad_rows, progress, face_crops
    ):
        rows += 1
        whole_images += whole_image
        unchecked += not face_check
        if crop is None:
            no_face.append(Skipped(f"{path}#row{number}", reason))
            unaligned.append((LABELS[label], split))
            continue
        crops.append(crop)
        labels.append(LABELS[label])
        splits.append(split)
        paths.append(f"{path}#row{number}")
    classes = Counter(labels)
    report = PreprocessReport(
        source=str(path),
        layout="fer2013",
        found=rows + len(bad_rows),
        aligned=len(crops),
        skipped=bad_rows + no_face,
        classes={label: classes[label] for label in label_order(classes)},
        subjects={},
        several_faces=[],
        cache_hits=0,
        seconds=0.0,
        workers=workers,
        face_crops=whole_images,
        unchecked_faces=unchecked,
        every_image_a_face=face_crops,
        crop_size=config.crop_size,
    )
    report.notes += _fer2013_notes(report, bad_rows, len(no_face), rows, splits)
    if crops:
        dataset = _fer2013_dataset(crops, labels, splits, paths, unaligned, made_by)
        save_prepared(report, dataset, config)
    report.seconds = time.perf_counter() - started
    return report


def _fer2013_notes(
    report: PreprocessReport, bad_rows: list[Skipped], no_face: int, rows: int, splits: list[str]
) -> list[str]:
    """What a FER2013 report says of it: the images taken as face crops whole, the rows that
    are not FER2013 rows, the faces not found (of rows), and its predefined splits (splits:
    each crop's Usage)."""
    notes = []
    if report.face_crops:
        notes.append(face_crops_note(report.face_crops, report.aligned, report.unchecked_faces))
    if bad_rows:
        notes.append(
            f"{len(bad_rows)} rows are not FER2013 rows (skipped; the first: {bad_rows[0].reason})"
        )
    if no_face:
        notes.append(f"{no_face} of {rows} faces not found in their 48x48 image (skipped)")
    counted = Counter(splits)
    if any(counted):
        notes.append(
            "predefined splits (Usage): "
            + ", ".join(f"{name} {count}" for name, count in counted.items())
        )
    return notes


def _fer2013_dataset(
    crops: list[np.ndarray],
    labels: list[str],
    splits: list[str],
    paths: list[str],
    unaligned: list[tuple[str, str]],
    made_by: str,
) -> PreparedDataset:
    """The prepared dataset of a FER2013 CSV's aligned rows: no subjects, each crop's split,
    and the count of rows that gave no crop (unaligned: their label and split)."""
    from fercli.data.prepared import PreparedDataset

    return PreparedDataset(
        crops=np.stack(crops),
        labels=np.array(labels),
        subjects=np.array([""] * len(crops)),
        paths=np.array(paths),
        meta={
            "scan": {},
            "splits": sorted(set(splits) - {""}),
            "made_by": made_by,
            "unaligned": unaligned_counts(
                [label for label, _ in unaligned], [split for _, split in unaligned]
            ),
        },
        splits=np.array(splits),
    )
