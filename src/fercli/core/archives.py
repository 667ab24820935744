"""fercli's .npz files (models and datasets) written and read without trusting them, and model
files read the same way wherever one is read: loading a model (infer), `fer list` (data), the
choice of the default model, and `fer train --output`'s check of the file it would replace.

A model file is an .npz archive (a zip of .npy arrays): the arrays of its networks and `meta`,
its description as JSON. Nothing is unpickled, and the sizes the zip's directory declares are
checked before anything is unpacked: a 500 KB file can unpack to gigabytes. meta_problem
checks the shape of that description, so that no command meets an entry of the wrong type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fercli.core.errors import ModelError

MODEL_FORMAT = "fercli-model"
# Version 2 added ensembles: the first network is stored as in version 1 (meta "layers",
# norm_mean, norm_std); meta "members" describes the others, whose arrays are prefixed
# member<i>_. Version 1 files (one network) are read as they are.
MODEL_FORMAT_VERSION = 2
# Version 3: the same layout, with each crop standardised by its own mean and std before the
# stored statistics (meta "per_image_standardisation"); written only for such models, so that
# an older fercli refuses them rather than feeding them unstandardised crops.
PER_IMAGE_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
# A model holds a few MB of weights (the widest variant about 4 MB). Refuse files that unpack
# to more, before unpacking them.
MAX_MODEL_BYTES = 256 * 2**20
# Its meta is a few KB of JSON (a 50-network ensemble's about 100 KB): reading more to list a
# model would only cost time and memory.
MAX_META_BYTES = 16 * 2**20


def npz_problem(path: Path) -> str | None:
    """Why a file cannot be a .npz archive (fercli's models and datasets), from its first
    bytes; None if it may be one. Without this, NumPy takes any other file for a pickle and
    suggests loading it unsafely."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as error:
        return f"cannot read it: {error.strerror or error}"
    if not head:
        return "an empty file"
    if head != b"PK\x03\x04":
        return "not an .npz archive"
    return None


def pack_json(payload: object) -> np.ndarray:
    """JSON as a uint8 array, so that metadata travels inside a pickle-free .npz."""
    return np.frombuffer(json.dumps(payload, default=str, allow_nan=False).encode(), dtype=np.uint8)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def unpack_json(array: np.ndarray) -> object:
    """The JSON that pack_json stored; ValueError for NaN or Infinity, which it never writes."""
    return json.loads(array.tobytes().decode(), parse_constant=_no_constant)


class MetaTooLarge(ValueError):
    """An archive's meta that unpacks to more than its limit."""


def archive_meta(archive, limit: int = MAX_META_BYTES) -> object:
    """The JSON that an open .npz archive's meta array holds (pack_json's), its unpacked size
    read from the zip's directory first: MetaTooLarge beyond limit bytes (models and datasets
    alike: their meta is a few KB)."""
    size = archive.zip.getinfo("meta.npy").file_size
    if size > limit:
        raise MetaTooLarge(
            f"its metadata unpacks to {size / 2**20:.0f} MB (limit {limit // 2**20} MB)"
        )
    return unpack_json(archive["meta"])


def array_length(archive, name: str) -> int:
    """The length of an open .npz archive's array as its header declares it, without reading
    (or unpacking) the array."""
    with archive.zip.open(f"{name}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape = header(stream)[0]
    if not shape:
        raise ValueError(f"{name} is a single value, not an array")
    return int(shape[0])


def read_model_archive(path: Path, with_arrays: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """A model file's meta (a JSON object of fercli's format) and, with_arrays, its other
    arrays (else an empty dict), read without unpickling, after the checks that need no
    unpacking. ModelError "PATH: reason" for a missing or irregular file (a folder, a FIFO),
    one that unpacks to more than MAX_MODEL_BYTES or whose meta to more than MAX_META_BYTES,
    an unreadable or a foreign one. The format version and the meta's contents are the
    reader's to check (infer.model)."""
    path = Path(path)
    if not path.is_file():
        # Never opened: reading a FIFO would wait for ever.
        if path.exists() and not path.is_dir():
            raise ModelError(
                f"{path}: not a fercli model file (not a regular file: a FIFO, socket or device)"
            )
        raise ModelError(f"{path}: no such model file{' (a folder)' if path.is_dir() else ''}")
    problem = npz_problem(path)
    if problem:
        raise ModelError(f"{path}: not a fercli model file ({problem})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            sizes = {member.filename: member.file_size for member in archive.zip.infolist()}
            unpacked = sum(sizes.values())
            if unpacked > MAX_MODEL_BYTES:
                raise ModelError(
                    f"{path}: not a fercli model file: it unpacks to {unpacked / 2**20:.0f} MB, "
                    f"more than any fercli model (limit {MAX_MODEL_BYTES // 2**20} MB)"
                )
            meta = archive_meta(archive)
            arrays = (
                {key: archive[key] for key in archive.files if key != "meta"} if with_arrays else {}
            )
    except ModelError:
        raise
    except MetaTooLarge as error:
        raise ModelError(f"{path}: not a fercli model file: {error}") from None
    except Exception as error:  # nothing is unpickled: any failure is a damaged or foreign file
        raise ModelError(
            f"{path}: not a fercli model file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a fercli model file")
    return meta, arrays


def model_file_problem(path: Path) -> str | None:
    """Why a file is not a fercli model file that can be read (its meta, within the limits,
    says so), as read_model_archive words it without the path; None when it is one."""
    try:
        read_model_archive(path, with_arrays=False)
    except ModelError as error:
        return str(error).removeprefix(f"{path}: ")
    return None


def newest_first(folder: Path, pattern: str) -> list[Path]:
    """The files matching a glob pattern below folder, the most recently written first
    (hidden names left out; a file removed while we look, or a folder that cannot be read,
    passed over)."""
    try:
        candidates = [path for path in folder.glob(pattern) if not path.name.startswith(".")]
    except OSError:
        return []
    dated = []
    for path in candidates:
        try:
            dated.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed while we looked
    return [path for _, path in sorted(dated, reverse=True)]


def newest_model_file(folder: Path) -> Path | None:
    """The model file (*.npz) written most recently in folder that can be read as one
    (model_file_problem): what predict uses when no model is named, and what fer list calls
    the newest. Files that cannot be read (damaged, oversized, foreign) are passed over; None
    if there is no other."""
    return next(
        (path for path in newest_first(folder, "*.npz") if model_file_problem(path) is None),
        None,
    )


# What each entry of a model file's meta must be, and whether it must be there (the others may
# be absent or null: files written by older fercli versions lack some).
_META_SHAPE: dict[str, tuple[type, bool]] = {
    "classes": (list, True),
    "layers": (list, True),
    "preprocess": (dict, True),
    "preprocess_fingerprint": (str, True),
    "members": (list, False),
    "training": (dict, False),
    "dataset": (dict, False),
    "datasets": (list, False),
    "data_fingerprint": (str, False),
    "ensemble": (dict, False),
    "versions": (dict, False),
    "test_time_flip": (bool, False),
    "per_image_standardisation": (bool, False),
}
# The entries of the dataset a model was trained on (meta "dataset", and each of meta
# "datasets" when several were combined); each may be absent or null.
_DATASET_SHAPE: dict[str, type] = {"name": str, "source": str, "images": int, "split": str}
_KINDS = {dict: "an object", list: "a list", str: "a text", bool: "true or false", int: "a number"}


def json_kind(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return _KINDS.get(type(value), type(value).__name__)


def _is(value: object, kind: type) -> bool:
    """isinstance for JSON values, where true and false are not numbers."""
    if kind is int:
        return type(value) is int
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def meta_problem(meta: dict) -> str | None:
    """What in a model file's meta has the wrong shape, in words (None when nothing does): an
    entry of another type (training as text), a layer that is not an object, a dataset's
    figures that are not numbers. For a meta of a format version its reader knows: the
    version is the reader's to check first (infer.model)."""
    for name, (kind, required) in _META_SHAPE.items():
        value = meta.get(name)
        if value is None and not required:
            continue
        if not _is(value, kind):
            return f"its {name} is {json_kind(value)}, not {_KINDS[kind]}"
    layers = meta["layers"]
    if not all(isinstance(spec, dict) and isinstance(spec.get("weights"), list) for spec in layers):
        return "its layers are not each an object with a list of weights"
    parts = [("dataset", meta.get("dataset") or {})] + [
        (f"datasets[{index}]", part) for index, part in enumerate(meta.get("datasets") or [])
    ]
    for where, part in parts:
        if not isinstance(part, dict):
            return f"its {where} is {json_kind(part)}, not an object"
        for name, kind in _DATASET_SHAPE.items():
            value = part.get(name)
            if value is not None and not (_is(value, kind) and (kind is not int or value >= 0)):
                return f"its {where}.{name} is {json_kind(value)}, not {_KINDS[kind]}"
    return None


def model_meta_problem(meta: dict) -> str | None:
    """Why a model file's meta (read_model_archive's) cannot be used, as the error says it
    after the file's path: a format version this fercli does not read, or an entry of the
    wrong shape (meta_problem), or a per-image flag that does not go with its version; None
    when nothing."""
    version = meta.get("format_version")
    if version is not None and type(version) is not int:
        return f"damaged model file (its format version {version!r} is not a whole number)"
    if version not in READABLE_FORMAT_VERSIONS:
        return (
            f"model format version {version} is not supported by this fercli (it reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS[:-1]))} and "
            f"{READABLE_FORMAT_VERSIONS[-1]}); retrain with `fer train`"
        )
    problem = meta_problem(meta)
    per_image = meta.get("per_image_standardisation")
    if not problem and bool(per_image) != (version == PER_IMAGE_FORMAT_VERSION):
        problem = (
            "per_image_standardisation is written only in format version 3 files, and this "
            f"one is version {version}"
            if per_image
            else "a format version 3 file standardises each crop by itself, and its "
            f"per_image_standardisation is {json_kind(per_image)}"
        )
    return f"damaged model file ({problem})" if problem else None
