"""Images that are themselves a face: the tight 48x48 crops of FER2013 and CK+48, where dlib's
detector, whose smallest window is 80x80, finds only half the faces even one upsampling up.

When the detector finds nothing in an image that looks like a face crop (small and about
square: is_face_crop), even one upsampling level further up, the face's landmarks are found
from the image itself: from a box of 90% of the image (then 75%, then all of it), then
twice from the box that those landmarks imply (the box that dlib's landmark model would
have been given for them: its mean shape fitted to them).
A face check then decides whether it is a face at all, since dlib's landmark model outlines
a face on anything: the image is redrawn with that box as a 100x100 face, eyes level, on a
180x180 canvas, where the detector does see faces of that size; the result is a face when
the detector's score there passes a low threshold.

Measured on FER2013's validation split (bench/face_crops.py), on the images where the
detector works too: the landmarks found this way differ from those found from the detector's
box by 2.7% of the eye distance in the median, as two of dlib's own boxes of the same face
do; 7% of the faces differ by more than 10%.
"""

from __future__ import annotations

import cv2
import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.faces.align import Detection, face_detector, landmark_predictor

# An image the fallback may take for a face crop: at most this many pixels on its longer
# side (a photo with a face in it is larger), its sides in at most this ratio.
FACE_CROP_MAX_SIDE = 256
FACE_CROP_MAX_RATIO = 1.25
# The boxes the first landmarks are found from, as shares of the image about its centre, in
# turn until the face check passes: each start finds faces the others do not (a smaller or
# larger face in the crop), at little cost in faces made up (see CANVAS_MIN_SCORE).
START_SHARES = (0.9, 0.75, 1.0)
# The detector's highest upsampling level (PreprocessConfig's own limit).
MAX_UPSAMPLE = 3
# Landmarks found again from the box they imply, this many times (measured: a third pass
# changes the median by nothing).
REFINEMENTS = 2
# The face check: the image redrawn so that the implied box is FACE_SIDE pixels wide, eyes
# level, in a CANVAS_SIDE square (border replicated), searched without upsampling; its best
# score over boxes that share more than half of the face's box must reach CANVAS_MIN_SCORE
# (a dlib detection score; detections count from 0.3). Measured (bench/face_crops.py) on the
# FER2013 validation faces the detector misses and on 48x48 patches without a face (of the
# test photo and scikit-learn's sample pictures): from the first start alone, at -1.0 90% of
# the faces pass and 3.0% of the patches, at -0.8 88% and 1.0%, at -0.5 81% and 0.5%; from
# the first two, at -1.0 93% and 5.8%, at -0.9 92% and 3.3%; from all three at -0.9, 3.8% of
# the patches. The image's own score one or two upsamplings up added little to these.
FACE_SIDE = 100
CANVAS_SIDE = 180
CANVAS_MIN_SCORE = -0.9
NO_SCORE = -10.0


def is_face_crop(gray: np.ndarray) -> bool:
    """Whether an image may be a face crop itself: small and about square."""
    height, width = gray.shape[:2]
    return (
        max(height, width) <= FACE_CROP_MAX_SIDE
        and min(height, width) > 0
        and max(height, width) / min(height, width) <= FACE_CROP_MAX_RATIO
    )


def implied_box(landmarks: np.ndarray):
    """The square dlib box whose landmark model's mean shape, placed in it, best fits these
    landmarks (least squares): the box the detector would have given for this face."""
    import dlib

    mean_shape = landmark_predictor().initial.astype(np.float64)
    count = len(mean_shape)
    # landmarks = side * mean_shape + (left, top), x and y stacked.
    design = np.zeros((2 * count, 3))
    design[:count, 0], design[count:, 0] = mean_shape[:, 0], mean_shape[:, 1]
    design[:count, 1] = 1.0
    design[count:, 2] = 1.0
    target = np.concatenate([landmarks[:, 0], landmarks[:, 1]]).astype(np.float64)
    side, left, top = np.linalg.lstsq(design, target, rcond=None)[0]
    side = max(side, 4.0)
    return dlib.rectangle(round(left), round(top), round(left + side), round(top + side))


def closer_detections(gray: np.ndarray, config: PreprocessConfig) -> list[Detection]:
    """The detector's faces one upsampling level above config's last (a face crop is small:
    one more level costs milliseconds), largest first, with config's score threshold."""
    level = closer_level(config)
    if level in config.upsample_tries:
        return []
    boxes, scores, _ = face_detector().run(gray, level, config.min_face_score)
    found = [(box, float(score)) for box, score in zip(boxes, scores, strict=True)]
    return sorted(found, key=lambda item: -item[0].area())


def closer_level(config: PreprocessConfig) -> int:
    """The upsampling level a face crop is searched at besides config's own."""
    return min(max(config.upsample_tries) + 1, MAX_UPSAMPLE)


def face_crop_detection(gray: np.ndarray, unchecked: bool = False) -> tuple[Detection, bool] | None:
    """The face of an image that is itself a face crop, as a detection (the box its own
    landmarks imply, the face check's score: below the detector's usual threshold) and whether
    it passed the face check. None when the face check finds no face from any start
    (START_SHARES), unless unchecked: then the face the first start's landmarks outline,
    taken on the caller's word that the image is a face (--face-crops)."""
    first = None
    for share in START_SHARES:
        landmarks = refined_landmarks(gray, share)
        score = face_check_score(gray, landmarks)
        if score >= CANVAS_MIN_SCORE:
            return (implied_box(landmarks), score), True
        first = first or (implied_box(landmarks), score)
    return (first, False) if unchecked else None


def refined_landmarks(gray: np.ndarray, share: float) -> np.ndarray:
    """The landmarks found from a box of this share of the image about its centre, then
    REFINEMENTS times from the box the last ones imply."""
    import dlib

    height, width = gray.shape
    margin_x, margin_y = width * (1 - share) / 2, height * (1 - share) / 2
    box = dlib.rectangle(
        round(margin_x), round(margin_y), round(width - 1 - margin_x), round(height - 1 - margin_y)
    )
    predictor = landmark_predictor()
    landmarks = predictor(gray, box)
    for _ in range(REFINEMENTS):
        landmarks = predictor(gray, implied_box(landmarks.astype(np.float64)))
    return landmarks.astype(np.float64)


def face_check_score(gray: np.ndarray, landmarks: np.ndarray) -> float:
    """The detector's best score for the face these landmarks outline, the image redrawn so
    that the face is FACE_SIDE pixels wide with its eyes level (NO_SCORE: none there)."""
    box = implied_box(landmarks)
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    angle = float(np.degrees(np.arctan2(*(right_eye - left_eye)[::-1])))
    centre_x, centre_y = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2
    transform = cv2.getRotationMatrix2D(
        (centre_x, centre_y), angle, FACE_SIDE / max(box.width() - 1, 1)
    )
    transform[:, 2] += (CANVAS_SIDE / 2 - centre_x, CANVAS_SIDE / 2 - centre_y)
    canvas = cv2.warpAffine(
        gray,
        transform,
        (CANVAS_SIDE, CANVAS_SIDE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    boxes, scores, _ = face_detector().run(canvas, 0, -1.0)
    low, high = (CANVAS_SIDE - FACE_SIDE) / 2, (CANVAS_SIDE + FACE_SIDE) / 2
    best = NO_SCORE
    for found, score in zip(boxes, scores, strict=True):
        overlap_x = min(found.right(), high) - max(found.left(), low)
        overlap_y = min(found.bottom(), high) - max(found.top(), low)
        if overlap_x > 0 and overlap_y > 0 and overlap_x * overlap_y > FACE_SIDE**2 / 2:
            best = max(best, float(score))
    return best
