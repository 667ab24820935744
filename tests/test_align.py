"""Alignment on the real test photo with real dlib: level eyes, a crop that holds the face."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from conftest import TIGHT_FACE_BOX, crop_box
from fercli.api import align_faces
from fercli.core.config import (
    ALIGN_VERSION,
    CROP_SIZE,
    WIDE_EYE_LINE,
    WIDE_SIDE,
    PreprocessConfig,
    fingerprint,
)
from fercli.core.errors import NoFaceError
from fercli.faces.align import (
    AlignedFace,
    align_detected,
    detect_faces,
    equalize,
    eye_centres,
    inside_photo,
    no_face_error,
)


def largest_face(gray: np.ndarray, config: PreprocessConfig) -> tuple[AlignedFace, int]:
    """An image's largest face, aligned, and how many faces dlib found: what preprocess keeps."""
    detections = detect_faces(gray, config)
    [[face]] = align_detected([(gray, detections)], config, largest_only=True)
    return face, len(detections)


def rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated about its centre (counter-clockwise for positive degrees), and the
    2x3 map from original to rotated pixel coordinates."""
    height, width = image.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    rotated = cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return rotated, matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def reference(astronaut_gray):
    """The unrotated photo's alignment and its eye centres (input-image pixels)."""
    face, _ = largest_face(astronaut_gray, PreprocessConfig())
    return face, np.array(eye_centres(face.landmarks))


def test_unrotated_photo_eyes_where_the_notice_says(reference):
    face, eyes = reference
    np.testing.assert_allclose(eyes, [[203, 101], [246, 104]], atol=3)
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE) and face.crop.dtype == np.uint8
    assert 1 < face.angle < 5  # the eyes are tilted about 3 degrees in the photo


@pytest.mark.parametrize("degrees", [-20, -10, 10, 20])
def test_rotated_photo_comes_out_with_level_eyes_and_the_face_in_the_crop(
    astronaut_gray, reference, degrees
):
    reference_face, reference_eyes = reference
    rotated, rotation = rotate(astronaut_gray, degrees)

    face, _ = largest_face(rotated, PreprocessConfig())

    # The true eye centres (from the unrotated photo, not from this detection) in crop pixels.
    left, right = apply(face.transform, apply(rotation, reference_eyes))
    tilt = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    assert abs(tilt) < 1.0, (
        f"eye line tilted {tilt:.2f} degrees after aligning a {degrees} degree rotation"
    )
    for x, y in (left, right):
        assert 0 <= x < CROP_SIZE and 0 <= y < CROP_SIZE / 2, (
            f"eye centre ({x:.1f}, {y:.1f}) not in the upper half"
        )
    assert left[0] < CROP_SIZE / 2 < right[0]
    # The detected tilt undoes the rotation (plus the photo's own ~3 degrees).
    assert face.angle == pytest.approx(reference_face.angle - degrees, abs=3)
    # Same face, same framing: measured correlations are 0.96-0.996 for these angles.
    correlation = np.corrcoef(
        face.crop.ravel().astype(float), reference_face.crop.ravel().astype(float)
    )[0, 1]
    assert correlation > 0.9


@pytest.mark.parametrize("degrees", [0, -15, 15])
def test_the_wide_framing_is_a_square_around_the_level_eyes(astronaut_gray, reference, degrees):
    _, reference_eyes = reference
    rotated, rotation = rotate(astronaut_gray, degrees)
    config = PreprocessConfig(framing="wide", crop_size=48)

    face, _ = largest_face(rotated, config)
    paper, _ = largest_face(rotated, PreprocessConfig(crop_size=48))

    left, right = apply(face.transform, np.array(eye_centres(face.landmarks)))
    side = config.crop_size
    # Level eyes, WIDE_SIDE eye distances a side, centred, the eye line at WIDE_EYE_LINE
    # (within the rounding of the box to whole photo pixels before it is resized).
    assert abs(left[1] - right[1]) < 0.01
    assert right[0] - left[0] == pytest.approx(side / WIDE_SIDE, rel=0.01)
    assert (left[0] + right[0]) / 2 == pytest.approx(side / 2, abs=0.25)
    assert left[1] == pytest.approx(WIDE_EYE_LINE * side, abs=0.25)
    # The true eyes (from the unrotated photo) land there too, within a pixel or two.
    true_left, true_right = apply(face.transform, apply(rotation, reference_eyes))
    np.testing.assert_allclose([true_left, true_right], [left, right], atol=2.5)
    # Wider than the paper's crop: the same eyes lie closer together in it.
    paper_left, paper_right = apply(paper.transform, np.array(eye_centres(paper.landmarks)))
    assert right[0] - left[0] < 0.9 * (paper_right[0] - paper_left[0])
    assert not np.array_equal(face.crop, paper.crop)


def test_the_paper_framing_keeps_the_fingerprint_it_had_before_framing_was_a_setting():
    """Crops cached and models trained before --framing existed stay valid: their settings
    had no framing, and the paper's framing is left out of the fingerprint."""
    for config in (PreprocessConfig(), PreprocessConfig(crop_size=48, equalization="clahe")):
        before = {key: value for key, value in config.to_dict().items() if key != "framing"}
        assert config.fingerprint() == fingerprint({"align_version": ALIGN_VERSION, **before})
        assert PreprocessConfig.from_dict(before) == config
        wide = PreprocessConfig(**{**before, "framing": "wide"})
        assert wide.fingerprint() != config.fingerprint()


def test_two_faces_side_by_side_are_both_found(astronaut_gray):
    pair = np.hstack([astronaut_gray, astronaut_gray])

    found = align_faces(pair, PreprocessConfig())

    assert len(found) == 2
    left_x = sorted(face.box[0] for face in found)
    assert left_x[0] < 512 <= left_x[1]
    face, count = largest_face(pair, PreprocessConfig())
    assert count == 2 and face.crop.shape == (CROP_SIZE, CROP_SIZE)


def test_blank_image_has_no_face():
    blank = np.full((256, 256), 128, np.uint8)
    config = PreprocessConfig()
    assert detect_faces(blank, config) == []
    assert align_detected([(blank, [])], config, largest_only=True) == [[]]
    assert align_faces(blank, config) == []
    # What preprocess records for such an image.
    with pytest.raises(NoFaceError, match="no face found"):
        raise no_face_error(config)


def test_small_precropped_face_is_found_only_with_upsampling(astronaut_gray):
    small = crop_box(astronaut_gray, TIGHT_FACE_BOX, 48)  # CK+48-sized

    without_upsampling = PreprocessConfig(upsample_tries=(0,))
    assert detect_faces(small, without_upsampling) == []
    with pytest.raises(NoFaceError, match="tried upsampling 0"):
        raise no_face_error(without_upsampling)
    face, count = largest_face(small, PreprocessConfig())

    assert count == 1
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE)
    left, right = apply(face.transform, np.array(eye_centres(face.landmarks)))
    assert abs(left[1] - right[1]) < 0.5 and left[0] < right[0]


def detections(detector, image: np.ndarray) -> list:
    boxes, scores, kinds = detector.run(image, 1, -0.5)
    return [
        ((box.left(), box.top(), box.right(), box.bottom()), score, kind)
        for box, score, kind in zip(boxes, scores, kinds, strict=True)
    ]


@pytest.fixture
def fresh_detector():
    """face_detector() as in a new process; cleared again afterwards."""
    from fercli.faces.align import face_detector

    face_detector.cache_clear()
    yield face_detector
    face_detector.cache_clear()


def test_detector_is_stored_once_and_the_stored_one_finds_the_same_faces(
    fresh_detector, fer_home, astronaut_gray
):
    import dlib

    built = fresh_detector()
    [stored] = (fer_home / "dlib").iterdir()
    written = stored.stat()
    fresh_detector.cache_clear()
    loaded = fresh_detector()

    assert loaded is not built
    assert list((fer_home / "dlib").iterdir()) == [stored]
    # Read, not written again (a rewrite would be a new file renamed into place).
    assert (stored.stat().st_ino, stored.stat().st_mtime_ns) == (
        written.st_ino,
        written.st_mtime_ns,
    )
    reference = dlib.get_frontal_face_detector()
    for degrees in (0, 15):
        image, _ = rotate(astronaut_gray, degrees)
        assert detections(loaded, image) == detections(reference, image) != []


def test_a_damaged_stored_detector_is_replaced(fresh_detector, fer_home, astronaut_gray):
    fresh_detector()
    [stored] = (fer_home / "dlib").iterdir()
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])
    fresh_detector.cache_clear()

    detector = fresh_detector()

    assert detections(detector, astronaut_gray) != []
    assert stored.read_bytes() == good


def test_detector_works_where_nothing_can_be_stored(
    fresh_detector, tmp_path, monkeypatch, astronaut_gray
):
    blocker = tmp_path / "a-file"
    blocker.write_text("FER_HOME cannot be made below a file")
    monkeypatch.setenv("FER_HOME", str(blocker / "home"))

    detector = fresh_detector()

    assert detections(detector, astronaut_gray) != []
    assert blocker.read_text() == "FER_HOME cannot be made below a file"


def test_images_aligned_together_come_out_as_they_do_one_at_a_time(astronaut_gray):
    import dlib

    config = PreprocessConfig()
    pair = np.hstack([astronaut_gray, astronaut_gray[:, ::-1]])
    small = crop_box(astronaut_gray, TIGHT_FACE_BOX, 48)
    blank = np.full((100, 120), 128, np.uint8)
    images = [(gray, detect_faces(gray, config)) for gray in (astronaut_gray, pair, small, blank)]
    # A largest box whose landmarks outline no face (2 pixels wide): the next box is used.
    tiny = dlib.rectangle(0, 0, 2, 2)
    images.append((astronaut_gray, [(tiny, 2.0), *images[0][1]]))

    largest = align_detected(images, config, largest_only=True)
    every = align_detected(images, config)

    assert largest[3] == [] and every[3] == []
    assert [len(faces) for faces in every] == [1, 2, 1, 0, 1]
    assert [len(faces) for faces in largest] == [1, 1, 1, 0, 1]
    assert len(images[4][1]) == 2  # the tiny box is among the detections
    for (gray, detections), together, all_together in zip(images, largest, every, strict=True):
        [largest_alone] = align_detected([(gray, detections)], config, largest_only=True)
        assert len(together) == len(largest_alone)
        for face, face_alone in zip(together, largest_alone, strict=True):
            np.testing.assert_array_equal(face.crop, face_alone.crop)
        # The largest face that aligns comes first among all the faces.
        for face, first in zip(together, all_together[: len(together)], strict=True):
            np.testing.assert_array_equal(face.crop, first.crop)
        [alone] = align_detected([(gray, detections)], config)
        assert len(all_together) == len(alone)
        for face, face_alone in zip(all_together, alone, strict=True):
            np.testing.assert_array_equal(face.crop, face_alone.crop)
            np.testing.assert_array_equal(face.landmarks, face_alone.landmarks)
    np.testing.assert_array_equal(largest[4][0].crop, largest[0][0].crop)


# --- crops that pass the photo's edge ------------------------------------------------------


def test_a_tightly_cropped_face_is_measured_as_padded_and_a_full_frame_one_is_not(
    astronaut_gray, reference
):
    full, _ = reference
    assert full.padding == 0.0
    # The chin sits at the bottom edge of a CK+48-style crop: part of the crop lies below it.
    tight = astronaut_gray[40:170, 160:290]
    face, _ = largest_face(tight, PreprocessConfig())
    assert 0.01 < face.padding < 0.5, face.padding


def test_the_filled_in_border_does_not_change_the_faces_grey_levels(astronaut_gray):
    """Padding the photo with a replicated border (as a crop past the edge is) changes
    nothing inside the face with "face" equalization; "whole" lets the border shift it."""
    face = astronaut_gray[80:200, 170:280].copy()
    width = face.shape[1]
    padded = cv2.copyMakeBorder(face, 0, 60, 0, 0, cv2.BORDER_REPLICATE)
    inside = np.zeros(padded.shape, bool)
    inside[: face.shape[0]] = True
    by_face = equalize(padded, inside, "face")[: face.shape[0]]
    alone = equalize(face, np.ones(face.shape, bool), "face")
    assert np.array_equal(by_face, alone)
    by_whole = equalize(padded, inside, "whole")[: face.shape[0], :width]
    assert not np.array_equal(by_whole, alone)


def test_face_equalization_is_opencvs_when_the_whole_crop_is_inside(astronaut_gray):
    face = astronaut_gray[80:200, 170:280]
    ours = equalize(face, np.ones(face.shape, bool), "face").astype(int)
    theirs = cv2.equalizeHist(face).astype(int)
    # The same mapping; at most one grey level apart where a float rounds the other way.
    assert np.abs(ours - theirs).max() <= 1 and np.mean(ours == theirs) > 0.99


def test_midpoint_equalization_does_not_push_a_clipped_patch_to_white(astronaut_gray):
    face = astronaut_gray[80:200, 170:280].copy()
    face[:40] = 255  # a third of the face clipped to white, as an overexposed camera does
    inside = np.ones(face.shape, bool)
    assert np.mean(equalize(face, inside, "face") >= 250) > 0.3
    midpoint = equalize(face, inside, "midpoint")
    assert np.mean(midpoint >= 250) < 0.01
    # Still an equalization: the levels spread over most of the range, order kept.
    assert midpoint.min() < 20 and midpoint.max() > 200
    order = np.argsort(face.ravel(), kind="stable")
    assert np.all(np.diff(midpoint.ravel()[order].astype(int)) >= 0)


def test_inside_photo_marks_what_the_crop_took_from_the_photo():
    shift = np.array(
        [[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]
    )  # the crop starts 5 pixels left of the photo
    inside = inside_photo(shift, (20, 10), (10, 30))
    assert inside.shape == (10, 20)
    assert not inside[:, :5].any() and inside[:, 5:].all()


def test_the_pipeline_says_what_became_of_each_image(astronaut_path, astronaut_gray):
    # fercli.faces.pipeline: the one way from an image (bytes, a path, an array) to its aligned
    # faces, for preprocess, predict and video frames alike.
    from fercli.core.errors import ImageError
    from fercli.faces.pipeline import (
        FACES,
        NO_FACE,
        UNREADABLE,
        align_frame_faces,
        align_images,
        frame_boxes,
    )
    from fercli.media.images import decode_gray

    config = PreprocessConfig()
    images = [
        ("bytes", astronaut_path.read_bytes()),
        ("path", astronaut_path),
        ("blank", np.full((120, 120), 128, np.uint8)),
        ("text", b"not an image"),
    ]
    outcomes = list(align_images(iter(images), config, largest_only=True))
    found = dict(outcomes)

    assert [tag for tag, _ in outcomes] == ["bytes", "path", "blank", "text"]
    assert [found[tag].status for tag in found] == [FACES, FACES, NO_FACE, UNREADABLE]
    assert [found[tag].read for tag in found] == [True, True, True, False]
    assert found["blank"].faces == []
    assert found["blank"].reason == (
        "no face found (tried upsampling 0, 1 and 2, and the image itself as a face crop)"
    )
    with pytest.raises(ImageError) as unreadable:
        decode_gray(b"not an image")
    assert found["text"].reason == str(unreadable.value)
    photo = found["path"].faces[0]
    assert found["path"].detected == 1 and found["path"].reason is None
    assert np.array_equal(found["bytes"].faces[0].crop, photo.crop)
    # Every face (predict): YuNet's proposal confirmed by dlib, the same face aligned alike.
    [every] = align_faces(astronaut_path, config)
    assert (
        np.corrcoef(every.crop.ravel().astype(float), photo.crop.ravel().astype(float))[0, 1] > 0.93
    )
    # A video frame's face goes through the same step from box to crop as the photo's.
    [box] = frame_boxes(astronaut_gray, config)
    [frame_face] = align_frame_faces(astronaut_gray, [box], config)
    assert np.array_equal(frame_face.crop, photo.crop)
    assert np.array_equal(frame_face.landmarks, photo.landmarks)
