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

import numpy as np

from fercli.faces.predictor_file import ShapeModel

# Faces landmarked in one go at most (each needs 272 KB of working memory).
MAX_FACES_TOGETHER = 32


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
