"""Where fercli keeps its files, and how it writes them so that a killed run corrupts nothing.

Everything lives under one folder, FER_HOME (default: $XDG_DATA_HOME/fercli, that is
~/.local/share/fercli):

    crops/<settings>/<xx>/<sha256>.json   cache of aligned crops, keyed by file content
    datasets/<name>-<id>/dataset.npz      a preprocessed dataset: crops, labels, subjects
    datasets/<name>-<id>/contact_sheet.png
    models/<name>-<time>.npz              trained models
    dlib/                                 dlib's face detector (1 ms to load, not 240) and its
                                          68-point model as NumPy arrays (15 ms, not 480)
    runs/crossval-<name>-<time>/          cross-validation reports

Every file is written to a temporary name in the same folder and renamed into place, so
readers see either the old file or the new one, never half of one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Re-exported: fercli's .npz files are read and written through core.archives.
from fercli.core.archives import newest_first, newest_model_file
from fercli.core.archives import npz_problem as npz_problem
from fercli.core.archives import pack_json as pack_json
from fercli.core.archives import unpack_json as unpack_json
from fercli.core.errors import StoreError

HOME_VARIABLE = "FER_HOME"


def home() -> Path:
    """The root of fercli's files: $FER_HOME, else $XDG_DATA_HOME/fercli."""
    explicit = os.environ.get(HOME_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "fercli"


def crops_dir() -> Path:
    return home() / "crops"


def datasets_dir() -> Path:
    return home() / "datasets"


def models_dir() -> Path:
    return home() / "models"


def runs_dir() -> Path:
    return home() / "runs"


def dlib_dir() -> Path:
    return home() / "dlib"


def own_folder(path: Path) -> tuple[Path, str] | None:
    """The folder of FER_HOME where fercli keeps its own files (datasets, models, runs, the
    crop cache, dlib's models) that path is or lies inside (links followed), with what it
    holds; None for any other path, FER_HOME itself included."""
    folders = {
        datasets_dir(): "preprocessed datasets",
        models_dir(): "models",
        runs_dir(): "reports of its runs",
        crops_dir(): "crop cache",
        dlib_dir(): "copy of dlib's models",
    }
    try:
        place = Path(path).resolve()
        for folder, holds in folders.items():
            if place == folder.resolve() or folder.resolve() in place.parents:
                return folder, holds
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        return None
    return None


def timestamp() -> str:
    """A sortable local time for file names."""
    return time.strftime("%Y%m%d-%H%M%S")


def numbered(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """path, then path with -2, -3, ... before its suffix (default: the file's, as in .npz;
    "" for a folder, whose name may hold a dot): names for a new file or folder."""
    suffix = path.suffix if suffix is None else suffix
    stem = path.name[: len(path.name) - len(suffix)]
    yield path
    for number in itertools.count(2):
        yield path.with_name(f"{stem}-{number}{suffix}")


def new_dir(path: Path) -> Path:
    """Create a new, empty folder at path, or at path-2, path-3, ... if that name is taken.

    Creating is the check, so two runs started in the same second get a folder each.
    StoreError if the folder cannot be made.
    """
    make_dir(path.parent)
    try:
        return _first_free(path, Path.mkdir, suffix="")
    except OSError as error:
        raise _store_error(path, error) from None


def _first_free(path: Path, create, suffix: str | None = None) -> Path:
    """create(name) for the names of numbered(path, suffix) in turn, until one did not exist."""
    names = numbered(path, suffix)
    while True:
        name = next(names)
        try:
            create(name)
            return name
        except FileExistsError:
            pass


def slug(text: str) -> str:
    """A file-name-safe version of a name. "+" is kept: it is safe in file names everywhere,
    datasets are named with it (CK+48), and several combined are joined by it (jaffe+ck48),
    so that a name given on the command line finds what was stored under it."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return cleaned[:40] or "dataset"


def _store_error(path: Path, error: OSError) -> StoreError:
    """The one-line error of a failed write; the FER_HOME hint only for a path in FER_HOME
    (for --annotate /dev/null or a file the user named, it would be beside the point)."""
    reason = error.strerror or str(error)
    try:
        own = home().resolve()
        inside = Path(path).resolve() == own or own in Path(path).resolve().parents
    except (OSError, RuntimeError):
        inside = False
    hint = f" (set {HOME_VARIABLE} or pass an output path to move it)" if inside else ""
    return StoreError(f"cannot write {path}: {reason}{hint}")


def make_dir(path: Path) -> Path:
    """Create a folder (and parents); StoreError with the reason if that is not possible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _store_error(path, error) from None
    return path


def check_writable(folder: Path) -> Path:
    """Make sure files can be created in a folder before hours of work go into them."""
    make_dir(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise _store_error(folder, error) from None
    return folder


def check_output_file(path: Path) -> Path:
    """Refuse, before any work, an output file name that a finished run must not replace:
    anything but a regular file or a new name (a folder, a device, a FIFO), and any file in
    FER_HOME's datasets folder. StoreError with the reason; makes sure the folder is writable."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise StoreError(f"{path}: is {kind}; give the name of a new or regular file")
    try:
        places = [path.parent.resolve() / path.name, path.resolve()]
        datasets = datasets_dir().resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a link loop, before Python 3.13
        raise StoreError(f"{path}: cannot follow the path ({error})") from None
    if any(place == datasets or datasets in place.parents for place in places):
        raise StoreError(
            f"{path}: is inside {datasets_dir()}, where fercli keeps preprocessed datasets; "
            "choose another place for the model"
        )
    check_writable(path.parent)
    return path


def atomic_write(path: Path, write, keep_existing: bool = False, check=None) -> Path:
    """Write a file through write(file_object) to a temporary name, then rename it into place.

    A failure (disk full, read-only folder, a kill) leaves any existing file untouched and no
    temporary file behind, except after a kill, when the temporary file is named .tmp-*.
    keep_existing: never replace a file; write to path-2, path-3, ... instead (two runs that
    made up the same name). check(temporary_path), when given, runs on the complete file
    before the rename: whatever it raises leaves path as it was. Returns the path written.
    """

    def fill(handle: int, name: str) -> None:
        with os.fdopen(handle, "wb") as stream:
            write(stream)

    return _replace_with(path, fill, keep_existing, check)


def atomic_save(path: Path, save, keep_existing: bool = False) -> Path:
    """atomic_write for writers that take a file name (dlib's save, OpenCV's VideoWriter)
    rather than a stream."""

    def fill(handle: int, name: str) -> None:
        os.close(handle)
        save(name)

    return _replace_with(path, fill, keep_existing)


def _replace_with(path: Path, fill, keep_existing: bool = False, check=None) -> Path:
    """fill(handle, name) writes a temporary file (and closes handle); check(name), if given,
    accepts it; it then replaces path."""
    make_dir(path.parent)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    except OSError as error:
        raise _store_error(path, error) from None
    try:
        # mkstemp makes the file owner-only; give it the mode open() would (0666 less the umask).
        # Windows before Python 3.13 has no os.fchmod (nor owner-only files to widen).
        if hasattr(os, "fchmod"):
            os.fchmod(handle, 0o666 & ~_umask())
        fill(handle, temporary)
        if check:
            check(Path(temporary))
        if keep_existing:
            path = _link_first_free(temporary, path)
            _remove_quietly(temporary)
        else:
            os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise _store_error(path, error) from None
    except BaseException:
        _remove_quietly(temporary)
        raise
    return path


def _link_first_free(temporary: str, path: Path) -> Path:
    """Give the finished temporary file the first free name of numbered(path) and return it.

    A hard link takes a name only if it is free, and the name appears with the whole file
    behind it: a reader never sees it empty or half written (the latest model, as predict
    looks for it). Where hard links are not supported, the name is claimed by creating it
    empty and the file renamed onto it, so two runs still never get one name.
    """
    for name in numbered(path):
        try:
            os.link(temporary, name)
            return name
        except FileExistsError:
            continue
        except OSError:
            claimed = _first_free(name, _create_empty)
            try:
                os.replace(temporary, claimed)
            except BaseException:
                _remove_quietly(claimed)
                raise
            return claimed
    raise RuntimeError("unreachable: numbered() never ends")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write text as UTF-8. A name read from undecodable file-name bytes (a folder "caf\\xe9")
    holds a lone surrogate, which UTF-8 cannot encode: it is written as the escape \\udce9,
    which a JSON reader turns back into the same name."""
    return atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(path: Path, payload: object) -> Path:
    # allow_nan=False: NaN and Infinity are not JSON; a report never holds them.
    return atomic_write_text(
        path, json.dumps(payload, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    )


def _create_empty(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _umask() -> int:
    """The process's umask. Reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def latest(folder: Path, pattern: str) -> Path | None:
    """The most recently written file matching a glob pattern below a folder."""
    found = newest_first(folder, pattern)
    return found[0] if found else None


def abbreviated(given: str, names: list[str]) -> list[str]:
    """The names that given is the start of, up to a "-" or ".": `ck48` for the dataset
    ck48-b6489086, `ck48-b6489086-2026` for a model ck48-b6489086-20261124-140056.npz. Only
    whole parts of a name, so that `shape` never stands for `shapes`."""
    return [name for name in names if name.startswith((f"{given}-", f"{given}."))]


def name_not_found(given: str, names: list[str], matches: list[str], what: str) -> str:
    """Why given names no entry: several it abbreviates, or none (with the closest names)."""
    import difflib

    if len(matches) > 1:
        listed = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
        return f"{given}: could be any of {len(matches)} {what} ({listed}); give more of the name"
    # A name is compared also without its hash or time (ck48 for ck48-b6489086), which is
    # what people type.
    heads: dict[str, list[str]] = {}
    for name in names:
        pieces = name.split("-")
        for end in range(1, len(pieces) + 1):
            heads.setdefault("-".join(pieces[:end]), []).append(name)
    close = difflib.get_close_matches(given, list(heads), n=3, cutoff=0.6)
    suggested = list(dict.fromkeys(name for head in close for name in heads[head]))[:3]
    hint = f"; did you mean {' or '.join(suggested)}?" if suggested else ""
    return f"{given}: no {what} of that name{hint}"


def default_model() -> Path | None:
    """The model file fer predict, evaluate and live use when none is named: the one trained
    most recently, in FER_HOME/models, that can be read as one (core.archives: a damaged,
    oversized or foreign file is passed over, and fer list says why); None when there is
    none."""
    return newest_model_file(models_dir())


@dataclass(frozen=True)
class DefaultModelChange:
    """A command's model file that became the default (default_model): what to tell the user,
    whose next fer predict it changes."""

    now: Path
    was: Path | None

    def describe(self) -> str:
        was = self.was.name if self.was is not None else "none"
        return f"the default model for fer predict is now {self.now.name} (was {was})"


def default_model_change(before: Path | None, written: Path) -> DefaultModelChange | None:
    """The change a command made by writing the model file written, the default having been
    before (default_model() when it started); None when the default is not that file, or
    already was."""
    now = default_model()
    if now is None or before is not None and now == before:
        return None
    try:
        if not now.samefile(written):
            return None
    except OSError:
        return None
    return DefaultModelChange(now, before)
