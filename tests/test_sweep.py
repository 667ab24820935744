"""fer sweep: grid files, the paired statistics, resuming, and the Ray engine."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.core.config import TrainConfig
from fercli.core.errors import FerError, GridError
from fercli.learn.engines import LocalEngine, RayEngine
from fercli.learn.grid import Grid, _toml, parse_grid, read_grid, recipes
from fercli.learn.sweep import corrected_interval, run_sweep
from synthetic import make_dataset, save_synthetic

runner = CliRunner()
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="Ray is not installed (pip install 'fercli[ray]')"
)

# Two recipes that differ only at test time (mirror averaging), so that the trainings are
# cheap; two seeds x two folds: 8 folds in all.
GRID = """
seeds = [0, 1]
folds = 2
group = "subject"

[base]
epochs = 1
batch_size = 8

[vary]
flip_tta = [false, true]
"""


def small_dataset():
    return make_dataset(labels=("anger", "happiness", "sadness"), subjects=4, per_subject=2)


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- grid files ---------------------------------------------------------------------------


def test_grid_reads_settings_with_cli_spellings(tmp_path):
    path = write(
        tmp_path,
        "seeds = [3]\nfolds = 4\n[base]\nlr = 0.01\nepochs = 5\nmax-shift = 2\n"
        '[vary]\nflip_tta = [false, true]\nvariant = ["paper", "batchnorm"]\n',
    )
    grid = read_grid(path)
    assert grid.base == {"learning_rate": 0.01, "epochs": 5, "max_shift": 2.0}
    assert grid.vary == {"test_time_flip": (False, True), "variant": ("paper", "batchnorm")}
    assert grid.seeds == (3,) and grid.folds == 4 and grid.group == "random"
    found = recipes(grid)
    assert [item.name for item in found] == [
        "base",
        "variant=batchnorm",
        "test_time_flip=true",
        "test_time_flip=true variant=batchnorm",
    ]
    assert found[0].config == TrainConfig(learning_rate=0.01, epochs=5, max_shift=2.0)


def test_every_train_setting_can_be_varied():
    # Generic over TrainConfig's fields: new fields need no change to the sweep code.
    from dataclasses import fields

    defaults = TrainConfig()
    for item in fields(TrainConfig):
        if item.name in ("seed", "classes"):
            continue
        value = getattr(defaults, item.name)
        grid = parse_grid({"vary": {item.name: [value]}}, "g.toml")
        assert grid.vary[item.name] == (value,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[base]\nlearning_rat = 0.1\n[vary]\nepochs = [1]",
            "g.toml [base]: unknown setting 'learning_rat'",
        ),
        # Coerced and checked by the settings themselves: the message a Python call gets.
        (
            '[vary]\nepochs = [1, "two"]',
            "g.toml: [vary] epochs: epochs (--epochs) must be a whole number, not 'two'",
        ),
        (
            "[vary]\nflip_tta = [1]",
            "g.toml: [vary] flip_tta: test_time_flip (--flip-tta) must be true or false, not 1",
        ),
        (
            '[base]\nlr = "fast"\n[vary]\nepochs = [1]',
            "g.toml: [base] lr: learning_rate (--lr) must be a number, not 'fast'",
        ),
        (
            '[vary]\nvariant = ["huge"]',
            "g.toml: [vary] variant: variant (--variant) 'huge' is not one of paper",
        ),
        ("[vary]\nepochs = []", "g.toml: [vary] epochs is an empty list"),
        ("[vary]\nepochs = 3", "g.toml: [vary] epochs must be a list of values"),
        ("seeds = [0]", "g.toml: [vary] names no setting to vary"),
        ("[base]\nseed = 1\n[vary]\nepochs = [1]", "list the seeds in seeds = [...]"),
        ("seeds = []\n[vary]\nepochs = [1]", "g.toml: seeds must be a non-empty list"),
        ("folds = 1\n[vary]\nepochs = [1]", "g.toml: folds 1 must be at least 2"),
        (
            'group = "person"\n[vary]\nepochs = [1]',
            "g.toml: group 'person' is not one of random, subject",
        ),
        ("epochs = 3\n[vary]\nlr = [0.1]", "g.toml: unknown key 'epochs'"),
    ],
)
def test_bad_grids_are_refused_naming_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text, "g.toml")
    with pytest.raises(GridError) as caught:
        read_grid(path)
    assert message in str(caught.value).replace(str(path), "g.toml")


def test_set_overrides_base_top_level_and_vary(tmp_path):
    path = write(tmp_path, GRID)
    grid = read_grid(
        path, ["epochs=3", "seeds=[5]", 'vary.variant=["paper", "wide"]', "optimizer=adam"]
    )
    assert grid.base["epochs"] == 3 and grid.base["optimizer"] == "adam" and grid.seeds == (5,)
    assert grid.vary["variant"] == ("paper", "wide")
    with pytest.raises(GridError, match="unknown setting 'epoch'"):
        read_grid(path, ["epoch=3"])


def test_cli_refuses_a_bad_grid_in_one_line(tmp_path):
    save_synthetic(small_dataset())
    path = write(tmp_path, "[vary]\nwidth = [1, 2]\n")
    result = runner.invoke(app, ["sweep", "--grid", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown setting 'width'" in lines[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[base]\nrecipe = "nope"\n[vary]\nepochs = [1, 2]', "unknown recipe 'nope'"),
        (
            "[base]\naugment = false\nmixup = 0.4\n[vary]\nepochs = [1, 2]",
            "mixup (--mixup 0.4) does nothing with --no-augment",
        ),
        # The dataset being swept over is no validation set; a sweep once ignored any dataset
        # given as validation, training its folds without one.
        (
            'folds = 2\n[base]\nvalidation = "synthetic"\n[vary]\nepochs = [1, 2]',
            "--validation synthetic: 24 of its 24 images are among the images trained on",
        ),
    ],
)
def test_a_grid_whose_recipes_are_refused_leaves_no_sweep_folder(tmp_path, text, message):
    # issue 32: `recipe = "nope"` left an empty sweep-... folder, listed as unreadable.
    from fercli.core.store import runs_dir

    save_synthetic(small_dataset())
    result = runner.invoke(app, ["sweep", "--grid", str(write(tmp_path, text))])
    assert result.exit_code == 1 and message in result.output
    assert not list(runs_dir().glob("sweep-*"))


# --- statistics ---------------------------------------------------------------------------


def test_corrected_interval_follows_nadeau_and_bengio():
    differences = np.array([[0.02, 0.05, -0.01], [0.04, 0.00, 0.03]])  # 2 seeds x 3 folds
    ratio = 0.5  # 3 folds: a third tests, two thirds train
    result = corrected_interval(differences, ratio)
    # Worked by hand: mean 0.13 / 6; sample variance 0.0026833 / 5 = 0.00053667, corrected
    # by (1/6 + 0.5) to 0.00035778; t(0.975, 5 df) = 2.5706 (a t table); half-width
    # 2.5706 * sqrt(0.00035778) = 0.048623.
    assert result["mean"] == pytest.approx(0.0216667, abs=1e-6)
    assert result["low"] == pytest.approx(0.0216667 - 0.048623, abs=1e-5)
    assert result["high"] == pytest.approx(0.0216667 + 0.048623, abs=1e-5)
    assert result["df"] == 5
    # The correction makes the interval wider than the naive one (variance / n): 0.024311.
    assert result["high"] - result["mean"] > 2.5706 * np.sqrt(0.00053667 / 6) + 0.02


# --- running and resuming -----------------------------------------------------------------


def fold_files(folder: Path) -> dict[str, dict]:
    stored = {}
    for path in sorted((folder / "folds").glob("*/*.npz")):
        with np.load(path) as archive:
            stored[f"{path.parent.name}/{path.name}"] = {key: archive[key] for key in archive.files}
    return stored


@pytest.fixture(scope="module")
def full_and_resumed(tmp_path_factory):
    """The same sweep run straight through (in one FER_HOME), and interrupted after its first
    fold, then run again (in another)."""
    dataset = small_dataset()
    grid = parse_grid(_toml().loads(GRID), "grid.toml")
    saved = os.environ.get("FER_HOME")
    try:
        os.environ["FER_HOME"] = str(tmp_path_factory.mktemp("straight"))
        save_synthetic(dataset)  # where the CLI finds it (the test of a finished sweep)
        full = run_sweep(dataset, grid, LocalEngine(2))

        os.environ["FER_HOME"] = str(tmp_path_factory.mktemp("resumed"))
        save_synthetic(dataset)

        def stop_after_first_fold(event) -> None:
            if event.kind == "fold":
                raise KeyboardInterrupt

        interrupted = run_sweep(dataset, grid, LocalEngine(1), progress=stop_after_first_fold)
        after_interrupt = fold_files(interrupted.folder)
        events: list = []
        resumed = run_sweep(dataset, grid, LocalEngine(2), progress=events.append)
        return full, interrupted, after_interrupt, resumed, events
    finally:
        if saved is None:
            os.environ.pop("FER_HOME", None)
        else:
            os.environ["FER_HOME"] = saved


def test_sweep_ranks_every_recipe_with_the_base_as_reference(full_and_resumed):
    full = full_and_resumed[0]
    assert full.planned_folds == 8 and full.trained_folds == 8 and not full.interrupted
    assert {item.name for item in full.recipes} == {"base", "test_time_flip=true"}
    base = next(item for item in full.recipes if item.is_base)
    assert base.difference == 0 and base.difference_interval == (0, 0)
    assert [item.rank for item in full.recipes] == [1, 2]
    assert full.recipes[0].accuracy >= full.recipes[1].accuracy
    for item in full.recipes:
        assert set(item.fold_accuracies) == {0, 1} and all(
            len(v) == 2 for v in item.fold_accuracies.values()
        )
        assert item.accuracy == pytest.approx(
            np.mean([np.mean(v) for v in item.fold_accuracies.values()])
        )
        low, high = item.accuracy_interval
        assert low <= item.accuracy <= high


def test_sweep_writes_its_files_and_a_report_per_member(full_and_resumed):
    full = full_and_resumed[0]
    assert full.folder.parent.name == "runs" and full.folder.name.startswith("sweep-")
    data = json.loads((full.folder / "sweep.json").read_text())
    json.dumps(data, allow_nan=False)
    assert "Nadeau & Bengio" in data["method"] and len(data["recipes"]) == 2
    assert (full.folder / "sweep.csv").read_text().count("\n") == 3
    assert (full.folder / "sweep.png").stat().st_size > 1000
    for item in full.recipes:
        for seed, folder in item.reports.items():
            report = json.loads((folder / "report.json").read_text())
            assert report["protocol"]["training"]["seed"] == seed and report["completed_folds"] == 2
            assert (folder / "confusion.png").exists() and (folder / "predictions.csv").exists()


def test_same_seed_same_folds_for_every_recipe(full_and_resumed):
    full = full_and_resumed[0]
    for seed in (0, 1):
        subjects = [
            json.loads((item.reports[seed] / "report.json").read_text())["folds"]
            for item in full.recipes
        ]
        assert [fold["test_subjects"] for fold in subjects[0]] == [
            fold["test_subjects"] for fold in subjects[1]
        ]


def test_an_interrupted_sweep_keeps_its_finished_folds(full_and_resumed):
    _, interrupted, after_interrupt, _, _ = full_and_resumed
    assert interrupted.interrupted and interrupted.recipes == []
    assert 1 <= len(after_interrupt) < 8


def test_rerun_trains_only_the_missing_folds_and_gives_the_same_numbers(full_and_resumed):
    full, interrupted, after_interrupt, resumed, events = full_and_resumed
    assert resumed.folder.name == full.folder.name  # same data, same grid: same sweep
    assert resumed.stored_folds == len(after_interrupt)
    assert resumed.trained_folds == 8 - len(after_interrupt)
    assert len([event for event in events if event.kind == "fold"]) == resumed.trained_folds
    assert (events[0].kind, events[0].done, events[0].total) == ("start", resumed.stored_folds, 8)
    straight, again = fold_files(full.folder), fold_files(resumed.folder)
    assert straight.keys() == again.keys() and len(straight) == 8
    for name, arrays in after_interrupt.items():  # what was stored was not trained again
        np.testing.assert_array_equal(arrays["probabilities"], again[name]["probabilities"])
        assert arrays["seconds"] == again[name]["seconds"]
    for name in straight:
        np.testing.assert_array_equal(straight[name]["probabilities"], again[name]["probabilities"])
    assert [
        (item.name, item.accuracy, item.difference, item.difference_interval)
        for item in full.recipes
    ] == [
        (item.name, item.accuracy, item.difference, item.difference_interval)
        for item in resumed.recipes
    ]


def test_cli_sweep_of_a_finished_sweep_trains_nothing(full_and_resumed, tmp_path, monkeypatch):
    full = full_and_resumed[0]
    monkeypatch.setenv("FER_HOME", str(full.folder.parent.parent))
    grid = write(tmp_path, GRID)
    result = runner.invoke(app, ["sweep", "--grid", str(grid), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["trained_folds"] == 0 and data["stored_folds"] == 8
    assert [item["accuracy"] for item in data["recipes"]] == [
        item.accuracy for item in full.recipes
    ]
    # The base row says what base is: the preset and its value of what the grid varies.
    assert data["base"] == "base (paper: test_time_flip=false)"
    table = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["sweep", "--grid", str(grid)])
    assert (
        table.exit_code == 0
        and "test_time_flip" in table.output
        and "Nadeau & Bengio" in table.output
    )
    assert "base (paper: test_time_flip=false)" in table.output


def test_another_grid_is_another_sweep(tmp_path):
    dataset = small_dataset()
    one = parse_grid({"vary": {"epochs": [1]}, "folds": 2}, "a.toml")
    two = parse_grid({"vary": {"epochs": [1]}, "folds": 3}, "a.toml")
    from fercli.learn.sweep import sweep_folder

    assert sweep_folder(dataset, "x", one) != sweep_folder(dataset, "x", two)
    assert sweep_folder(dataset, "x", one) == sweep_folder(
        dataset, "x", Grid(**{**one.__dict__, "source": "b.toml"})
    )


# --- Ray ----------------------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ray_address_that_does_not_answer_fails_at_once(tmp_path):
    save_synthetic(small_dataset())
    grid = write(tmp_path, GRID)
    started = time.monotonic()
    result = runner.invoke(
        app, ["sweep", "--grid", str(grid), "--ray", f"127.0.0.1:{unused_port()}"]
    )
    assert time.monotonic() - started < 30  # a generous bound against a hang, not a timing test
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "no Ray cluster answers at 127.0.0.1" in lines[0]  # checked before Ray is even imported


@needs_ray
def test_ray_auto_pointing_at_a_cluster_that_has_gone_fails_at_once(tmp_path, monkeypatch):
    # RAY_ADDRESS, or the file a stopped cluster leaves behind, names a port nobody listens on:
    # ray.init(address="auto") would wait there for ever.
    port = unused_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    save_synthetic(small_dataset())
    result = runner.invoke(app, ["crossval", "--folds", "2", "--epochs", "1", "--ray", "auto"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    # (Ray names 127.0.0.1 by this machine's address)
    assert (
        len(lines) == 1
        and "no Ray cluster answers at" in lines[0]
        and f":{port} (the address of --ray auto)" in lines[0]
    )


def test_without_ray_the_message_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(FerError, match=r"pip install 'fercli\[ray\]'"):
        RayEngine("auto").connect()


@pytest.fixture(scope="module")
def local_ray():
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'fercli[ray]')")
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
    )
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_folds_equal_local_folds_to_the_last_digit(
    local_ray, full_and_resumed, tmp_path_factory
):
    full = full_and_resumed[0]
    dataset = small_dataset()
    grid = parse_grid(_toml().loads(GRID), "grid.toml")
    saved = os.environ.get("FER_HOME")
    os.environ["FER_HOME"] = str(tmp_path_factory.mktemp("ray"))
    try:
        on_ray = run_sweep(dataset, grid, RayEngine("auto"))
    finally:
        os.environ["FER_HOME"] = saved or ""
    assert on_ray.engine["name"] == "ray" and on_ray.trained_folds == 8
    local, remote = fold_files(full.folder), fold_files(on_ray.folder)
    assert local.keys() == remote.keys()
    for name in local:
        np.testing.assert_array_equal(local[name]["probabilities"], remote[name]["probabilities"])


@needs_ray
def test_crossval_runs_on_ray_through_the_cli(local_ray):
    save_synthetic(small_dataset())
    result = runner.invoke(
        app, ["crossval", "--folds", "2", "--epochs", "1", "--ray", "auto", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["protocol"]["engine"]["name"] == "ray" and report["completed_folds"] == 2


@needs_ray
def test_a_cluster_with_other_code_is_refused(local_ray, monkeypatch):
    from fercli.core import version
    from fercli.core.errors import EngineError

    # This process is another fercli version than the one the cluster's workers import.
    monkeypatch.setattr(version, "VERSION", "0.0.0-other")
    with pytest.raises(EngineError, match="runs other code .*fercli .* there, 0.0.0-other here"):
        RayEngine("auto").connect()


def test_fer_list_shows_a_finished_sweep_and_its_best_recipe(full_and_resumed, monkeypatch):
    full = full_and_resumed[0]
    monkeypatch.setenv("FER_HOME", str(full.folder.parent.parent))
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if full.folder.name in line)
    recipes, seeds = len(full.recipes), len(full.grid.seeds)
    assert f"sweep: {recipes} recipes x {seeds} seeds" in row and "unreadable" not in row
    assert f"best {full.recipes[0].name}: {full.recipes[0].accuracy:.1%}" in row


def test_sweep_progress_shows_the_epoch_each_running_fold_is_in(tmp_path):
    """A fold of 100 epochs takes minutes: the progress line moves with its epochs."""
    from fercli.cli.app import progress_bar
    from fercli.cli.learn_commands import sweep_reporter

    grid = parse_grid(
        _toml().loads(
            "seeds = [3]\nfolds = 2\n[base]\nepochs = 3\nbatch_size = 8\n"
            "[vary]\nflip_tta = [false, true]\n"
        ),
        "g.toml",
    )
    bar, update = progress_bar("sweep")
    reporter = sweep_reporter(bar, update)
    shown = []

    def progress(event) -> None:
        reporter(event)
        shown.append((event.kind, bar.tasks[0].description))

    run_sweep(small_dataset(), grid, LocalEngine(1), progress=progress)
    epochs = [description for kind, description in shown if kind == "epoch"]
    assert len(epochs) == 12  # 2 recipes x 2 folds x 3 epochs, each shown
    assert "recipe 1 seed 3 fold 1 epoch 2/3" in epochs
    assert any("recipe 2 seed 3 fold 2 epoch 3/3" in description for description in epochs)
    assert bar.tasks[0].completed == 4  # the bar counts finished folds
