"""fer preprocess: a dataset folder -> cached, aligned crops and a prepared dataset."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from fercli.core.config import CROP_SIZE, PreprocessConfig, ScanConfig
from fercli.core.errors import FerError
from fercli.core.events import Progress, items
from fercli.core.hashing import digest_rows
from fercli.core.labels import label_order
from fercli.core.parallel import (
    batches,
    default_workers,
    effective_workers,
    run_tasks,
)
from fercli.core.recipes import (
    AUTO_RECIPE,
    GENERAL_FROM_IMAGES,
    auto_crop_size,
    crop_size_note,
    resolve_recipe,
)
from fercli.data.cache import CacheEntry, CropCache, content_key, source_of_key
from fercli.data.datasets import ImageRecord, scan_dataset
from fercli.data.fer2013 import is_fer2013
from fercli.data.prepared import (
    PreparedDataset,
    PreprocessReport,
    face_crops_note,
    save_prepared,
    unaligned_counts,
)
from fercli.faces.pipeline import ImageFaces, align_images, load_models_for_workers
from fercli.media.discover import Skipped
from fercli.media.images import read_file, single_threaded_opencv


def align_file(
    path: Path, config: PreprocessConfig, cache: CropCache | None, face_crops: bool = False
) -> tuple[CacheEntry, bool]:
    """Align the largest face of one image file, through the cache.

    Returns the entry (a crop, or the reason there is none) and whether it came from the
    cache. Never raises for a bad image; StoreError if the cache cannot be written.
    face_crops: the image is a face crop, aligned even where the face check turns its face
    down (faces.pipeline.find_faces).
    """
    return align_files([path], config, cache, face_crops)[0]


def align_files(
    paths: list[Path | str],
    config: PreprocessConfig,
    cache: CropCache | None,
    face_crops: bool = False,
) -> list[tuple[CacheEntry, bool]]:
    """align_file for several files, in their order: the files whose crop is not cached go
    through the face pipeline (faces.pipeline.align_images, each image's largest face), and
    what it makes of each is cached, unless it failed unexpectedly (tried again next run).
    Each entry of a file that could be read carries the file's source digest (source).
    The cache keeps what was made with face_crops or without: with it, an image remembered
    without a face is tried again; without it, a face the face check turned down is none."""
    results: list = [None] * len(paths)

    def uncached() -> Iterator[tuple[tuple[int, str], bytes]]:
        """The files the cache does not answer for: ((index, cache key), their bytes)."""
        for index, path in enumerate(paths):
            try:
                data = read_file(Path(path))
            except FerError as error:
                results[index] = CacheEntry(crop=None, reason=str(error)), False
                continue
            key = content_key(data)
            cached = cache.get(key) if cache is not None else None
            if cached is not None and not (face_crops and cached.crop is None):
                entry = cached if face_crops else cached.as_checked()
                results[index] = replace(entry, source=source_of_key(key)), True
                continue
            yield (index, key), data

    aligned = align_images(uncached(), config, largest_only=True, face_crops=face_crops)
    for (index, key), found in aligned:
        entry = _entry(found)
        if cache is not None and found.lasting:
            cache.put(key, entry)
        results[index] = replace(entry, source=source_of_key(key)), False
    return results


def _entry(found: ImageFaces) -> CacheEntry:
    """An image's entry: its largest face, or why there is none."""
    if not found.faces:
        return CacheEntry(crop=None, reason=found.reason)
    [face] = found.faces
    return CacheEntry(
        crop=face.crop,
        faces=found.detected,
        box=face.box,
        angle=round(face.angle, 3),
        padding=round(face.padding, 4),
        whole_image=face.whole_image,
        face_check=face.face_check,
        reason=found.reason,
    )


def preprocess_dataset(
    root: Path,
    options: ScanConfig = ScanConfig(),
    config: PreprocessConfig = PreprocessConfig(),
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    made_by: str = "preprocess",
    size_by_images: bool = False,
    face_crops: bool = False,
) -> PreprocessReport:
    """Scan a dataset folder, align every image (through the cache) and save the prepared
    dataset and its contact sheet. LayoutError if the folder cannot be read as a dataset;
    StoreError if FER_HOME cannot be written.

    made_by: the command it is done for, kept in the dataset ("evaluate": a test set, which
    train and crossval never pick by default, see prepared.resolve_dataset). size_by_images:
    the crop size is chosen by the number of images (core.recipes.auto_crop_size), not config's.
    face_crops: every image is a face crop, aligned even where the face check turns its face
    down (--face-crops; faces.pipeline.find_faces)."""
    started = time.perf_counter()
    root = Path(root)
    if is_fer2013(root) or (options.layout or "").lower() == "fer2013":
        return _preprocess_csv(root, config, workers, progress, made_by, size_by_images, face_crops)
    scan = scan_dataset(root, options)
    note = None
    if size_by_images:
        config, note = _sized(config, len(scan.records))
    cache = CropCache(config)
    cache.prepare()
    workers, records = workers or default_workers(), scan.records
    outcomes, tasks = _align_records(records, config, cache, workers, progress, face_crops)
    skipped = list(scan.skipped)
    kept, several, unaligned = _sort_outcomes(records, outcomes, skipped)
    classes = Counter(record.label for record, _ in kept)
    subjects = Counter(record.subject for record, _ in kept if record.subject)
    report = PreprocessReport(
        source=str(root),
        layout=scan.layout,
        found=len(records) + sum(not item.folder for item in scan.skipped),
        aligned=len(kept),
        skipped=skipped,
        classes={label: classes[label] for label in label_order(classes)},
        subjects=dict(sorted(subjects.items())),
        several_faces=several,
        cache_hits=sum(hit for _, hit in outcomes),
        seconds=0.0,
        workers=effective_workers(tasks, workers),
        notes=list(scan.notes) + ([note] if note else []),
        crop_size=config.crop_size,
        face_crops=sum(entry.whole_image for _, entry in kept),
        unchecked_faces=sum(not entry.face_check for _, entry in kept),
        every_image_a_face=face_crops,
    )
    report.notes += _dataset_notes(report, scan.layout) + _recipe_notes(report, note)
    report.edges = edge_summary(kept)
    if kept:
        _save(report, options, config, kept, made_by, unaligned)
    report.seconds = time.perf_counter() - started
    return report


def _preprocess_csv(
    path: Path,
    config: PreprocessConfig,
    workers: int | None,
    progress: Progress | None,
    made_by: str,
    size_by_images: bool,
    face_crops: bool,
) -> PreprocessReport:
    """preprocess_dataset of a FER2013 CSV: its rows counted first when the crop size is
    chosen by the number of images."""
    from fercli.data.fer2013 import count_rows, preprocess_fer2013

    note = None
    if size_by_images:
        config, note = _sized(config, count_rows(path))
    report = preprocess_fer2013(
        path, config, workers or default_workers(), progress, made_by, face_crops
    )
    report.notes += ([note] if note else []) + _recipe_notes(report, note)
    return report


def _sized(config: PreprocessConfig, images: int) -> tuple[PreprocessConfig, str | None]:
    """config with the crop size chosen for a dataset of this many images, and what to say of
    it (None for the paper's size, the one every lab-size dataset gets)."""
    size = auto_crop_size(images)
    note = crop_size_note(images, size) if size != CROP_SIZE else None
    return replace(config, crop_size=size), note


def _recipe_notes(report: PreprocessReport, size_note: str | None) -> list[str]:
    """Where the crop size was chosen for GENERAL_FROM_IMAGES images or more but fewer faces
    aligned: train's recipe auto counts the faces, and chooses robust, which it says here."""
    if size_note is None or resolve_recipe(AUTO_RECIPE, report.aligned) == "general":
        return []
    return [
        f"{report.aligned:,} of the {report.found:,} images aligned: fer train's recipe auto "
        f"will choose robust (general from {GENERAL_FROM_IMAGES:,} faces) on these "
        f"{report.crop_size}x{report.crop_size} crops; fer train --recipe general names the other"
    ]


def _align_records(
    records: list[ImageRecord],
    config: PreprocessConfig,
    cache: CropCache,
    workers: int,
    progress: Progress | None,
    face_crops: bool = False,
) -> tuple[list[tuple[CacheEntry, bool]], int]:
    """Align the records' images in worker processes, through the cache, reporting "items"
    progress: each one's CacheEntry and whether it came from the cache, in the records' order,
    and the number of batches they were sent in."""
    if progress:
        progress(items(0, len(records)))
    load_models_for_workers()
    parts = batches([str(record.path) for record in records], workers)
    outcomes: list[tuple[CacheEntry, bool]] = []
    work = partial(align_files, config=config, cache=cache, face_crops=face_crops)
    with closing(run_tasks(work, parts, workers, initializer=single_threaded_opencv)) as results:
        for outcome in chain.from_iterable(results):
            outcomes.append(outcome)
            if progress:
                progress(items(len(outcomes), len(records)))
    return outcomes, len(parts)


def _sort_outcomes(
    records: list[ImageRecord], outcomes: list[tuple[CacheEntry, bool]], skipped: list[Skipped]
) -> tuple[list[tuple[ImageRecord, CacheEntry]], list[str], list[str]]:
    """The records that gave a crop, with their entries; the paths of those in which several
    faces were found; and the labels of those that gave none (each added to skipped, with the
    reason)."""
    kept = []
    several = []
    unaligned = []
    for record, (entry, _) in zip(records, outcomes, strict=True):
        if entry.crop is None:
            skipped.append(Skipped(str(record.path), entry.reason))
            unaligned.append(record.label)
            continue
        kept.append((record, entry))
        if entry.faces > 1:
            several.append(str(record.path))
    return kept, several, unaligned


def _dataset_notes(report: PreprocessReport, layout: str) -> list[str]:
    """What a report of a dataset folder says of it: one class only, images with several
    faces, images taken as face crops whole."""
    notes = []
    if len(report.classes) == 1:
        only = next(iter(report.classes))
        notes.append(
            f"one class only ({only}, {layout} layout): fer train and fer crossval need two or more"
        )
    if report.several_faces:
        notes.append(f"{len(report.several_faces)} images had several faces; the largest was used")
    if report.face_crops:
        notes.append(face_crops_note(report.face_crops, report.aligned, report.unchecked_faces))
    return notes


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


def _save(report, options, config, kept, made_by: str, unaligned: list[str]) -> None:
    digests = [entry.source for _, entry in kept]
    dataset = PreparedDataset(
        crops=np.stack([entry.crop for _, entry in kept]),
        labels=np.array([record.label for record, _ in kept]),
        subjects=np.array([record.subject or "" for record, _ in kept]),
        paths=np.array([str(record.path) for record, _ in kept]),
        meta={
            "scan": {"ck_frames": options.ck_frames, "ck_neutral_first": options.ck_neutral_first},
            "edges": report.edges,
            "made_by": made_by,
            "unaligned": unaligned_counts(unaligned),
        },
        sources=None if None in digests else digest_rows(digests),
    )
    save_prepared(report, dataset, config, padding=np.array([entry.padding for _, entry in kept]))
