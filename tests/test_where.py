"""where.png of crossval and evaluate (fercli.learn.where): per class, where the network looked
on its test faces, each face explained by a network that never trained on it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np

from fercli.core.config import TrainConfig
from fercli.infer.model import ExportedNetwork, load_model
from fercli.learn.crossval import cross_validate
from fercli.learn.crossval_files import save_crossval, save_crossval_model
from fercli.learn.evaluate import score_model
from fercli.learn.folds import FoldExport, FoldOutcome
from fercli.learn.where import WHERE_FACES, crossval_where
from synthetic import REGION, make_region_dataset

LABELS = ["anger", "happiness"]


def spot_network(rows: slice, columns: slice) -> ExportedNetwork:
    """A network (flatten, dense softmax) whose "happiness" rises with the brightness of one
    spot of the crop and that ignores every other pixel."""
    kernel = np.zeros((32, 32, 2))
    kernel[rows, columns, 1] = 4.0 / ((rows.stop - rows.start) * (columns.stop - columns.start))
    specs = [
        {"type": "flatten", "weights": []},
        {"type": "dense", "activation": "softmax", "weights": ["kernel", "bias"]},
    ]
    weights = {"kernel": kernel.reshape(1024, 2), "bias": np.zeros(2)}
    return ExportedNetwork(specs, weights, np.array(128.0), np.array(64.0))


def outcome(fold: int, test: np.ndarray, network: ExportedNetwork | None) -> FoldOutcome:
    """A fold's outcome that takes every test face for happiness, with network as its own."""
    probabilities = np.tile([0.1, 0.9], (len(test), 1))
    export = None if network is None else FoldExport(network, np.zeros((1, 2)), 0.0)
    return FoldOutcome(
        key=fold,
        fold=fold,
        test_index=test,
        probabilities=probabilities,
        accuracy=0.5,
        diverged=None,
        epochs=1,
        seconds=0.0,
        export=export,
    )


def _peak(heat: np.ndarray) -> tuple[int, int]:
    return tuple(int(value) for value in np.unravel_index(np.argmax(heat), heat.shape))


def test_each_test_face_is_explained_by_the_network_of_its_own_fold():
    """Fold 1 tests the anger faces with a network that looks at the top left, fold 2 the
    happiness faces with one that looks at the bottom right: each class's map must be where
    its own fold's network looked (a map from the other fold's network lies elsewhere)."""
    top_left, bottom_right = (slice(2, 8), slice(2, 8)), (slice(24, 30), slice(24, 30))
    crops = np.full((12, 32, 32), 200, np.uint8)
    selection = SimpleNamespace(
        crops=crops, targets=np.array([0] * 6 + [1] * 6), labels=LABELS, paths=None
    )
    # Both networks take every bright face for happiness: the anger faces are wrong.
    outcomes = {
        0: outcome(0, np.arange(6), spot_network(*top_left)),
        1: outcome(1, np.arange(6, 12), spot_network(*bottom_right)),
    }
    where = crossval_where(selection, outcomes, flip=False)
    anger, happiness = where.rows["all"]["anger"], where.rows["all"]["happiness"]
    assert anger["of"] == 6 and anger["faces"] == 6 and happiness["faces"] == 6
    assert _peak(anger["map"])[0] < 10 and _peak(anger["map"])[1] < 10
    assert _peak(happiness["map"])[0] > 21 and _peak(happiness["map"])[1] > 21
    assert where.rows["wrong"]["anger"]["taken_for"] == {"happiness": 6}
    assert "happiness" not in where.rows["wrong"]  # none wrong


def test_crossval_and_evaluate_show_the_region_that_carries_the_class(tmp_path):
    """A cross-validation on data whose class lives in one region: where.png's maps of every
    class lie in that region, in the report and in the picture; the folds' ensemble evaluated
    on new data of the kind looks there too."""
    dataset = make_region_dataset(per_class=40)
    run = cross_validate(
        dataset, TrainConfig(epochs=6, augment=False), folds=2, group="random", workers=1
    )
    report = run.report
    region = np.zeros((32, 32), bool)
    region[REGION] = True
    for label, entry in report.where.rows["all"].items():
        assert 0 < entry["faces"] <= WHERE_FACES and entry["of"] == 40
        top = np.argsort(entry["map"].ravel())[::-1][:100]
        assert region.ravel()[top].mean() > 0.5, label
    files = save_crossval(report, tmp_path / "run")
    picture = cv2.imread(str(files["where"]))
    assert files["where"].name == "where.png" and picture is not None
    assert picture.shape[1] > 3 * 128 and np.ptp(picture.astype(int), axis=2).max() > 100
    saved = json.loads(files["report"].read_text())["where"]
    assert saved["faces_per_class"] == WHERE_FACES
    assert set(saved["rows"]["all"]) == set(report.labels)

    model = load_model(save_crossval_model(run, tmp_path / "cv.npz"))
    evaluated = score_model(model, make_region_dataset(per_class=10, seed=3))
    assert "ensemble of 2" in evaluated.where.note
    for label, entry in evaluated.where.rows["all"].items():
        top = np.argsort(entry["map"].ravel())[::-1][:100]
        assert region.ravel()[top].mean() > 0.5, label


def test_no_where_maps_without_fold_networks():
    """Networks z-scored per dataset exist only inside their fold: no map, and the report
    has no where.png rather than a wrong one."""
    selection = SimpleNamespace(
        crops=np.zeros((4, 32, 32), np.uint8), targets=np.array([0, 0, 1, 1]), labels=LABELS
    )
    outcomes = {fold: outcome(fold, np.arange(2 * fold, 2 * fold + 2), None) for fold in range(2)}
    assert crossval_where(selection, outcomes, flip=False) is None
