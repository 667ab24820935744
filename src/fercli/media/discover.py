"""Finding the files a command is given: folders searched through (links to folders followed,
loops and repeats left out and said), hidden files left out, files whose first bytes are no
image's or video's skipped with a reason (Skipped), and the folders fercli wrote its own
pictures to (--annotate, --explain) left out: fercli's outputs are never read back as its
inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The file fercli writes into each folder it puts pictures in (mark_output_folder): searching
# a folder, fercli leaves out the sub-folders that hold it. Hidden, so never taken for data.
OUTPUT_MARKER = ".fercli-output"


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: str
    reason: str
    # False for a file that is no image, met while searching a folder (a README.md beside the
    # photos): counted, not named one by one, as it was never asked for.
    listed: bool = True
    # A folder not read (a loop, a repeat, unreadable): named, but not counted among the images.
    folder: bool = False


def is_visible(name: str) -> bool:
    # Hidden files (.DS_Store, ._x.png from macOS archives) are system files, not data.
    return not name.startswith(".")


def files_under(
    folder: Path, skipped: list[Skipped] | None = None, left_out: list[Path] | None = None
) -> list[Path]:
    """Every visible regular file below a folder, sorted, following links to folders.

    A linked folder (a class folder kept elsewhere) is read as if it were there, under the
    link's name, and every folder once: the folders really below come first, then the links.
    A link to the folder holding it or to one above (a loop), and a folder met again (a
    repeat), are not read, and are added to skipped (when given) with the reason, as are
    sub-folders that cannot be read: images left out must never be just missing. Sub-folders
    fercli wrote its pictures to (they hold OUTPUT_MARKER) are left out, and added to left_out
    when given; the folder itself is searched whatever it holds.
    """
    search = _Search(skipped, left_out)
    search.first_visit(Path(folder))
    search.walk(Path(folder))
    while search.links:
        link = search.links.pop(0)
        if _is_loop(link):
            search.skip(link, "a link to a folder it is in (a loop): not followed")
        elif search.first_visit(link):
            search.walk(link)
    return sorted(search.found)


class _Search:
    """The state of one files_under: the files found, the folders read, the links to follow."""

    def __init__(self, skipped: list[Skipped] | None, left_out: list[Path] | None) -> None:
        self.skipped, self.left_out = skipped, left_out
        self.found: list[Path] = []
        self.read: dict[tuple[int, int], Path] = {}  # each folder read, by device and inode
        self.links: list[Path] = []  # links to folders met, followed after the folders below

    def skip(self, path: str | Path, reason: str) -> None:
        if self.skipped is not None:
            self.skipped.append(Skipped(str(path), reason, folder=True))

    def unreadable(self, error: OSError) -> None:
        self.skip(error.filename, f"cannot read the folder: {error.strerror or error}")

    def first_visit(self, folder: Path) -> bool:
        """Whether a folder is met for the first time (a repeat is skipped, saying so)."""
        identity = _identity(folder)
        if identity is None:
            return True  # for os.walk to report, as it cannot read it
        if identity in self.read:
            self.skip(
                folder, f"the same folder as {self.read[identity]}, already read: not read twice"
            )
            return False
        self.read[identity] = folder
        return True

    def walk(self, top: Path) -> None:
        """The files below top, its links to folders kept for later."""
        for directory, subdirectories, names in os.walk(top, onerror=self.unreadable):
            searched = []
            for name in sorted(name for name in subdirectories if is_visible(name)):
                path = Path(directory) / name
                if is_output_folder(path):
                    if self.left_out is not None:
                        self.left_out.append(path)
                elif path.is_symlink():
                    self.links.append(path)
                elif self.first_visit(path):
                    searched.append(name)
            subdirectories[:] = searched
            self.found.extend(Path(directory) / name for name in names if is_visible(name))


def _identity(folder: Path) -> tuple[int, int] | None:
    """What tells a folder from every other whatever the path to it: device and inode."""
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _is_loop(link: Path) -> bool:
    """Whether a link leads to the folder it is in or one above (`dot -> .`, `up -> ..`):
    reading it would read that folder's content again, or things around the dataset."""
    try:
        target, place = link.resolve(strict=True), link.parent.resolve(strict=True)
    except (OSError, RuntimeError):
        return False  # gone since it was listed: os.walk says it cannot read it
    return place.is_relative_to(target)


def is_output_folder(folder: Path) -> bool:
    """Whether fercli wrote its pictures to this folder (it holds OUTPUT_MARKER)."""
    return os.path.lexists(folder / OUTPUT_MARKER)


def mark_output_folder(folder: Path, made_by: str) -> Path:
    """Create a folder (if need be) for pictures fercli writes, and mark it as fercli's own
    (OUTPUT_MARKER, saying what made_by wrote there) so that a later search of a folder above
    it leaves it out. StoreError if the folder cannot be made or written."""
    from fercli.core.store import atomic_write_text, check_writable

    folder = check_writable(Path(folder))
    if not is_output_folder(folder):
        atomic_write_text(
            folder / OUTPUT_MARKER,
            f"fercli writes pictures here ({made_by}). When fercli searches a folder for images, "
            "it leaves out the folders holding this file, so that its pictures are never read "
            "as photos; delete this file to have this folder read.\n",
        )
    return folder


def left_out_note(folders: list[Path]) -> str | None:
    """What to tell of the output folders a search left out (None: none)."""
    if not folders:
        return None
    count = f"{len(folders)} folder{'s' if len(folders) > 1 else ''}"
    return (
        f"{count} of fercli's own pictures left out: {', '.join(map(str, folders))} (delete "
        f"{OUTPUT_MARKER} in a folder to have it read)"
    )


@dataclass(frozen=True)
class Discovered:
    """The files a command was given, found once and handed to every step that needs them."""

    inputs: list[Path]  # the files and folders asked for, as given
    files: list[Path]  # the image and video files, in the order given
    problems: list[Skipped] = field(default_factory=list)  # named nothing, or no image
    left_out: list[Path] = field(default_factory=list)  # fercli's own output folders

    def notes(self) -> list[str]:
        """What a report should say of the search (the output folders left out)."""
        note = left_out_note(self.left_out)
        return [note] if note else []

    def only(self, files: list[Path]) -> Discovered:
        """The same search, holding only files (some of its own): the images of a command
        that labels images and videos apart."""
        return Discovered(self.inputs, files, self.problems, self.left_out)


def discover(paths: list[Path]) -> Discovered:
    """The image (and video) files named by a list of files and folders (folders searched
    through), in the order given, and the paths that named nothing. Files inside folders whose
    first bytes are no image's are left out, as Skipped with listed False, and so are
    sub-folders fercli wrote its pictures to (Discovered.left_out); files and folders named
    themselves are always read, so that the reader says why one cannot be used."""
    files, problems, left_out = [], [], []
    inputs = [Path(path) for path in paths]
    for path in inputs:
        if path.is_dir():
            inside = files_under(path, problems, left_out)
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
    return Discovered(inputs, files, problems, left_out)


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
