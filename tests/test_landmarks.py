"""dlib's 68-point model converted to NumPy arrays: the same landmarks as dlib, to the pixel."""

from __future__ import annotations

import dataclasses
import functools

import cv2
import dlib
import numpy as np
import pytest

from conftest import TIGHT_FACE_BOX, crop_box
from fercli.core.config import PreprocessConfig
from fercli.faces.align import detect_faces, load_landmark_predictor, predictor_path
from fercli.faces.landmarks import DlibShapePredictor, NumpyShapePredictor, agrees_with
from fercli.faces.predictor_file import (
    ModelFormatError,
    load_stored,
    parse_shape_predictor,
    save_converted,
    stored_paths,
)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return predictor_path().read_bytes()


@pytest.fixture(scope="module")
def model(model_bytes):
    return parse_shape_predictor(model_bytes)


@pytest.fixture(scope="module")
def dlib_predictor() -> DlibShapePredictor:
    return DlibShapePredictor(dlib.shape_predictor(str(predictor_path())))


def test_the_arrays_have_the_shape_of_dlibs_68_point_model(model):
    assert model.initial.shape == (68, 2)
    levels, trees, splits = model.split_left.shape
    assert (levels, trees, splits) == (15, 500, 15)
    assert model.leaves.shape == (15, 500, 16, 136)
    assert model.anchors.shape == (15, 500) and model.deltas.shape == (15, 500, 2)
    # The mean shape, in units of the face box, is a face: jaw from left to right, chin
    # (point 8) below the eyes (36-47).
    assert 0 <= model.initial[:, 0].min() and model.initial[:, 0].max() <= 1
    assert model.initial[0, 0] < 0.1 and model.initial[16, 0] > 0.9
    assert model.initial[8, 1] > model.initial[36:48, 1].max() + 0.4


@pytest.mark.parametrize(
    "size, degrees", [(48, 0), (256, -20), (256, 0), (256, 20), (512, -10), (512, 10)]
)
def test_numpy_landmarks_are_dlibs_on_real_faces(
    model, dlib_predictor, astronaut_gray, degrees, size
):
    height, width = astronaut_gray.shape
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    photo = cv2.warpAffine(
        astronaut_gray, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE
    )
    if size == 48:  # a CK+48-like crop, where dlib finds the face after upsampling
        photo = crop_box(photo, TIGHT_FACE_BOX, size)
    else:
        scale = size / max(height, width)
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    faces = detect_faces(photo, PreprocessConfig())
    assert faces
    predictor = NumpyShapePredictor(model)
    for box, _ in faces:
        np.testing.assert_array_equal(predictor(photo, box), dlib_predictor(photo, box))
    # A box running past the image: feature pixels outside it read as 0, as in dlib.
    box = faces[0][0]
    moved = dlib.rectangle(
        box.left() - box.width() // 2, box.top() - box.height() // 3, box.right(), box.bottom()
    )
    np.testing.assert_array_equal(predictor(photo, moved), dlib_predictor(photo, moved))


def test_faces_landmarked_together_get_the_landmarks_each_gets_alone(
    model, dlib_predictor, astronaut_gray
):
    # Images of different sizes in one batch, boxes inside and past the edges, the same
    # image twice: each face's pixels are read from its own image.
    rng = np.random.default_rng(1)
    small = cv2.resize(astronaut_gray, (200, 180), interpolation=cv2.INTER_AREA)
    noise = rng.integers(0, 256, (150, 230), dtype=np.uint8)
    faces = [(astronaut_gray, box) for box, _ in detect_faces(astronaut_gray, PreprocessConfig())]
    faces += [(small, box) for box, _ in detect_faces(small, PreprocessConfig())]
    faces += [
        (noise, dlib.rectangle(-20, 10, 120, 170)),
        (astronaut_gray, dlib.rectangle(300, 300, 560, 560)),
    ]
    assert len(faces) == 4
    predictor = NumpyShapePredictor(model)

    together = predictor.predict_many(faces)

    assert len(together) == len(faces)
    for (gray, box), landmarks in zip(faces, together, strict=True):
        np.testing.assert_array_equal(landmarks, dlib_predictor(gray, box))
        np.testing.assert_array_equal(landmarks, predictor(gray, box))
    assert predictor.predict_many([]) == []
    # More faces than are landmarked in one go: done in parts, with the same results.
    many = predictor.predict_many(faces * 9)
    assert len(many) == 36
    for landmarks, expected in zip(many, together * 9, strict=True):
        np.testing.assert_array_equal(landmarks, expected)


def test_many_faces_of_one_large_photo_do_not_copy_it_once_a_face(model):
    import tracemalloc

    photo = np.random.default_rng(2).integers(0, 256, (3000, 3000), dtype=np.uint8)  # 9 MB
    boxes = [dlib.rectangle(100 * k, 100 * k, 100 * k + 150, 100 * k + 150) for k in range(25)]
    predictor = NumpyShapePredictor(model)
    predictor.predict_many([(photo, boxes[0])])  # its working memory, kept between calls

    tracemalloc.start()
    try:
        landmarks = predictor.predict_many([(photo, box) for box in boxes])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert len(landmarks) == 25
    assert peak < 30_000_000  # 25 copies of the photo would be 225 MB


def test_a_changed_model_is_caught_by_the_check_against_dlib(model, dlib_predictor):
    assert agrees_with(NumpyShapePredictor(model), dlib_predictor)
    changed = dataclasses.replace(model, thresholds=-model.thresholds)
    assert not agrees_with(NumpyShapePredictor(changed), dlib_predictor)


def _break_a_leaf(data: bytes) -> bytes:
    """A leaf's first number given a header byte that is no header (length 15)."""
    column_header = data[2:6]  # the mean shape's (-136, -1); every leaf starts with it too
    leaf = data.find(column_header, len(data) // 2)
    number = leaf + len(column_header)
    return data[:number] + bytes([0x0F]) + data[number + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short
        lambda data: data[:-7],
        lambda data: data + b"\x01\x00",  # something after the end
        lambda data: b"\x01\x02" + data[2:],  # another version
        lambda data: _break_a_leaf(data),
        lambda data: bytes(1000),
        lambda data: b"",
    ],
)
def test_a_file_that_is_not_the_model_is_refused(model_bytes, damage):
    with pytest.raises(ModelFormatError):
        parse_shape_predictor(damage(model_bytes))


def test_the_converted_model_is_stored_once_and_mapped_from_disk(
    tmp_path, astronaut_gray, dlib_predictor
):
    source = predictor_path()
    folder = tmp_path / "dlib"
    first = load_landmark_predictor(source, folder)
    assert isinstance(first, NumpyShapePredictor)
    arrays_path, leaves_path = stored_paths(source, folder)
    assert arrays_path.is_file() and leaves_path.is_file()

    stored = load_stored(source, folder)
    assert isinstance(stored.leaves, np.memmap)
    second = load_landmark_predictor(source, folder)
    box = detect_faces(astronaut_gray, PreprocessConfig())[0][0]
    np.testing.assert_array_equal(second(astronaut_gray, box), dlib_predictor(astronaut_gray, box))


@pytest.mark.parametrize("damaged", ["leaves", "arrays"])
def test_a_damaged_stored_model_is_converted_again(
    tmp_path, astronaut_gray, dlib_predictor, damaged
):
    source = predictor_path()
    folder = tmp_path / "dlib"
    load_landmark_predictor(source, folder)
    arrays_path, leaves_path = stored_paths(source, folder)
    path = leaves_path if damaged == "leaves" else arrays_path
    path.write_bytes(path.read_bytes()[:1000])
    assert load_stored(source, folder) is None

    predictor = load_landmark_predictor(source, folder)
    assert isinstance(predictor, NumpyShapePredictor)
    assert load_stored(source, folder) is not None
    box = detect_faces(astronaut_gray, PreprocessConfig())[0][0]
    np.testing.assert_array_equal(
        predictor(astronaut_gray, box), dlib_predictor(astronaut_gray, box)
    )


def test_where_nothing_can_be_stored_dlib_predicts_alone(tmp_path, astronaut_gray, dlib_predictor):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    predictor = load_landmark_predictor(predictor_path(), blocker / "dlib")
    assert isinstance(predictor, DlibShapePredictor)
    box = detect_faces(astronaut_gray, PreprocessConfig())[0][0]
    np.testing.assert_array_equal(
        predictor(astronaut_gray, box), dlib_predictor(astronaut_gray, box)
    )


def test_landmarks_load_quickly_once_the_converted_model_is_stored(model, monkeypatch):
    # preprocess and predict skip their first stage (finding faces while the model loads)
    # when this says the model maps from disk.
    from fercli.core.store import dlib_dir
    from fercli.faces import align

    not_loaded = functools.lru_cache(maxsize=1)(align.landmark_predictor.__wrapped__)
    monkeypatch.setattr(align, "landmark_predictor", not_loaded)
    assert not align.landmarks_load_quickly()  # this test's FER_HOME holds nothing yet

    save_converted(model, predictor_path(), dlib_dir())

    assert align.landmarks_load_quickly()
    assert isinstance(not_loaded(), NumpyShapePredictor)
    assert isinstance(load_stored(predictor_path(), dlib_dir()).leaves, np.memmap)
