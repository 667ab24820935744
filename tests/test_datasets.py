"""Dataset layouts read from small generated trees: labels, subjects, and what is left out."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import run_unprivileged
from fercli.core.config import ScanConfig
from fercli.core.errors import LayoutError, SettingError
from fercli.data.datasets import detect_layout, scan_dataset, subject_of
from fercli.media.discover import OUTPUT_MARKER, discover, mark_output_folder


def by_name(scan) -> dict[str, tuple[str, str | None]]:
    return {record.path.name: (record.label, record.subject) for record in scan.records}


def reasons(scan) -> dict[str, str]:
    return {Path(item.path).name: item.reason for item in scan.skipped}


# JAFFE ---------------------------------------------------------------------------------------


def test_jaffe_names_give_labels_and_subjects(make_jaffe):
    root = make_jaffe(
        ["KA.AN1.39.tiff", "KL.HA2.45.tiff", "NA.NE1.202.tiff", "YM.SU3.60.tif", "tm.sa1.190.TIFF"]
    )

    scan = scan_dataset(root)

    assert scan.layout == "jaffe"
    assert by_name(scan) == {
        "KA.AN1.39.tiff": ("anger", "KA"),
        "KL.HA2.45.tiff": ("happiness", "KL"),
        "NA.NE1.202.tiff": ("neutral", "NA"),
        "YM.SU3.60.tif": ("surprise", "YM"),
        "tm.sa1.190.TIFF": ("sadness", "TM"),
    }
    assert scan.skipped == [] and scan.has_subjects


def test_jaffe_unknown_code_and_foreign_names_are_reported(make_jaffe):
    root = make_jaffe(["KA.AN1.39.tiff", "KA.DI1.42.tiff", "KA.XX1.40.tiff", "portrait.tiff"])
    (root / "README").write_text("The Japanese Female Facial Expression database\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")

    scan = scan_dataset(root)

    assert scan.layout == "jaffe"
    assert set(by_name(scan)) == {"KA.AN1.39.tiff", "KA.DI1.42.tiff"}
    why = reasons(scan)
    assert set(why) == {"KA.XX1.40.tiff", "portrait.tiff", "README"}  # hidden files are not data
    assert "unknown JAFFE expression code 'XX'" in why["KA.XX1.40.tiff"]
    assert "JAFFE form" in why["portrait.tiff"]


# CK+ -----------------------------------------------------------------------------------------


@pytest.fixture
def ck_tree(make_ck) -> Path:
    return make_ck(
        {
            ("S005", "001"): (6, "   3.0000000e+00\n"),  # disgust
            ("S010", "002"): (4, "   5.0000000e+00\n"),  # happy
            ("S010", "003"): (5, None),  # unlabelled: ignored
            ("S011", "001"): (3, "not a number\n"),
            ("S011", "002"): (3, "   9.0000000e+00\n"),
        }
    )


def test_ck_takes_the_last_three_frames_of_labelled_sequences(ck_tree):
    scan = scan_dataset(ck_tree)

    assert scan.layout == "ck+"
    assert by_name(scan) == {
        "S005_001_00000004.png": ("disgust", "S005"),
        "S005_001_00000005.png": ("disgust", "S005"),
        "S005_001_00000006.png": ("disgust", "S005"),
        "S010_002_00000002.png": ("happiness", "S010"),
        "S010_002_00000003.png": ("happiness", "S010"),
        "S010_002_00000004.png": ("happiness", "S010"),
    }
    why = reasons(scan)
    assert set(why) == {"S011_001_00000003_emotion.txt", "S011_002_00000003_emotion.txt"}
    assert "does not hold a number" in why["S011_001_00000003_emotion.txt"]
    assert "not one of 0-7" in why["S011_002_00000003_emotion.txt"]
    assert any("2 labelled sequences" in note for note in scan.notes)


def test_ck_frame_count_and_neutral_first_frame(ck_tree):
    scan = scan_dataset(ck_tree, ScanConfig(ck_frames=2, ck_neutral_first=True))

    assert by_name(scan) == {
        "S005_001_00000005.png": ("disgust", "S005"),
        "S005_001_00000006.png": ("disgust", "S005"),
        "S005_001_00000001.png": ("neutral", "S005"),
        "S010_002_00000003.png": ("happiness", "S010"),
        "S010_002_00000004.png": ("happiness", "S010"),
        "S010_002_00000001.png": ("neutral", "S010"),
    }


def test_ck_tree_one_level_down_and_forced_layout(make_ck, tmp_path):
    make_ck({("S005", "001"): (3, "1.0000000e+00")}, folder="download/CK+")

    assert detect_layout(tmp_path / "download") == "ck+"
    scan = scan_dataset(tmp_path / "download", ScanConfig(layout="CK"))
    assert {label for label, _ in by_name(scan).values()} == {"anger"}
    with pytest.raises(SettingError, match=r"ck_frames \(--ck-frames\) 0 must be at least 1"):
        ScanConfig(ck_frames=0)


# Class folders -------------------------------------------------------------------------------


def test_class_folders_map_common_names_and_keep_unknown_ones(make_folders):
    root = make_folders(
        {
            "happy": ["S010_004_00000017.png"],
            "sad": ["KA.SA1.33.tiff"],
            "angry": ["img1.png"],
            "Surprise": ["S011_001_00000009.png"],
            "thinking": ["x.png"],
        }
    )
    (root / "stray.png").write_bytes((root / "happy" / "S010_004_00000017.png").read_bytes())

    scan = scan_dataset(root)

    assert scan.layout == "folders"
    assert by_name(scan) == {
        "S010_004_00000017.png": ("happiness", "S010"),
        "KA.SA1.33.tiff": ("sadness", "KA"),
        "img1.png": ("anger", None),
        "S011_001_00000009.png": ("surprise", "S011"),
        "x.png": ("thinking", None),
    }
    assert reasons(scan) == {"stray.png": "not in a class folder"}
    assert not scan.has_subjects


def test_odd_file_names_are_listed(make_folders, tmp_path):
    names = [
        "my face 1.png",
        "visage-é.png",
        "顔.png",
        "no-extension",
        "-leading-dash.png",
        "semi;colon$.png",
    ]
    root = make_folders({"happy": names})
    undecodable = os.fsencode(root / "happy") + b"/caf\xe9.png"  # not valid UTF-8
    with open(undecodable, "wb") as stream:
        stream.write(b"not an image")

    scan = scan_dataset(root)

    assert sorted(by_name(scan)) == sorted(names + [os.fsdecode(b"caf\xe9.png")])
    assert all(record.path.exists() for record in scan.records)


def test_subject_of_reads_ck_and_jaffe_names():
    assert subject_of("S010_004_00000017.png") == "S010"
    assert subject_of("S005_001_00000011_emotion.txt") == "S005"
    assert subject_of("KA.AN1.39.tiff") == "KA"
    assert subject_of("ym.su3.60.tif") == "YM"
    assert subject_of("portrait.png") is None
    assert subject_of("S10_004.png") is None


# Folders that are not datasets ---------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(LayoutError, match="no such folder"):
        scan_dataset(tmp_path / "nowhere")


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "KA.AN1.39.tiff"
    path.write_bytes(b"II*\x00")
    with pytest.raises(LayoutError, match="a file, not a dataset"):
        scan_dataset(path)


def test_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(LayoutError, match="empty"):
        scan_dataset(root)
    with pytest.raises(LayoutError, match="empty"):
        scan_dataset(root, ScanConfig(layout="folders"))


def test_unrecognised_layout_names_the_layouts_tried(tmp_path):
    root = tmp_path / "holiday"
    root.mkdir()
    for name in ("beach.jpg", "notes.txt"):
        (root / name).write_bytes(b"x")
    (root / "empty-subfolder").mkdir()

    with pytest.raises(LayoutError) as raised:
        scan_dataset(root)

    message = str(raised.value)
    assert "not recognised" in message and "\n" not in message
    for layout in ("jaffe", "ck+", "folders"):
        assert layout in message


def test_unknown_forced_layout(make_jaffe):
    root = make_jaffe(["KA.AN1.39.tiff"])
    with pytest.raises(
        LayoutError, match="unknown layout 'fer2013'; choose from jaffe, ck\\+, folders"
    ):
        scan_dataset(root, ScanConfig(layout="fer2013"))


def test_forced_layout_that_finds_nothing_says_so(make_folders):
    root = make_folders({"happy": ["a.png"]})
    with pytest.raises(LayoutError, match="no labelled images found in the jaffe layout"):
        scan_dataset(root, ScanConfig(layout="jaffe"))


def test_discover_takes_files_and_folders(make_folders, tmp_path):
    root = make_folders({"happy": ["a.png", "b.png"], "sad": ["c.png"]})

    found = discover([root / "sad" / "c.png", root / "happy", tmp_path / "gone.png"])
    files, problems = found.files, found.problems

    assert [path.name for path in files] == ["c.png", "a.png", "b.png"]
    assert [(Path(item.path).name, item.reason) for item in problems] == [
        ("gone.png", "no such file or folder")
    ]


def test_discover_passes_over_what_is_no_image_in_a_folder_but_not_a_named_file(
    make_folders, tmp_path
):
    root = make_folders({"happy": ["a.png"]})
    (root / "happy" / "README.md").write_text("notes")
    (root / "happy" / "empty.png").touch()  # for the reader to report: empty file

    found = discover([root, root / "happy" / "README.md"])
    files, problems = found.files, found.problems

    assert [path.name for path in files] == ["a.png", "empty.png", "README.md"]
    assert [(Path(item.path).name, item.listed) for item in problems] == [("README.md", False)]


def test_folders_fercli_wrote_its_pictures_to_are_left_out_and_said(make_folders):
    root = make_folders({"happy": ["a.png"], "sad": ["b.png"]})
    pictures = root / "happy" / "why"
    mark_output_folder(pictures, "fer predict --explain")
    shutil.copy(root / "happy" / "a.png", pictures / "a.face1.png")
    note = (
        f"1 folder of fercli's own pictures left out: {pictures} (delete {OUTPUT_MARKER} in a "
        "folder to have it read)"
    )

    found = discover([root])
    scan = scan_dataset(root)

    assert [path.name for path in found.files] == ["a.png", "b.png"]
    assert found.left_out == [pictures] and found.notes() == [note]
    assert sorted(by_name(scan)) == ["a.png", "b.png"] and note in scan.notes
    # Named itself, the folder is read: the user asked for it.
    assert [path.name for path in discover([pictures]).files] == ["a.face1.png"]
    # Unmarked, it is an ordinary folder again.
    (pictures / OUTPUT_MARKER).unlink()
    assert [path.name for path in discover([root]).files] == ["a.png", "a.face1.png", "b.png"]


def test_unreadable_sub_folder_is_reported_and_the_rest_read(make_folders):
    root = make_folders({"happy": ["a.png"], "sad": ["b.png"]})

    def check() -> None:
        scan = scan_dataset(root)
        assert by_name(scan) == {"a.png": ("happiness", None)}
        assert reasons(scan) == {"sad": "cannot read the folder: Permission denied"}

    (root / "sad").chmod(0)
    try:
        run_unprivileged(check)
    finally:
        (root / "sad").chmod(0o755)
