"""Dataset layouts (JAFFE, the CK+ tree, class folders) -> labelled image records."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fercli.core.config import LAYOUT_ALIASES, LAYOUTS, ScanConfig
from fercli.core.errors import LayoutError
from fercli.core.labels import KNOWN_LABELS, canonical_label, label_order
from fercli.media.discover import Skipped, files_under, is_visible, left_out_note

# KA.AN1.39.tiff: subject initials, expression code and repeat, serial number.
JAFFE_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$", re.IGNORECASE)
JAFFE_CODES = {
    "AN": "anger",
    "DI": "disgust",
    "FE": "fear",
    "HA": "happiness",
    "NE": "neutral",
    "SA": "sadness",
    "SU": "surprise",
}
# S005_001_00000011.png (CK+ frames and the CK+48 crops made from them).
CK_NAME = re.compile(r"^(S\d{3})_(\d{3})_(\d+)")
CK_CODES = {
    0: "neutral",
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happiness",
    6: "sadness",
    7: "surprise",
}
CK_IMAGES = "cohn-kanade-images"
CK_EMOTION = "Emotion"


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image of a dataset."""

    path: Path
    label: str
    subject: str | None


@dataclass
class Scan:
    """What a dataset folder holds, as the layout reads it."""

    layout: str
    root: Path
    records: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Sub-folders fercli wrote its own pictures to (media.discover), not read.
    left_out: list[Path] = field(default_factory=list)

    @property
    def has_subjects(self) -> bool:
        return subjects_known([record.subject for record in self.records])


def subjects_known(subjects) -> bool:
    """Whether every image's subject is known (none empty, and there are images): what
    subject folds and per-subject reports need."""
    return len(subjects) > 0 and all(subjects)


def subject_of(name: str) -> str | None:
    """The subject a file name announces (CK+ "S010", JAFFE initials "KA"), or None."""
    match = CK_NAME.match(name)
    if match:
        return match.group(1).upper()
    match = JAFFE_NAME.match(name)
    if match:
        return match.group(1).upper()
    return None


def _child(folder: Path, name: str) -> Path | None:
    """A sub-folder by name, ignoring case (None also when the folder cannot be read)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.is_dir() and entry.name.lower() == name.lower():
            return entry
    return None


def _ck_root(root: Path) -> Path | None:
    """The folder holding cohn-kanade-images/ and Emotion/: root itself or a child of it."""
    candidates = [root] + sorted(entry for entry in root.iterdir() if entry.is_dir())
    for candidate in candidates:
        if _child(candidate, CK_IMAGES) and _child(candidate, CK_EMOTION):
            return candidate
    return None


def _file_problem(path: Path) -> str:
    """Why a file given as a dataset is not one: fercli reads folders and FER2013 CSVs."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return "an empty file, not a dataset (give a dataset's folder or a FER2013 CSV)"
    if path.suffix.lower() == ".csv":
        return (
            "a CSV file without FER2013's header (emotion,pixels,Usage); give a FER2013 CSV or a "
            "dataset's folder"
        )
    return "a file, not a dataset (give a dataset's folder or a FER2013 CSV)"


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise LayoutError(f"{root}: no such folder")
    if not root.is_dir():
        raise LayoutError(f"{root}: {_file_problem(root)}")
    try:
        entries = [entry for entry in root.iterdir() if is_visible(entry.name)]
    except PermissionError:
        raise LayoutError(f"{root}: cannot read the folder (permission denied)") from None
    if not entries:
        raise LayoutError(f"{root}: the folder is empty")


def detect_layout(root: Path) -> str:
    """Which layout a dataset folder is in; LayoutError naming the layouts tried otherwise."""
    _check_folder(root)
    if _ck_root(root):
        return "ck+"
    files = [entry for entry in root.iterdir() if entry.is_file() and is_visible(entry.name)]
    jaffe_named = sum(1 for entry in files if JAFFE_NAME.match(entry.name))
    if jaffe_named and jaffe_named * 2 >= len(files):
        return "jaffe"
    for entry in root.iterdir():
        if entry.is_dir() and is_visible(entry.name) and files_under(entry):
            return "folders"
    raise LayoutError(
        f"{root}: layout not recognised; tried jaffe (no files named like KA.AN1.39.tiff), "
        f"ck+ (no {CK_IMAGES}/ and {CK_EMOTION}/ folders), "
        "folders (no sub-folders with files, as in <class>/<image>)"
    )


def scan_dataset(root: Path, options: ScanConfig = ScanConfig()) -> Scan:
    """Read a dataset folder into labelled records; layout from options or detected."""
    root = Path(root)
    if options.layout:
        layout = LAYOUT_ALIASES.get(options.layout.lower())
        if layout is None:
            raise LayoutError(
                f"unknown layout {options.layout!r}; choose from {', '.join(LAYOUTS)}"
            )
        _check_folder(root)
    else:
        layout = detect_layout(root)
    reader = {"jaffe": _scan_jaffe, "ck+": _scan_ck, "folders": _scan_folders}[layout]
    scan = reader(root, options)
    note = left_out_note(scan.left_out)
    if note:
        scan.notes.append(note)
    if not scan.records:
        reasons = (
            f" ({len(scan.skipped)} files left out: {scan.skipped[0].reason}, ...)"
            if scan.skipped
            else ""
        )
        raise LayoutError(f"{root}: no labelled images found in the {layout} layout{reasons}")
    return scan


def _scan_jaffe(root: Path, options: ScanConfig) -> Scan:
    records, skipped, left_out = [], [], []
    for path in files_under(root, skipped, left_out):
        if path.parent != root:
            skipped.append(Skipped(str(path), "in a sub-folder; JAFFE is one flat folder"))
            continue
        match = JAFFE_NAME.match(path.name)
        if not match:
            skipped.append(Skipped(str(path), "name not in the JAFFE form KA.AN1.39.tiff"))
            continue
        code = match.group(2).upper()
        if code not in JAFFE_CODES:
            skipped.append(Skipped(str(path), f"unknown JAFFE expression code {code!r}"))
            continue
        records.append(ImageRecord(path, JAFFE_CODES[code], match.group(1).upper()))
    return Scan("jaffe", root, records, skipped, left_out=left_out)


def _read_ck_emotion(path: Path) -> str:
    """The label in a CK+ *_emotion.txt file; ValueError with the reason otherwise."""
    if not path.is_file():
        # A named pipe (or a device) would block the scan for ever at the first read.
        raise ValueError("emotion file is not a regular file")
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
        code = float(text.split()[0])
    except (OSError, IndexError, ValueError):
        raise ValueError("emotion file does not hold a number") from None
    # is_integer is False for "inf" and "nan", which int() would raise for.
    if not code.is_integer() or int(code) not in CK_CODES:
        raise ValueError(f"emotion code {text!r} is not one of 0-7")
    return CK_CODES[int(code)]


def _scan_ck(root: Path, options: ScanConfig) -> Scan:
    base = _ck_root(root)
    if base is None:
        raise LayoutError(f"{root}: not a CK+ tree (no {CK_IMAGES}/ and {CK_EMOTION}/ folders)")
    images_root, emotion_root = _child(base, CK_IMAGES), _child(base, CK_EMOTION)
    records, skipped, left_out = [], [], []
    sequences = 0
    for emotion_file in files_under(emotion_root, skipped, left_out):
        if not emotion_file.name.endswith("_emotion.txt"):
            continue
        relative = emotion_file.parent.relative_to(emotion_root)
        try:
            label = _read_ck_emotion(emotion_file)
        except ValueError as error:
            skipped.append(Skipped(str(emotion_file), str(error)))
            continue
        frames_dir = images_root / relative
        frames = files_under(frames_dir, skipped, left_out) if frames_dir.is_dir() else []
        if not frames:
            skipped.append(Skipped(str(emotion_file), f"no frames in {frames_dir}"))
            continue
        sequences += 1
        subject = relative.parts[0].upper() if relative.parts else subject_of(frames[0].name)
        last = frames[-options.ck_frames :]
        records.extend(ImageRecord(path, label, subject) for path in last)
        if options.ck_neutral_first and len(frames) > len(last):
            records.append(ImageRecord(frames[0], "neutral", subject))
    scan = Scan("ck+", root, records, skipped, left_out=left_out)
    scan.notes.append(
        f"{sequences} labelled sequences, last {options.ck_frames} frames each"
        + (", first frame as neutral" if options.ck_neutral_first else "")
    )
    return scan


def _scan_folders(root: Path, options: ScanConfig) -> Scan:
    records, skipped, left_out = [], [], []
    for path in files_under(root, skipped, left_out):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            skipped.append(Skipped(str(path), "not in a class folder"))
            continue
        label = canonical_label(relative.parts[0])
        records.append(ImageRecord(path, label, subject_of(path.name)))
    _refuse_split_folders(root, records)
    return Scan("folders", root, records, skipped, left_out=left_out)


def _refuse_split_folders(root: Path, records: list[ImageRecord]) -> None:
    """LayoutError when the folders below root are no classes but hold class folders
    (FER2013's train/ and validation/): read as they are, the splits would be the classes.
    A class folder holding a folder of any name is left alone: its images are of its class."""
    if any(record.label in KNOWN_LABELS for record in records):
        return
    held: dict[str, set[str]] = {}  # a folder below root: the classes its folders are named
    counts: dict[str, int] = {}
    for record in records:
        parts = record.path.relative_to(root).parts
        if len(parts) > 2 and canonical_label(parts[1]) in KNOWN_LABELS:
            held.setdefault(parts[0], set()).add(canonical_label(parts[1]))
            counts[parts[0]] = counts.get(parts[0], 0) + 1
    if not held:
        return
    folders = sorted(held)
    shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
    classes = ", ".join(label_order(set().union(*held.values())))
    largest = max(folders, key=lambda folder: counts[folder])  # the training split, as a rule
    several = len(folders) > 1
    raise LayoutError(
        f"{root}: its folder{'s' if several else ''} {shown} hold{'' if several else 's'} class "
        f"folders ({classes}); preprocess {'one of them' if several else 'it'}: "
        f"fer preprocess {root / largest}"
    )
