"""Dataset folders met through links (class folders kept elsewhere, loops, a folder reached
twice) and a dataset's parent folder given in its place (FER2013's train/ and validation/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_image
from fercli.cli import app
from fercli.core.config import ScanConfig
from fercli.core.errors import LayoutError
from fercli.data.datasets import detect_layout, scan_dataset
from fercli.media.discover import discover, files_under

LOOP = "a link to a folder it is in (a loop): not followed"


def fer(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def labels(scan) -> dict[str, str]:
    """Each image's path below the dataset folder: its label."""
    return {str(record.path.relative_to(scan.root)): record.label for record in scan.records}


def reasons(scan) -> dict[str, str]:
    return {str(Path(item.path).relative_to(scan.root)): item.reason for item in scan.skipped}


@pytest.fixture
def linked_dataset(tmp_path, make_folders, faces) -> Path:
    """The tester's tree: real sad/ and surprised/, neutral -> a folder elsewhere, and the
    loops dot -> ., sad/selfloop -> ../sad and neutral/loop -> .. (the folder elsewhere's
    parent, which holds a stray image that belongs to no class)."""
    root = make_folders({"sad": ["s1.png", "s2.png"], "surprised": ["u1.png"]}, "mixsym")
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "neutral" / "n1.png", faces(5))
    write_image(elsewhere / "neutral" / "n2.png", faces(6))
    write_image(elsewhere / "stray.png", faces(7))
    (root / "neutral").symlink_to(elsewhere / "neutral", target_is_directory=True)
    (root / "dot").symlink_to(".", target_is_directory=True)
    (root / "sad" / "selfloop").symlink_to("../sad", target_is_directory=True)
    (elsewhere / "neutral" / "loop").symlink_to("..", target_is_directory=True)
    return root


def test_a_linked_class_folder_is_read_and_loops_are_said_not_followed(linked_dataset):
    scan = scan_dataset(linked_dataset)

    assert scan.layout == "folders"
    assert labels(scan) == {
        "neutral/n1.png": "neutral",
        "neutral/n2.png": "neutral",
        "sad/s1.png": "sadness",
        "sad/s2.png": "sadness",
        "surprised/u1.png": "surprise",
    }
    assert reasons(scan) == {"dot": LOOP, "sad/selfloop": LOOP, "neutral/loop": LOOP}


def test_predicts_search_finds_the_same_images_through_links(linked_dataset):
    found = discover([linked_dataset])

    assert [str(path.relative_to(linked_dataset)) for path in found.files] == [
        "neutral/n1.png",
        "neutral/n2.png",
        "sad/s1.png",
        "sad/s2.png",
        "surprised/u1.png",
    ]
    assert sorted(Path(item.path).name for item in found.problems) == ["dot", "loop", "selfloop"]
    assert all(item.reason == LOOP and item.listed for item in found.problems)


def test_a_dataset_of_linked_class_folders_only(tmp_path, make_folders):
    real = make_folders({"happy": ["h1.png"], "sad": ["s1.png", "s2.png"]}, "real")
    root = tmp_path / "symdirs"
    root.mkdir()
    for name in ("happy", "sad"):
        (root / name).symlink_to(real / name, target_is_directory=True)

    scan = scan_dataset(root)

    assert detect_layout(root) == "folders"
    assert labels(scan) == {
        "happy/h1.png": "happiness",
        "sad/s1.png": "sadness",
        "sad/s2.png": "sadness",
    }
    assert scan.skipped == []


def test_a_linked_folder_inside_a_class_folder_belongs_to_that_class(tmp_path, make_folders, faces):
    root = make_folders({"happy": ["h1.png"], "sad": ["s1.png"]})
    write_image(tmp_path / "more" / "session2" / "h2.png", faces(4))
    (root / "happy" / "more").symlink_to(tmp_path / "more", target_is_directory=True)

    scan = scan_dataset(root)

    assert labels(scan) == {
        "happy/h1.png": "happiness",
        "happy/more/session2/h2.png": "happiness",
        "sad/s1.png": "sadness",
    }


def test_a_folder_reached_twice_is_read_once_and_the_repeat_said(tmp_path, make_folders, faces):
    root = make_folders({"happy": ["h1.png"], "sad": ["s1.png"]})
    write_image(tmp_path / "calm" / "c1.png", faces(4))
    # A link to a class folder of the dataset itself, sorted before it: the real folder wins.
    (root / "anger").symlink_to(root / "happy", target_is_directory=True)
    # Two links to one folder elsewhere, and a link from it back into the dataset.
    (root / "neutral").symlink_to(tmp_path / "calm", target_is_directory=True)
    (root / "sad" / "calm").symlink_to(tmp_path / "calm", target_is_directory=True)
    (tmp_path / "calm" / "back").symlink_to(root / "sad", target_is_directory=True)

    scan = scan_dataset(root)

    assert labels(scan) == {
        "happy/h1.png": "happiness",
        "neutral/c1.png": "neutral",
        "sad/s1.png": "sadness",
    }
    assert reasons(scan) == {
        "anger": f"the same folder as {root / 'happy'}, already read: not read twice",
        "sad/calm": f"the same folder as {root / 'neutral'}, already read: not read twice",
        "neutral/back": f"the same folder as {root / 'sad'}, already read: not read twice",
    }


def test_a_link_to_a_folder_above_the_dataset_is_a_loop(tmp_path, make_folders):
    root = make_folders({"happy": ["h1.png"]})
    (root / "happy" / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "happy" / "slash").symlink_to("/", target_is_directory=True)

    skipped = []
    files = files_under(root, skipped)

    assert [str(path.relative_to(root)) for path in files] == ["happy/h1.png"]
    assert [(Path(item.path).name, item.reason) for item in skipped] == [
        ("slash", LOOP),
        ("up", LOOP),
    ]


def test_preprocess_reports_the_linked_class_and_the_loops(linked_dataset):
    result = fer("preprocess", linked_dataset, "--json", "--workers", "1")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == {"sadness": 2, "surprise": 1, "neutral": 2}
    assert sorted(Path(item["path"]).name for item in report["skipped"]) == [
        "dot",
        "loop",
        "selfloop",
    ]
    # The folders not read are named, not counted among the images found.
    assert report["found"] == 5
    text = fer("preprocess", linked_dataset, "--workers", "1").stdout
    assert "3 folders not read" in text.splitlines()
    assert " of 5 skipped" not in text and " of 8 skipped" not in text


# A dataset's parent folder -------------------------------------------------------------------


@pytest.fixture
def splits(make_folders) -> Path:
    """FER2013 as class folders, two splits: mini/train/{happy,sad}, mini/validation/..."""
    return make_folders(
        {
            "train/happy": ["h1.png", "h2.png"],
            "train/sad": ["s1.png", "s2.png"],
            "validation/happy": ["h3.png"],
            "validation/sad": ["s3.png"],
        },
        "mini",
    )


SPLITS_REFUSAL = (
    "{root}: its folders train, validation hold class folders (happiness, sadness); "
    "preprocess one of them: fer preprocess {root}/train"
)


def test_split_folders_holding_class_folders_are_refused(splits):
    message = SPLITS_REFUSAL.format(root=splits)
    for options in (ScanConfig(), ScanConfig(layout="folders")):
        with pytest.raises(LayoutError) as raised:
            scan_dataset(splits, options)
        assert str(raised.value) == message
    assert labels(scan_dataset(splits / "train")) == {
        "happy/h1.png": "happiness",
        "happy/h2.png": "happiness",
        "sad/s1.png": "sadness",
        "sad/s2.png": "sadness",
    }


def test_preprocess_of_a_datasets_parent_folder_fails_with_one_line(splits):
    result = fer("preprocess", splits)

    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {SPLITS_REFUSAL.format(root=splits)}"
    assert "Traceback" not in result.output


def test_the_refusal_names_the_largest_folder_and_shortens_a_long_list(make_folders):
    classes = {f"S{index:03d}/happy": [f"h{index}.png"] for index in range(1, 7)}
    classes["S004/surprised"] = ["u4.png"]
    root = make_folders(classes, "subjects")

    with pytest.raises(LayoutError) as raised:
        scan_dataset(root)

    assert str(raised.value) == (
        f"{root}: its folders S001, S002, S003, S004, S005 and 1 more hold class folders "
        f"(happiness, surprise); preprocess one of them: fer preprocess {root / 'S004'}"
    )


def test_class_folders_holding_folders_of_any_name_are_read_as_before(make_folders):
    # Class folders with sessions, and one holding a folder named like another class: the
    # images are of the top-level class, as documented.
    root = make_folders(
        {
            "happy/session1": ["h1.png"],
            "happy/sad": ["h2.png"],
            "sad/session1": ["s1.png"],
        }
    )
    assert labels(scan_dataset(root)) == {
        "happy/sad/h2.png": "happiness",
        "happy/session1/h1.png": "happiness",
        "sad/session1/s1.png": "sadness",
    }
    # Classes of the user's own naming, with sub-folders that name no class.
    own = make_folders({"posed/take1": ["p1.png"], "candid/take1": ["c1.png"]}, "own")
    assert labels(scan_dataset(own)) == {
        "candid/take1/c1.png": "candid",
        "posed/take1/p1.png": "posed",
    }


def test_a_linked_split_folder_is_refused_too(tmp_path, splits):
    root = tmp_path / "linked"
    root.mkdir()
    (root / "train").symlink_to(splits / "train", target_is_directory=True)

    with pytest.raises(LayoutError, match="its folder train holds class folders"):
        scan_dataset(root)
