"""dlib's 68-point landmark model, read into NumPy arrays and run with NumPy.

dlib's own loader takes about 0.5 s of CPU in every process that uses the model: the 99 MB
file holds 16 million numbers, each stored as variable-length integers that dlib decodes one
at a time. That was a third of the CPU of a cold `fer preprocess` of JAFFE, and half of a
one-photo `fer predict`. So the model is converted once, with vectorized NumPy, into arrays
stored under FER_HOME, and later runs map them from disk in about 15 ms.

The predictor does what dlib's shape_predictor does, step for step and in the same float32
arithmetic (an ensemble of regression trees, Kazemi and Sullivan 2014), and gives the same
integer landmarks: a conversion is only stored after a check against dlib itself, and the
tests compare the two on real faces.
"""

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
# Faces landmarked in one go at most (each needs 272 KB of working memory).
MAX_FACES_TOGETHER = 32
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


class NumpyShapePredictor:
    """dlib's shape_predictor on a ShapeModel: predictor(gray, box) -> (parts, 2) int64 array,
    gray a 2-D uint8 image.

    Each cascade level places the feature pixels relative to the current shape (through the
    similarity transform from the mean shape), compares pixel pairs at every split of every
    tree, and adds the leaves reached, in tree order and in float32 as dlib does. The
    landmarks are rounded to whole pixels, as dlib's are.
    """

    def __init__(self, model: ShapeModel) -> None:
        self.initial = model.initial
        self.levels, self.trees, self.splits = model.split_left.shape
        self.split_left = model.split_left.reshape(self.levels, -1)
        self.split_right = model.split_right.reshape(self.levels, -1)
        self.thresholds = model.thresholds.reshape(self.levels, -1)
        self.leaf_count = model.leaves.shape[2]
        self.leaves = model.leaves.reshape(-1, model.leaves.shape[3])
        self.anchors = model.anchors
        self.deltas = model.deltas
        mean = self.initial.astype(np.float64)
        self.centred_initial = mean - mean.mean(axis=0)
        self.initial_spread = (self.centred_initial**2).sum() / len(mean)
        self.first_leaf = np.arange(self.trees) * self.leaf_count
        # The leaf each pattern of split outcomes leads to (bit k set: split k went left).
        outcomes = np.arange(1 << self.splits)
        node = np.zeros_like(outcomes)
        while True:
            inner = node < self.splits
            if not inner.any():
                break
            went_left = (outcomes >> np.where(inner, node, 0)) & 1
            node = np.where(inner, 2 * node + 2 - went_left, node)
        self.leaf_of_outcomes = node - self.splits
        self.bit_values = (1 << np.arange(self.splits)).astype(np.uint16)
        self.summands_memory = np.empty(0, np.float32)
        # dlib compares differences of two pixel values, whole numbers from -255 to 255, with
        # float thresholds: d > t exactly when d > floor(t), which lets the comparisons run on
        # 16-bit integers.
        self.whole_thresholds = np.clip(np.floor(self.thresholds), -256, 255).astype(np.int16)

    def _summands(self, count: int) -> np.ndarray:
        """The (trees + 1, count, parts * 2) float32 array the leaves are gathered into.

        Kept from call to call: allocated afresh (3.5 MB for 13 faces), its pages were
        faulted in again on every call, which took a fifth of the landmarking time here.
        """
        size = (self.trees + 1) * count * self.leaves.shape[1]
        if self.summands_memory.size < size:
            self.summands_memory = np.empty(size, np.float32)
        return self.summands_memory[:size].reshape(self.trees + 1, count, -1)

    def _similarity(self, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scale-and-rotation (cos, sin), as (faces, 1) float32 columns, that best maps
        the mean shape onto each of shape's (faces, parts, 2): dlib's
        find_similarity_transform in its 2-D closed form."""
        current = shape.astype(np.float64)
        centred = current - current.mean(axis=1, keepdims=True)
        covariance = np.einsum("fpi,pj->fij", centred, self.centred_initial) / shape.shape[1]
        cos = (covariance[:, 0, 0] + covariance[:, 1, 1]) / self.initial_spread
        sin = (covariance[:, 1, 0] - covariance[:, 0, 1]) / self.initial_spread
        return cos.astype(np.float32)[:, None], sin.astype(np.float32)[:, None]

    def __call__(self, gray: np.ndarray, box) -> np.ndarray:
        return self.predict_many([(gray, box)])[0]

    def predict_many(self, faces: list[tuple[np.ndarray, object]]) -> list[np.ndarray]:
        """The landmarks of several faces, (gray image, dlib box) each, found together.

        Every step works on all the faces at once: most of a single face's time goes into
        NumPy's per-call overhead, which a batch shares (1.3 ms a face in batches of 13,
        against 2.4 ms one by one). The results are the same as one face at a time.
        """
        if len(faces) > MAX_FACES_TOGETHER:
            return self.predict_many(faces[:MAX_FACES_TOGETHER]) + self.predict_many(
                faces[MAX_FACES_TOGETHER:]
            )
        count = len(faces)
        if count == 0:
            return []
        # One pixel array for all the images (each once: a photo may hold many faces), each
        # face's pixels found from its own image's start.
        first_face_of = {}
        for number, (gray, _) in enumerate(faces):
            first_face_of.setdefault(id(gray), number)
        images = [
            np.ascontiguousarray(faces[number][0]).reshape(-1) for number in first_face_of.values()
        ]
        pixels = np.concatenate(images) if len(images) > 1 else images[0]
        image_starts = dict(
            zip(first_face_of, np.cumsum([0] + [image.size for image in images[:-1]]), strict=True)
        )
        starts = np.array([image_starts[id(gray)] for gray, _ in faces], np.float64)[:, None]
        heights = np.array([gray.shape[0] for gray, _ in faces], np.float64)[:, None]
        widths = np.array([gray.shape[1] for gray, _ in faces], np.float64)[:, None]
        boxes = np.array(
            [(box.left(), box.top(), box.right(), box.bottom()) for _, box in faces], np.float64
        )
        # dlib maps the unit square onto the box by its corners: right - left wide.
        scale = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        origin = boxes[:, None, :2]
        shape = np.repeat(self.initial[None], count, axis=0)  # (faces, parts, 2) float32
        summands = self._summands(count)
        for level in range(self.levels):
            cos, sin = self._similarity(shape)
            deltas = self.deltas[level]
            # Two float32 products and a float32 sum per coordinate, as dlib computes them.
            placed = np.empty((count, *deltas.shape), np.float32)
            placed[:, :, 0] = cos * deltas[:, 0] + -sin * deltas[:, 1]
            placed[:, :, 1] = sin * deltas[:, 0] + cos * deltas[:, 1]
            placed += shape[:, self.anchors[level]]
            at = np.floor(placed * scale + origin + 0.5)
            x, y = at[:, :, 0], at[:, :, 1]
            inside = (x >= 0) & (x < widths) & (y >= 0) & (y < heights)
            index = np.where(inside, y * widths + x + starts, 0).astype(np.int64)
            features = np.where(inside, pixels[index], 0).astype(np.int16)
            left = np.take(features, self.split_left[level], axis=1)
            went_left = (
                left - np.take(features, self.split_right[level], axis=1)
                > self.whole_thresholds[level]
            )
            outcomes = (
                went_left.view(np.uint8).reshape(count, self.trees, self.splits) @ self.bit_values
            )
            # (trees, faces): the leaf each tree gives each face.
            leaves = (
                self.leaf_of_outcomes[outcomes.T]
                + self.first_leaf[:, None]
                + level * self.trees * self.leaf_count
            )
            summands[0] = shape.reshape(count, -1)
            # mode="clip" (the indices are in range): with the default, NumPy gathers into a
            # buffer and copies that into out, which doubled this step's time.
            np.take(self.leaves, leaves, axis=0, out=summands[1:], mode="clip")
            # Reducing over the first axis adds row after row: dlib's order of sums.
            shape = np.add.reduce(summands, axis=0).reshape(count, -1, 2)
        return list(np.floor(shape.astype(np.float64) * scale + origin + 0.5).astype(np.int64))


class DlibShapePredictor:
    """dlib's own predictor behind the same call: (gray, box) -> (parts, 2) int64 array."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def __call__(self, gray: np.ndarray, box) -> np.ndarray:
        shape = self.predictor(gray, box)
        return np.array([(point.x, point.y) for point in shape.parts()], np.int64)

    def predict_many(self, faces: list[tuple[np.ndarray, object]]) -> list[np.ndarray]:
        """The landmarks of several faces, (gray image, dlib box) each, one by one."""
        return [self(gray, box) for gray, box in faces]


def agrees_with(
    predictor: NumpyShapePredictor, reference: DlibShapePredictor, seed: int = 0
) -> bool:
    """Whether predictor gives dlib's landmarks, to the pixel, on noise images in boxes of
    several sizes, some running past the image's edges."""
    import dlib

    rng = np.random.default_rng(seed)
    for size, box in (
        (200, (20, 30, 180, 190)),
        (120, (-30, -10, 100, 140)),
        (64, (5, 0, 80, 70)),
        (300, (100, 90, 181, 171)),
    ):
        gray = np.ascontiguousarray(rng.integers(0, 256, (size, size + 7), dtype=np.uint8))
        rect = dlib.rectangle(*box)
        if not np.array_equal(predictor(gray, rect), reference(gray, rect)):
            return False
    return True


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
