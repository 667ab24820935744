"""Finding the files a command is given: folders searched through, hidden files left out, and
files whose first bytes are no image's or video's skipped with a reason (Skipped)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: str
    reason: str
    # False for a file that is no image, met while searching a folder (a README.md beside the
    # photos): counted, not named one by one, as it was never asked for.
    listed: bool = True


def is_visible(name: str) -> bool:
    # Hidden files (.DS_Store, ._x.png from macOS archives) are system files, not data.
    return not name.startswith(".")


def files_under(folder: Path, skipped: list[Skipped] | None = None) -> list[Path]:
    """Every visible regular file below a folder, sorted, without following folder links.

    Sub-folders that cannot be read are added to skipped (when given) rather than passed
    over in silence: their images would otherwise just be missing from the dataset.
    """

    def unreadable(error: OSError) -> None:
        if skipped is not None:
            skipped.append(
                Skipped(str(error.filename), f"cannot read the folder: {error.strerror or error}")
            )

    found = []
    for directory, subdirectories, names in os.walk(folder, onerror=unreadable):
        subdirectories[:] = sorted(name for name in subdirectories if is_visible(name))
        found.extend(Path(directory) / name for name in names if is_visible(name))
    return sorted(found)


def discover_images(paths: list[Path]) -> tuple[list[Path], list[Skipped]]:
    """The image (and video) files named by a list of files and folders (folders searched through),
    in the order given, and the paths that named nothing. Files inside folders whose first
    bytes are no image's are left out, as Skipped with listed False; files named
    themselves are always returned, so that the reader says why one cannot be used."""
    files, problems = [], []
    for path in map(Path, paths):
        if path.is_dir():
            inside = files_under(path, problems)
            if not inside:
                problems.append(Skipped(str(path), "folder has no files"))
            for file in inside:
                if _may_be_image(file):
                    files.append(file)
                else:
                    problems.append(
                        Skipped(str(file), "not an image (unrecognised content)", listed=False)
                    )
        elif path.exists():
            files.append(path)
        else:
            problems.append(Skipped(str(path), "no such file or folder"))
    return files, problems


def _may_be_image(path: Path) -> bool:
    """False only for a regular file whose first bytes are readable and no image format's; an
    empty or unreadable file, or a FIFO (reading it could wait for ever), is for the image
    reader to report."""
    from fercli.media.images import sniff_format
    from fercli.media.video import sniff_video

    try:
        if not path.is_file():
            return True
        with open(path, "rb") as stream:
            head = stream.read(16)
    except OSError:
        return True
    return not head or sniff_format(head) is not None or sniff_video(head) is not None
