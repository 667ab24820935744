"""A preprocessed dataset: aligned crops with their labels, subjects, source paths and
digests and predefined splits, as `fer preprocess` writes it
(FER_HOME/datasets/<name>-<id>/dataset.npz) and train, crossval, sweep and evaluate read it.
The file is a pickle-free .npz with a format version; every array is checked at load, so that
no command meets a shape, type or setting it cannot use.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fercli.core.archives import archive_meta
from fercli.core.config import CROP_SIZE, PreprocessConfig
from fercli.core.errors import DatasetError, StoreError
from fercli.core.hashing import SOURCE_DIGEST_BYTES
from fercli.core.store import (
    abbreviated,
    atomic_write,
    datasets_dir,
    name_not_found,
    npz_problem,
    pack_json,
    slug,
    unpack_json,
)
from fercli.data.datasets import subjects_known
from fercli.media.discover import Skipped

DATASET_FILE = "dataset.npz"
DATASET_FORMAT = "fercli-dataset"
# Files written before the version was recorded hold the same arrays: they read as version 1.
DATASET_FORMAT_VERSION = 1
# meta "unaligned" (the images without a crop, per class): optional, read only at this version,
# so that a dataset from before it, or from a later form of it, says "not known".
UNALIGNED_VERSION = 1


@dataclass
class PreparedDataset:
    """A preprocessed dataset: aligned crops with their labels, as train and crossval read it."""

    crops: np.ndarray  # (n, size, size) uint8
    labels: np.ndarray  # (n,) str
    subjects: np.ndarray  # (n,) str; "" where unknown
    paths: np.ndarray  # (n,) str: the source images
    meta: dict  # layout, source folder, preprocessing settings, counts
    location: Path | None = None
    # (n,) str: each image's predefined split (FER2013's Usage); None for datasets without.
    splits: np.ndarray | None = None
    # (n, SOURCE_DIGEST_BYTES) uint8: each crop's image file's source digest
    # (core.hashing.source_digest); None where there is no file per image (FER2013's CSV) or
    # the dataset was preprocessed before fercli kept them.
    sources: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.location.parent.name if self.location else "dataset"

    @property
    def has_subjects(self) -> bool:
        return subjects_known(self.subjects)

    def unaligned(self) -> dict[str, int] | None:
        """Per class, the labelled images of the source that gave no crop (no face found, or
        unreadable), of this dataset's split when it is one (dataset_split); None when the
        dataset does not say (preprocessed before fercli kept the count)."""
        counts = self.meta.get("unaligned")
        if not isinstance(counts, dict) or counts.get("version") != UNALIGNED_VERSION:
            return None
        split = self.meta.get("split")
        if split is None:
            chosen = counts.get("classes")
        else:  # a split no image of which was left out has no entry
            splits = counts.get("splits")
            chosen = splits.get(split, {}) if isinstance(splits, dict) else None
        if not isinstance(chosen, dict) or not all(
            isinstance(label, str) and type(count) is int and count >= 0
            for label, count in chosen.items()
        ):
            return None
        return dict(chosen)


def unaligned_counts(labels: list[str], splits: list[str] | None = None) -> dict:
    """A prepared dataset's meta "unaligned": per class (and per predefined split, where the
    source has them), the labelled images that gave no crop, so that fer evaluate can count
    them as wrong answers."""
    counts: dict = {
        "version": UNALIGNED_VERSION,
        "classes": {label: count for label, count in sorted(Counter(labels).items())},
    }
    if splits is not None:
        per_split: dict[str, Counter] = {}
        for label, split in zip(labels, splits, strict=True):
            per_split.setdefault(split, Counter())[label] += 1
        counts["splits"] = {
            split: dict(sorted(counted.items())) for split, counted in sorted(per_split.items())
        }
    return counts


def dataset_folder(source: Path, test_set: str | None = None) -> Path:
    """Where the preprocessed version of a dataset folder is kept (one per source folder).
    test_set: the evaluation_key of a test set fer evaluate made of the folder with other
    settings than the dataset the user preprocessed there, kept beside it
    ("<name>-<id>-evaluate-<key>") so that the user's own is never overwritten."""
    resolved = Path(source).resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    name = f"{slug(resolved.name)}-{digest}"
    return datasets_dir() / (name if test_set is None else f"{name}-evaluate-{test_set}")


def evaluation_key(config: PreprocessConfig, face_crops: bool) -> str:
    """What tells apart the test sets fer evaluate makes of one folder: the preprocessing
    settings and whether every image was taken as a face crop."""
    key = f"{config.fingerprint()}:{face_crops}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def save_dataset(dataset: PreparedDataset, folder: Path) -> Path:
    """Write a prepared dataset to folder/dataset.npz in one atomic step."""
    arrays = {
        "crops": dataset.crops,
        "labels": dataset.labels.astype(str),
        "subjects": dataset.subjects.astype(str),
        "paths": dataset.paths.astype(str),
        "meta": pack_json(
            {"format": DATASET_FORMAT, **dataset.meta, "format_version": DATASET_FORMAT_VERSION}
        ),
    }
    if dataset.splits is not None:
        arrays["splits"] = dataset.splits.astype(str)
    if dataset.sources is not None:
        arrays["sources"] = dataset.sources
    path = atomic_write(folder / DATASET_FILE, lambda stream: np.savez(stream, **arrays))
    dataset.location = path
    return path


def load_dataset(path: Path) -> PreparedDataset:
    """Read a dataset.npz (or the folder holding one) without unpickling anything."""
    path = Path(path)
    if path.is_dir():
        path = path / DATASET_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path}: no preprocessed dataset here (run `fer preprocess DATASET_DIR`)"
        )
    problem = npz_problem(path)
    if problem:
        raise DatasetError(
            f"{path}: not a preprocessed fercli dataset ({problem}); give a dataset's name, its "
            "folder under FER_HOME, or an original dataset folder"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = unpack_json(archive["meta"])
            dataset = PreparedDataset(
                crops=archive["crops"],
                labels=archive["labels"],
                subjects=archive["subjects"],
                paths=archive["paths"],
                meta=meta,
                location=path,
                splits=archive["splits"] if "splits" in archive.files else None,
                sources=archive["sources"] if "sources" in archive.files else None,
            )
    except Exception as error:  # BadZipFile, a bad CRC (zlib.error), a truncated member...
        # Nothing is unpickled, so any failure is a damaged or foreign file.
        raise DatasetError(
            f"{path}: not a readable fercli dataset ({type(error).__name__}: {error}); run "
            "`fer preprocess` again"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: not a fercli dataset")
    problem = _dataset_problem(dataset)
    if problem:
        source = meta.get("source") if isinstance(meta.get("source"), str) else "DATASET_DIR"
        raise DatasetError(
            f"{path}: damaged dataset file ({problem}); run `fer preprocess {source}` again"
        )
    return dataset


def _same_kind(value: object, default: object) -> bool:
    """Whether a setting read from JSON has the type of its default (a whole number for a
    float too), lists element by element."""
    if isinstance(default, list):
        return isinstance(value, list) and all(_same_kind(item, default[0]) for item in value)
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and np.isfinite(value)
    return type(value) is type(default)


def _dataset_problem(dataset: PreparedDataset) -> str | None:
    """What makes a loaded dataset unusable (None when nothing does): checked once, at load,
    so that train and crossval never meet a shape, type or setting they cannot use."""
    from fercli.core.config import PreprocessConfig

    meta = dataset.meta
    version = meta.get("format_version", 1)
    if type(version) is not int or version != DATASET_FORMAT_VERSION:
        return f"format version {version!r}; this fercli reads version {DATASET_FORMAT_VERSION}"
    settings = meta.get("preprocess")
    if not isinstance(settings, dict):
        return "its preprocessing settings are missing or not an object"
    try:
        config = PreprocessConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        return f"preprocessing settings: {error}"
    for name, default in PreprocessConfig().to_dict().items():
        value = config.to_dict()[name]
        if not _same_kind(value, default):
            return f"preprocessing setting {name} is {value!r}"
    size = config.crop_size
    crops = dataset.crops
    if crops.dtype != np.uint8 or crops.ndim != 3 or crops.shape[1:] != (size, size):
        return f"crops are {crops.dtype} {crops.shape}, not 8-bit {size}x{size} images"
    for name in ("labels", "subjects", "paths"):
        column = getattr(dataset, name)
        if column.dtype.kind != "U" or column.shape != (len(crops),):
            return f"{name} are {column.dtype} {column.shape}, not {len(crops)} texts"
    if not all(dataset.labels):
        return "an empty label"
    if dataset.splits is not None and (
        dataset.splits.dtype.kind != "U" or dataset.splits.shape != (len(crops),)
    ):
        return f"splits are {dataset.splits.dtype} {dataset.splits.shape}, not {len(crops)} texts"
    sources = dataset.sources
    if sources is not None and (
        sources.dtype != np.uint8 or sources.shape != (len(crops), SOURCE_DIGEST_BYTES)
    ):
        return (
            f"sources are {sources.dtype} {sources.shape}, not {len(crops)} digests of "
            f"{SOURCE_DIGEST_BYTES} bytes"
        )
    return None


def made_by(path: Path) -> str:
    """The command a dataset.npz was made for ("preprocess", or "evaluate" for a test set);
    "preprocess" for files that do not say, or cannot be read (load_dataset says why)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = archive_meta(archive)  # its size checked before it is unpacked
    except Exception:
        return "preprocess"
    return meta.get("made_by", "preprocess") if isinstance(meta, dict) else "preprocess"


def _users_own(path: Path) -> bool:
    """Whether path is a dataset the user preprocessed (which fer evaluate must not replace)."""
    return path.is_file() and made_by(path) != "evaluate"


def default_dataset() -> Path | None:
    """The dataset.npz train and crossval use when none is named: the one most recently
    preprocessed by `fer preprocess`. The test sets fer evaluate preprocesses do not count:
    evaluating must not make the next `fer train` train on the test set."""
    newest = sorted(datasets_dir().glob(f"*/{DATASET_FILE}"), key=_modified, reverse=True)
    for path in newest:
        # is_file(): a FIFO planted there would block the reading of its meta for ever.
        if not path.parent.name.startswith(".") and path.is_file() and made_by(path) != "evaluate":
            return path
    return None


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # removed while we looked


def not_yet_preprocessed(path: str | Path) -> bool:
    """Whether path is an original dataset folder that `fer preprocess` has not made a
    dataset of (neither a dataset folder itself nor one with its dataset under FER_HOME)."""
    candidate = Path(path)
    return (
        candidate.is_dir()
        and not (candidate / DATASET_FILE).exists()
        and not (dataset_folder(candidate) / DATASET_FILE).exists()
    )


def resolve_dataset(choice: str | Path | None) -> PreparedDataset:
    """The dataset a command should use: a path, a dataset name under FER_HOME, or the
    most recently preprocessed one."""
    if choice is None:
        path = default_dataset()
        if path is None:
            raise DatasetError(
                f"no preprocessed dataset in {datasets_dir()}: run `fer preprocess DATASET_DIR` "
                "first (datasets fer evaluate made are only used when named)"
            )
        return load_dataset(path)
    candidate = Path(choice)
    if candidate.is_dir() and not (candidate / DATASET_FILE).exists():
        # The original dataset folder: use what `fer preprocess` made of it.
        prepared = dataset_folder(candidate) / DATASET_FILE
        if not prepared.exists():
            raise DatasetError(
                f"{choice}: not preprocessed yet (run `fer preprocess {choice}` first)"
            )
        return load_dataset(prepared)
    if candidate.exists():
        return load_dataset(candidate)
    named = datasets_dir() / str(choice)
    if named.exists():
        return load_dataset(named)
    names = sorted(path.parent.name for path in datasets_dir().glob(f"*/{DATASET_FILE}"))
    matches = abbreviated(str(choice), names)
    if not matches and "+" in str(choice):
        # Stored by an earlier fercli, which wrote CK+48 as CK-48-<id>.
        matches = abbreviated(str(choice).replace("+", "-"), names)
    if len(matches) == 1:  # the name without its hash
        return load_dataset(datasets_dir() / matches[0])
    reason = name_not_found(str(choice), names, matches, "preprocessed datasets")
    if not matches:
        reason = reason.replace(
            "no preprocessed datasets of that name",
            f"no such preprocessed dataset (a path or a name under {datasets_dir()})",
        )
    raise DatasetError(reason)


def face_crops_note(face_crops: int, aligned: int, unchecked: int = 0) -> str:
    """What to say of the images aligned as face crops (faces.face_crops); unchecked: how many
    of them the face check turned down, taken as faces on the word of --face-crops."""
    checked = (
        "a face check passed"
        if not unchecked
        else f"a face check passed, but for {unchecked:,} that it turned down, taken as faces "
        "because --face-crops says every image is one"
    )
    return (
        f"{face_crops:,} of the {aligned:,} images aligned are face crops in which the detector "
        f"found no face: aligned from the landmarks found in the image itself ({checked})"
    )


@dataclass
class PreprocessReport:
    """What a preprocess run found, aligned and left out."""

    source: str
    layout: str
    found: int
    aligned: int
    skipped: list[Skipped]
    classes: dict[str, int]
    subjects: dict[str, int]
    several_faces: list[str]  # images where several faces were found and the largest used
    cache_hits: int
    seconds: float
    workers: int
    dataset: str | None = None  # the prepared dataset file, when anything was aligned
    contact_sheet: str | None = None
    notes: list[str] = field(default_factory=list)
    # Per class: crops that passed the photo's edge (filled in), their mean share filled, and
    # crops with more than SATURATED_SHARE of their pixels at 250 or more.
    edges: dict[str, dict] = field(default_factory=dict)
    # Of the aligned images: those that were face crops themselves, aligned from their own
    # landmarks where the detector found nothing (faces.face_crops).
    face_crops: int = 0
    # Of those: the ones the face check turned down, aligned because of --face-crops.
    unchecked_faces: int = 0
    # Made with --face-crops: every image taken for a face crop (faces.pipeline.find_faces).
    every_image_a_face: bool = False
    crop_size: int = CROP_SIZE  # the side of the crops made

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "layout": self.layout,
            "crop_size": self.crop_size,
            "found": self.found,
            "aligned": self.aligned,
            "face_crops": self.face_crops,
            "unchecked_faces": self.unchecked_faces,
            "every_image_a_face": self.every_image_a_face,
            "skipped": [{"path": item.path, "reason": item.reason} for item in self.skipped],
            "classes": self.classes,
            "subjects": self.subjects,
            "several_faces": self.several_faces,
            "cache_hits": self.cache_hits,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "dataset": self.dataset,
            "contact_sheet": self.contact_sheet,
            "notes": self.notes,
            "edges": self.edges,
        }


def save_prepared(
    report: PreprocessReport,
    dataset: PreparedDataset,
    config: PreprocessConfig,
    padding: np.ndarray | None = None,
) -> None:
    """Store a freshly preprocessed dataset where its source's datasets go, with its contact
    sheet; dataset.meta gets the metadata every prepared dataset has (source, preprocessing
    settings and fingerprint, classes, time) added to its own, and report the paths written.
    A contact sheet that cannot be written is a note, not a failure."""
    from fercli.media.drawing import contact_sheet

    source = Path(report.source).resolve()
    dataset.meta = {
        "source": str(source),
        "layout": report.layout,
        **dataset.meta,
        "preprocess": config.to_dict(),
        "preprocess_fingerprint": config.fingerprint(),
        "every_image_a_face": report.every_image_a_face,
        "face_crops": report.face_crops,
        "unchecked_faces": report.unchecked_faces,
        "classes": report.classes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    folder = dataset_folder(source)
    if dataset.meta.get("made_by") == "evaluate" and _users_own(folder / DATASET_FILE):
        folder = dataset_folder(source, evaluation_key(config, report.every_image_a_face))
    report.dataset = str(save_dataset(dataset, folder))
    try:
        sheet = contact_sheet(
            dataset.crops, dataset.labels, folder / "contact_sheet.png", padding=padding
        )
    except StoreError as error:
        report.notes.append(f"contact sheet not written: {error}")
    else:
        report.contact_sheet = str(sheet)
