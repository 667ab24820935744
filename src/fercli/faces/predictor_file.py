"""dlib's 68-point landmark model file read into NumPy arrays (ShapeModel), without dlib: its
serialised trees decoded with vectorized NumPy, and the arrays stored under FER_HOME so that
later runs map them from disk (see fercli.faces.landmarks for why)."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORE_VERSION = 1  # of the arrays stored under FER_HOME/dlib; raise it to convert again
# Largest exponent in a model of finite, normal float32 numbers; dlib writes inf and NaN as
# exponents far outside it.
MAX_EXPONENT = 160
# Splits in a tree: dlib's default depth of 4 gives 15.
MAX_SPLITS = 15


class ModelFormatError(ValueError):
    """The file is not a dlib shape_predictor in the layout this reader knows."""


@dataclass(frozen=True)
class ShapeModel:
    """The arrays of a dlib shape_predictor (cascade levels x trees x ...)."""

    initial: np.ndarray  # (parts, 2) float32: the mean shape, in the unit square of the face box
    split_left: np.ndarray  # (levels, trees, splits) int32: first feature pixel of each split
    split_right: np.ndarray  # (levels, trees, splits) int32: second feature pixel
    thresholds: np.ndarray  # (levels, trees, splits) float32
    leaves: np.ndarray  # (levels, trees, leaves, parts * 2) float32: shape updates
    anchors: np.ndarray  # (levels, pixels) int32: landmark each feature pixel is placed from
    deltas: np.ndarray  # (levels, pixels, 2) float32: its offset from that landmark


class _Reader:
    """dlib's serialized integers, read one at a time (for the small parts of the file)."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def integer(self) -> int:
        if self.offset >= len(self.data):
            raise ModelFormatError("the file ends too early")
        head = self.data[self.offset]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise ModelFormatError(f"bad integer header at byte {self.offset}")
        value = int.from_bytes(self.data[self.offset + 1 : self.offset + 1 + size], "little")
        self.offset += 1 + size
        return -value if head & 0x80 else value

    def expect(self, value: int, what: str) -> None:
        found = self.integer()
        if found != value:
            raise ModelFormatError(f"{what}: expected {value}, found {found}")

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        _check_exponents(np.array([exponent]))
        return float(np.float32(np.ldexp(float(mantissa), exponent)))


def _check_exponents(exponents: np.ndarray) -> None:
    if exponents.size and np.abs(exponents).max() > MAX_EXPONENT:
        raise ModelFormatError("a number that is not a finite float")


def _reals(mantissas: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    _check_exponents(exponents)
    # A mantissa has at most 24 bits, so it and the result are exact in float32.
    if mantissas.size and np.abs(mantissas).max() >= 1 << 24:
        raise ModelFormatError("a number that is not a float32")
    return np.ldexp(mantissas.astype(np.float32), exponents.astype(np.int32))


class _Lockstep:
    """Many runs of dlib integers read side by side: one NumPy step reads one integer of each.

    dlib writes an integer as a header byte (its length in bytes, and the sign) and then its
    bytes, so where one integer starts depends on every one before it. Runs whose starts are
    known (one per leaf, one per tree) can still be read all at once.
    """

    def __init__(self, data: bytes) -> None:
        # Room for a run that has gone wrong to read past the end (it is then marked bad).
        self.bytes = np.frombuffer(data + bytes(32), np.uint8)
        self.end = len(data)

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The integers starting at positions, the positions after them, and which of them
        are well-formed (a header byte within the file)."""
        positions = np.minimum(positions, self.end)
        head = self.bytes[positions]
        size = head & 0x0F
        good = (size <= 8) & (head & 0x70 == 0) & (positions < self.end)
        size = np.minimum(size, 8)
        values = np.zeros(len(positions), np.int64)
        for byte in range(8):
            longer = size > byte
            if not longer.any():
                break
            values |= (self.bytes[positions + 1 + byte].astype(np.int64) * longer) << (8 * byte)
        return np.where(head & 0x80, -values, values), positions + 1 + size, good

    def expect(self, positions: np.ndarray, value: int, what: str) -> np.ndarray:
        found, after, good = self.read(positions)
        if not good.all() or np.any(found != value):
            raise ModelFormatError(f"{what}: expected {value}")
        return after


@dataclass(frozen=True)
class _Forest:
    """The sizes of a model's forest and where its parts start, read from the file's head."""

    initial: np.ndarray  # (parts, 2) float32: the mean shape
    column_header: bytes  # the header bytes of a (parts * 2)-row column, which every leaf repeats
    levels: int
    trees: int  # in each level
    splits: int  # in each tree
    first_tree: int  # byte where the first tree starts

    @property
    def leaf_count(self) -> int:
        return self.splits + 1

    @property
    def parts2(self) -> int:
        return self.initial.size


def parse_shape_predictor(data: bytes) -> ShapeModel:
    """A dlib shape_predictor file (dlib's serialize format, version 1) as arrays.
    ModelFormatError if it is anything else.

    The file holds, in order: the mean shape, the forest (per cascade level, per tree: the
    splits, then the leaves, each a column of shape updates) and the feature pixels (per
    level: the landmark each is placed from, then its offset). The forest is nearly all of
    it and is read with NumPy, every leaf (and then every tree's splits) side by side.
    """
    forest = _read_head(data)
    stream = _Lockstep(data)
    leaves = _LeafCandidates(data, stream, forest)
    tree_starts, leaf_rows, end = _follow_trees(data, forest, leaves)
    first_leaves = leaves.offsets[leaf_rows[:: forest.leaf_count]]
    fields = _read_splits(stream, forest, tree_starts, first_leaves)
    if not leaves.well_formed[leaf_rows].all():
        raise ModelFormatError("a leaf value that is not a finite float")
    shape = (forest.levels, forest.trees, forest.splits)
    leaf_values = np.ascontiguousarray(leaves.values[:, leaf_rows].T)
    thresholds = _reals(fields[2].T, fields[3].T).reshape(shape)
    anchors, deltas = _read_feature_pixels(data, end, forest)
    _check_indices(forest, anchors, deltas, fields[:2])
    return ShapeModel(
        initial=forest.initial,
        split_left=fields[0].T.reshape(shape).astype(np.int32),
        split_right=fields[1].T.reshape(shape).astype(np.int32),
        thresholds=thresholds,
        leaves=leaf_values.reshape(*shape[:2], forest.leaf_count, forest.parts2),
        anchors=anchors.astype(np.int32),
        deltas=deltas,
    )


def _read_head(data: bytes) -> _Forest:
    """The mean shape and the forest's sizes, read up to the first tree's leaves."""
    head = _Reader(data)
    head.expect(1, "version")
    start = head.offset
    parts2 = -head.integer()
    head.expect(-1, "mean shape columns")
    if parts2 <= 0 or parts2 % 2:
        raise ModelFormatError("bad mean shape")
    # Every leaf is a column of the same size, so its header bytes recur before each leaf.
    column_header = data[start : head.offset]
    initial = np.array([head.real() for _ in range(parts2)], np.float32).reshape(-1, 2)
    levels = head.integer()
    trees = head.integer()
    first_tree = head.offset
    splits = head.integer()
    for _ in range(4 * splits):
        head.integer()
    leaf_count = head.integer()
    if not (0 < levels < 1000 and 0 < trees < 100000 and leaf_count == splits + 1 and splits > 0):
        raise ModelFormatError("bad forest sizes")
    if (splits + 1) & splits:
        raise ModelFormatError("trees that are not complete binary trees")
    if splits > MAX_SPLITS:
        # The predictor looks leaves up in a table of every outcome of a tree's splits.
        raise ModelFormatError(f"trees of {splits} splits (at most {MAX_SPLITS} are supported)")
    return _Forest(initial, column_header, levels, trees, splits, first_tree)


class _LeafCandidates:
    """Every place the column header occurs, read as a leaf.

    Each may start a leaf (a few are chance occurrences inside numbers); each is read as far
    as a leaf would go, all side by side, and _follow_trees then picks the real leaves by
    following the file from its first leaf.
    """

    def __init__(self, data: bytes, stream: _Lockstep, forest: _Forest) -> None:
        header = forest.column_header
        matches = re.finditer(re.escape(header), data)
        self.offsets = np.array([match.start() for match in matches], np.int64)
        self.index_of = {int(offset): index for index, offset in enumerate(self.offsets)}
        self.values = np.empty((forest.parts2, len(self.offsets)), np.float32)
        self.well_formed = np.ones(len(self.offsets), bool)
        position = self.offsets + len(header)
        for part in range(forest.parts2):
            mantissa, position, good = stream.read(position)
            self.well_formed &= good
            exponent, position, good = stream.read(position)
            # A mantissa has at most 24 bits, so it and the value are exact in float32.
            in_range = (np.abs(exponent) <= MAX_EXPONENT) & (np.abs(mantissa) < 1 << 24)
            self.well_formed &= good & in_range
            exponent = np.clip(exponent, -MAX_EXPONENT, MAX_EXPONENT).astype(np.int32)
            np.ldexp(mantissa.astype(np.float32), exponent, out=self.values[part])
        self.ends = position  # where the leaf read from each candidate would end

    def first_after(self, offset: int) -> int:
        """The first candidate at or after offset."""
        found = np.searchsorted(self.offsets, offset)
        if found >= len(self.offsets):
            raise ModelFormatError("the file ends too early")
        return int(self.offsets[found])


def _follow_trees(
    data: bytes, forest: _Forest, leaves: _LeafCandidates
) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each tree starts, the candidate row of each of its leaves (in file order), and
    the byte after the forest: the file followed leaf by leaf."""
    tree_starts = np.empty(forest.levels * forest.trees, np.int64)
    leaf_rows = np.empty(forest.levels * forest.trees * forest.leaf_count, np.int64)
    offset = forest.first_tree
    row = 0
    for level in range(forest.levels):
        if level:
            reader = _Reader(data, offset)
            reader.expect(forest.trees, "trees in a level")
            offset = reader.offset
        for tree in range(forest.trees):
            tree_starts[level * forest.trees + tree] = offset
            # The first leaf follows the splits, whose length _read_splits reads; here it is
            # the first candidate far enough on (a chance one in between makes _read_splits'
            # check fail, and dlib's own predictor is used).
            leaf = leaves.first_after(offset + 2 + 8 * forest.splits)
            for _ in range(forest.leaf_count):
                index = leaves.index_of.get(leaf)
                if index is None:
                    raise ModelFormatError(f"no leaf at byte {leaf}")
                leaf_rows[row] = index
                row += 1
                leaf = int(leaves.ends[index])
            offset = leaf
    return tree_starts, leaf_rows, offset


def _read_splits(
    stream: _Lockstep, forest: _Forest, tree_starts: np.ndarray, first_leaves: np.ndarray
) -> np.ndarray:
    """The (4, splits, trees) fields of every split (two feature pixels, a threshold's
    mantissa and exponent), all trees side by side; each tree's splits must end just where
    its first leaf was found to begin."""
    at = stream.expect(tree_starts, forest.splits, "splits in a tree")
    fields = np.empty((4, forest.splits, len(tree_starts)), np.int64)
    for split in range(forest.splits):
        for field in range(4):
            fields[field, split], at, good = stream.read(at)
            if not good.all():
                raise ModelFormatError("bad integer header in a split")
    at = stream.expect(at, forest.leaf_count, "leaves in a tree")
    if np.any(at != first_leaves):
        raise ModelFormatError("splits and leaves do not line up")
    return fields


def _read_feature_pixels(
    data: bytes, offset: int, forest: _Forest
) -> tuple[np.ndarray, np.ndarray]:
    """The (levels, pixels) anchors and (levels, pixels, 2) deltas that end the file."""
    tail = _Reader(data, offset)
    tail.expect(forest.levels, "anchor levels")
    anchors = []
    for _ in range(forest.levels):
        anchors.append([tail.integer() for _ in range(tail.integer())])
    tail.expect(forest.levels, "offset levels")
    deltas = []
    for _ in range(forest.levels):
        deltas.append([(tail.real(), tail.real()) for _ in range(tail.integer())])
    if tail.offset != len(data):
        raise ModelFormatError("data after the end of the model")
    anchors = np.array(anchors, np.int64)
    deltas = np.array(deltas, np.float32)
    pixels = deltas.shape[1] if deltas.ndim == 3 else -1
    if anchors.shape != (forest.levels, pixels) or deltas.shape != (forest.levels, pixels, 2):
        raise ModelFormatError("feature pixels of different counts")
    return anchors, deltas


def _check_indices(
    forest: _Forest, anchors: np.ndarray, deltas: np.ndarray, split_pixels: np.ndarray
) -> None:
    """Every index points at something that exists: the predictor reads arrays by them."""
    if anchors.min() < 0 or anchors.max() >= len(forest.initial):
        raise ModelFormatError("a feature pixel placed from a landmark that does not exist")
    pixels = deltas.shape[1]
    for index in split_pixels:
        if index.min() < 0 or index.max() >= pixels:
            raise ModelFormatError("a split on a feature pixel that does not exist")


STORED_ARRAYS = ("initial", "split_left", "split_right", "thresholds", "anchors", "deltas")


def stored_paths(source: Path, folder: Path) -> tuple[Path, Path]:
    """Where the arrays converted from source are kept: the leaves alone, so that every
    process maps them from the page cache instead of copying 65 MB."""
    stat = source.stat()
    stem = f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}-v{STORE_VERSION}"
    return folder / f"{stem}.npz", folder / f"{stem}.leaves.npy"


def load_stored(source: Path, folder: Path) -> ShapeModel | None:
    """The converted model if it is stored whole, else None."""
    arrays_path, leaves_path = stored_paths(source, folder)
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in STORED_ARRAYS}
        leaves = np.load(leaves_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    model = ShapeModel(leaves=leaves, **arrays)
    levels, trees, splits = model.split_left.shape
    if leaves.dtype != np.float32 or leaves.shape != (
        levels,
        trees,
        splits + 1,
        model.initial.size,
    ):
        return None
    return model


def save_converted(model: ShapeModel, source: Path, folder: Path) -> None:
    """Store the arrays (leaves first: a model counts as stored once its small arrays are)."""
    from fercli.core.store import atomic_save

    arrays_path, leaves_path = stored_paths(source, folder)
    atomic_save(leaves_path, lambda name: np.save(name, model.leaves))
    atomic_save(
        arrays_path,
        lambda name: np.savez(name, **{key: getattr(model, key) for key in STORED_ARRAYS}),
    )
