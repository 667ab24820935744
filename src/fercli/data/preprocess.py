"""fer preprocess: a dataset folder -> cached, aligned crops and a prepared dataset."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from fercli.core.config import BATCH_PIXELS, PreprocessConfig, ScanConfig
from fercli.core.errors import FerError, ImageError, NoFaceError
from fercli.core.events import Progress, items
from fercli.core.labels import label_order
from fercli.core.parallel import (
    batches,
    default_workers,
    effective_workers,
    run_tasks,
)
from fercli.data.cache import CacheEntry, CropCache, content_key
from fercli.data.datasets import scan_dataset
from fercli.data.fer2013 import is_fer2013
from fercli.data.prepared import (
    PreparedDataset,
    PreprocessReport,
    save_prepared,
)
from fercli.faces.align import (
    AlignedFace,
    align_batch,
    detect_faces,
    landmark_predictor,
    landmarks_load_quickly,
    no_face_error,
)
from fercli.media.discover import Skipped
from fercli.media.images import decode_gray, read_file, single_threaded_opencv


def align_file(
    path: Path, config: PreprocessConfig, cache: CropCache | None
) -> tuple[CacheEntry, bool]:
    """Align the largest face of one image file, through the cache.

    Returns the entry (a crop, or the reason there is none) and whether it came from the
    cache. Never raises for a bad image; StoreError if the cache cannot be written.
    """
    return align_files([path], config, cache)[0]


def align_files(
    paths: list[Path | str], config: PreprocessConfig, cache: CropCache | None
) -> list[tuple[CacheEntry, bool]]:
    """align_file for several files, in their order; the landmarks of their faces are found
    together (much cheaper than one by one), a bounded number of pixels at a time."""
    results: list = [None] * len(paths)
    waiting: list[tuple[int, FacesFound]] = []

    def align_waiting() -> None:
        entries = _align_found([found for _, found in waiting], config, cache)
        for (index, _), entry in zip(waiting, entries, strict=True):
            results[index] = entry, False
        waiting.clear()

    for index, path in enumerate(paths):
        outcome = _find_faces(Path(path), config, cache)
        if not isinstance(outcome, FacesFound):
            results[index] = outcome
            continue
        waiting.append((index, outcome))
        # A bound on the memory that decoded images waiting for their landmarks hold.
        if sum(found.gray.size for _, found in waiting) >= BATCH_PIXELS:
            align_waiting()
    if waiting:
        align_waiting()
    return results


@dataclass(frozen=True)
class FacesFound:
    """Faces found in a file whose crop is not cached yet: what landmarking starts from."""

    key: str  # the file's cache key
    detections: list  # detect_faces' result
    gray: np.ndarray  # the decoded image


def _find_faces(
    path: Path, config: PreprocessConfig, cache: CropCache | None
) -> tuple[CacheEntry, bool] | FacesFound:
    """The first half of align_file: read the file, look it up in the cache, decode it and
    find its faces."""
    try:
        data = read_file(path)
    except FerError as error:
        return CacheEntry(crop=None, reason=str(error)), False
    key = content_key(data)
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached, True

    def find() -> CacheEntry | FacesFound:
        gray = decode_gray(data)
        detections = detect_faces(gray, config)
        if not detections:
            raise no_face_error(config)
        return FacesFound(key, detections, gray)

    outcome = _attempt(find, key, cache)
    return outcome if isinstance(outcome, FacesFound) else (outcome, False)


def _align_found(
    found: list[FacesFound], config: PreprocessConfig, cache: CropCache | None
) -> list[CacheEntry]:
    """The second half of align_files: landmarks (of all the images together), crop, cache."""
    aligned = align_batch([(item.gray, item.detections) for item in found], config, True)
    entries = []
    for item, faces in zip(found, aligned, strict=True):
        if isinstance(faces, Exception):
            # Unexpected: reported, not cached, so that a later run tries again.
            entries.append(CacheEntry(crop=None, reason=_unexpected(faces)))
            continue
        entries.append(_entry(faces, len(item.detections), config))
        if cache is not None:
            cache.put(item.key, entries[-1])
    return entries


def _entry(largest: list[AlignedFace], detected: int, config: PreprocessConfig) -> CacheEntry:
    """An image's entry: its largest face (align_detected's list of one), or why there is
    none; detected: how many faces dlib found in it."""
    if not largest:
        return CacheEntry(crop=None, reason=str(no_face_error(config)))
    [face] = largest
    return CacheEntry(
        crop=face.crop,
        faces=detected,
        box=face.box,
        angle=round(face.angle, 3),
        padding=round(face.padding, 4),
    )


def _unexpected(error: Exception) -> str:
    return f"alignment failed: {type(error).__name__}: {error}"


def _attempt(work: Callable, key: str, cache: CropCache | None):
    """work()'s result; a bad image becomes an entry with the reason, stored in the cache
    so that a second run does not try again. Other errors a user can fix (dlib's landmark
    model is missing) end the run; unexpected ones make an entry that is not stored."""
    try:
        outcome = work()
    except (ImageError, NoFaceError) as error:
        outcome = CacheEntry(crop=None, reason=str(error))
    except FerError:
        raise
    except Exception as error:
        return CacheEntry(crop=None, reason=_unexpected(error))
    if isinstance(outcome, CacheEntry) and cache is not None:
        cache.put(key, outcome)
    return outcome


def preprocess_dataset(
    root: Path,
    options: ScanConfig = ScanConfig(),
    config: PreprocessConfig = PreprocessConfig(),
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    made_by: str = "preprocess",
) -> PreprocessReport:
    """Scan a dataset folder, align every image (through the cache) and save the prepared
    dataset and its contact sheet. LayoutError if the folder cannot be read as a dataset;
    StoreError if FER_HOME cannot be written.

    made_by: the command it is done for, kept in the dataset ("evaluate": a test set, which
    train and crossval never pick by default, see prepared.resolve_dataset)."""
    started = time.perf_counter()
    root = Path(root)
    if is_fer2013(root) or (options.layout or "").lower() == "fer2013":
        from fercli.data.fer2013 import preprocess_fer2013

        return preprocess_fer2013(
            root, config, workers or default_workers(), progress, made_by=made_by
        )
    scan = scan_dataset(root, options)
    cache = CropCache(config)
    cache.prepare()
    workers = workers or default_workers()
    records = scan.records
    if progress:
        progress(items(0, len(records)))
    if not landmarks_load_quickly():
        # dlib's landmark model is converted (the first run only) here, once, rather than in
        # every worker; forked workers share it, later runs map the stored arrays.
        landmark_predictor()
    parts = batches([str(record.path) for record in records], workers)
    outcomes: list[tuple[CacheEntry, bool]] = []
    work = partial(align_files, config=config, cache=cache)
    with closing(run_tasks(work, parts, workers, initializer=single_threaded_opencv)) as results:
        for outcome in chain.from_iterable(results):
            outcomes.append(outcome)
            if progress:
                progress(items(len(outcomes), len(records)))

    skipped = list(scan.skipped)
    kept = []
    several = []
    for record, (entry, _) in zip(records, outcomes, strict=True):
        if entry.crop is None:
            skipped.append(Skipped(str(record.path), entry.reason))
            continue
        kept.append((record, entry))
        if entry.faces > 1:
            several.append(str(record.path))

    classes = Counter(record.label for record, _ in kept)
    subjects = Counter(record.subject for record, _ in kept if record.subject)
    report = PreprocessReport(
        source=str(root),
        layout=scan.layout,
        found=len(records) + len(scan.skipped),
        aligned=len(kept),
        skipped=skipped,
        classes={label: classes[label] for label in label_order(classes)},
        subjects=dict(sorted(subjects.items())),
        several_faces=several,
        cache_hits=sum(hit for _, hit in outcomes),
        seconds=0.0,
        workers=effective_workers(len(parts), workers),
        notes=list(scan.notes),
    )
    if len(classes) == 1:
        only = next(iter(classes))
        report.notes.append(
            f"one class only ({only}, {scan.layout} layout): fer train and fer crossval need two "
            "or more"
        )
    if several:
        report.notes.append(f"{len(several)} images had several faces; the largest was used")
    report.edges = edge_summary(kept)
    if kept:
        _save(report, options, config, kept, made_by)
    report.seconds = time.perf_counter() - started
    return report


# A crop counts as saturated when more than this share of its pixels is 250 or brighter.
SATURATED_SHARE = 0.10


def edge_summary(kept: list[tuple[object, CacheEntry]]) -> dict[str, dict]:
    """Per class: how many crops passed the photo's edge and by how much on average, and how
    many are saturated (SATURATED_SHARE), so that a washed-out dataset is seen."""
    summary: dict[str, dict] = {}
    for label in label_order({record.label for record, _ in kept}):
        entries = [entry for record, entry in kept if record.label == label]
        shares = np.array([entry.padding for entry in entries])
        saturated = sum(float(np.mean(entry.crop >= 250)) > SATURATED_SHARE for entry in entries)
        summary[label] = {
            "crops": len(entries),
            "padded": int(np.count_nonzero(shares > 0)),
            "mean_padding": round(float(shares.mean()), 4),
            "saturated": int(saturated),
        }
    return summary


def _save(report, options, config, kept, made_by: str) -> None:
    dataset = PreparedDataset(
        crops=np.stack([entry.crop for _, entry in kept]),
        labels=np.array([record.label for record, _ in kept]),
        subjects=np.array([record.subject or "" for record, _ in kept]),
        paths=np.array([str(record.path) for record, _ in kept]),
        meta={
            "scan": {"ck_frames": options.ck_frames, "ck_neutral_first": options.ck_neutral_first},
            "edges": report.edges,
            "made_by": made_by,
        },
    )
    save_prepared(report, dataset, config, padding=np.array([entry.padding for _, entry in kept]))
