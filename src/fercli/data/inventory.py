"""What FER_HOME holds (datasets, models, cross-validation runs), and removing one of them.

Entries are read without unpickling anything and without TensorFlow; a file that cannot be
read is still listed (with the reason), so that it can be removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fercli.core.archives import (
    archive_meta,
    array_length,
    read_model_archive,
)
from fercli.core.config import TrainConfig
from fercli.core.errors import ModelError, StoreError
from fercli.core.recipes import recipe_differences
from fercli.core.store import (
    abbreviated,
    crops_dir,
    datasets_dir,
    default_model,
    dlib_dir,
    home,
    models_dir,
    name_not_found,
    runs_dir,
)
from fercli.data.prepared import DATASET_FILE, default_dataset


@dataclass
class Entry:
    """One dataset, model or run under FER_HOME."""

    kind: str  # "dataset", "model" or "run"
    name: str  # what `fer remove` takes: the folder's or the model file's name
    path: Path
    size: int  # bytes of every file in it
    modified: float  # time of its last change (seconds since the epoch)
    details: dict = field(
        default_factory=dict
    )  # what the entry says about itself; "error" if unreadable

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.modified)),
            **self.details,
        }


@dataclass
class Inventory:
    home: Path
    datasets: list[Entry]
    models: list[Entry]
    runs: list[Entry]
    other: dict[str, int]  # sizes of what fercli rebuilds by itself: the crop cache, dlib's models
    default_model: str | None = None  # the model fer predict uses when none is named
    default_dataset: str | None = None  # the dataset fer train uses when none is named

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.datasets + self.models + self.runs) + sum(
            self.other.values()
        )

    def to_json(self) -> dict:
        return {
            "home": str(self.home),
            "datasets": [entry.to_json() for entry in self.datasets],
            "models": [entry.to_json() for entry in self.models],
            "runs": [entry.to_json() for entry in self.runs],
            "other": self.other,
            "total": self.total,
            "default_model": self.default_model,
            "default_dataset": self.default_dataset,
        }


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (links not followed)."""
    if path.is_symlink() or not path.is_dir():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                total += (Path(directory) / name).lstat().st_size
            except OSError:
                continue  # removed while we counted
    return total


def _children(folder: Path, want_dir: bool) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [
        child for child in children if not child.name.startswith(".") and child.is_dir() == want_dir
    ]


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _regular(path: Path) -> None:
    """OSError unless path is a regular file: reading a FIFO planted in FER_HOME would wait for
    ever (a missing file raises as well, as reading it would)."""
    if not path.is_file():
        raise OSError(f"{path.name} is not a regular file")


def _dataset(folder: Path) -> Entry:
    entry = Entry("dataset", folder.name, folder, size_of(folder), _modified(folder / DATASET_FILE))
    try:
        _regular(folder / DATASET_FILE)
        # Within limits, as model files are read: the meta's size checked before it is
        # unpacked, the images counted from the labels' header.
        with np.load(folder / DATASET_FILE, allow_pickle=False) as archive:
            meta = archive_meta(archive)
            images = array_length(archive, "labels")
        entry.details = {
            "images": images,
            "classes": meta.get("classes", {}),
            "source": meta.get("source"),
            # "evaluate": a test set fer evaluate made, never train's default.
            "made_by": meta.get("made_by", "preprocess"),
        }
    except Exception as error:
        entry.details = {"error": f"{type(error).__name__}: {error}"}
    return entry


def _run(folder: Path) -> Entry:
    entry = Entry("run", folder.name, folder, size_of(folder), _modified(folder))
    if not (folder / "report.json").exists() and (folder / "grid.json").exists():
        entry.details = _sweep(folder)
        return entry
    try:
        _regular(folder / "report.json")
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        group = report["protocol"]["group"]
        entry.details = {
            # "none": the one test of fer evaluate, not folds of a cross-validation.
            "run": "evaluate" if group == "none" else "crossval",
            # fer evaluate --adapt: the model adapted to the dataset's faces first.
            "adapted": bool(report["protocol"].get("adapted")),
            "dataset": report["dataset"]["name"],
            "fingerprint": report["dataset"].get("fingerprint"),
            "folds": report.get("completed_folds"),
            "planned_folds": report.get("planned_folds"),
            "interrupted": bool(report.get("interrupted")),
            "group": group,
            "training": report["protocol"]["training"],
            "mean_accuracy": report.get("mean_accuracy"),
            "std_accuracy": report.get("std_accuracy"),
            "pooled_accuracy": report.get("pooled_accuracy"),
            "classes": len(report.get("labels") or []),
        }
    except Exception as error:
        entry.details = {"error": f"no readable report.json ({type(error).__name__})"}
    return entry


def _sweep(folder: Path) -> dict:
    """A sweep's folder: its grid, the folds stored so far and, once it has finished, its best
    recipe (sweep.json)."""
    try:
        _regular(folder / "grid.json")
        grid = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
        settings = grid["grid"]
        planned = len(grid["recipes"]) * len(settings["seeds"]) * settings["folds"]
    except Exception as error:
        return {"error": f"no readable grid.json ({type(error).__name__})"}
    details = {
        "run": "sweep",
        "recipes": len(grid["recipes"]),
        "seeds": len(settings["seeds"]),
        "folds": sum(1 for _ in folder.glob("folds/*/fold*.npz")),
        "planned_folds": planned,
        "finished": False,
        "dataset": None,
        "best": None,
    }
    try:
        _regular(folder / "sweep.json")
        report = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
        best = report["recipes"][0]
        details.update(
            finished=not report.get("interrupted"),
            dataset=report["dataset"]["name"],
            best={"recipe": best["recipe"], "accuracy": best["accuracy"]},
        )
    except Exception:
        pass  # not finished yet: the grid says what it is
    return details


def recipe(training: dict) -> str:
    """A training configuration in a few words: its recipe, then the settings that differ from
    it."""
    config = TrainConfig.from_dict(training)
    changed = [f"{key} {value}" for key, value in recipe_differences(config).items()]
    return ", ".join([config.recipe, *changed])


def _model(path: Path, runs: list[Entry]) -> Entry:
    entry = Entry("model", path.name, path, size_of(path), _modified(path))
    try:
        meta, _ = read_model_archive(path, with_arrays=False)
        training = meta.get("training", {})
        entry.details = {
            "dataset": (meta.get("dataset") or {}).get("name"),
            "classes": meta.get("classes"),
            "recipe": recipe(training),
            "training": training,
            "crossval": None,
        }
        # A cross-validation of the same recipe on the same data is this model's honest score.
        matching = [
            run
            for run in runs
            if run.details.get("fingerprint") == meta.get("data_fingerprint")
            and run.details.get("training") == training
            and run.details.get("mean_accuracy") is not None
            and run.details.get("run") == "crossval"
        ]
        if matching:
            best = max(matching, key=lambda run: (run.details["folds"] or 0, run.modified))
            entry.details["crossval"] = {
                key: best.details[key]
                for key in ("mean_accuracy", "std_accuracy", "folds", "group")
            }
            entry.details["crossval"]["run"] = best.name
    except ModelError as error:
        entry.details = {"error": str(error).removeprefix(f"{path}: ")}
    except Exception as error:
        entry.details = {"error": f"not a readable model file ({type(error).__name__})"}
    return entry


def list_home() -> Inventory:
    """Every dataset, model and cross-validation run under FER_HOME, oldest first."""
    runs = [_run(folder) for folder in _children(runs_dir(), want_dir=True)]
    datasets = [_dataset(folder) for folder in _children(datasets_dir(), want_dir=True)]
    models = [
        _model(path, runs)
        for path in _children(models_dir(), want_dir=False)
        if path.suffix == ".npz"
    ]
    other = {"crop cache": size_of(crops_dir()), "dlib models": size_of(dlib_dir())}

    def by_age(entries: list[Entry]) -> list[Entry]:
        return sorted(entries, key=lambda entry: (entry.modified, entry.name))

    newest = default_model()  # as fer predict picks its model: the newest that can be read
    dataset = default_dataset()
    return Inventory(
        home(),
        by_age(datasets),
        by_age(models),
        by_age(runs),
        other,
        default_model=newest.name if newest else None,
        default_dataset=dataset.parent.name if dataset else None,
    )


def _folders() -> dict[str, Path]:
    return {"dataset": datasets_dir(), "model": models_dir(), "run": runs_dir()}


def _listed() -> dict[Path, str]:
    """What fer list shows, as path -> kind: the dataset and run folders, and the model files
    (.npz) of models/. Nothing else under FER_HOME (a notes.txt beside the models) is an
    entry, so nothing else can be removed by name."""
    listed = {}
    for kind, folder in _folders().items():
        for child in _children(folder, want_dir=kind != "model"):
            if kind != "model" or child.suffix == ".npz":
                listed[child] = kind
    return listed


PATTERN_CHARACTERS = frozenset("*?[")

# What a dataset's or run's name may leave out in fer remove: its hash, its time or both (and
# the number of a second run of the same second), never a word: `evaluate` must not name the
# one evaluation run there is, nor `sp` the dataset sp-ace-3c7ef3da.
OMISSIBLE_END = re.compile(r"(?:[0-9a-f]{8}|\d{8}-\d{6}|[0-9a-f]{8}-\d{8}-\d{6})(?:-\d+)?")


def find_entry(name: str, listed: dict[Path, str] | None = None) -> tuple[str, Path]:
    """The kind and path of the one entry fer list shows that name names: its name (a model
    with or without .npz), its path, or a dataset or run without the parts at its end (a
    dataset without its hash, when only one has that name). A model must be named whole: its
    name begins with its dataset's, so a dataset's name must never reach a model once the
    dataset is gone. StoreError for anything else."""
    listed = _listed() if listed is None else listed
    given = Path(name)
    if given.parent != Path(".") or given.is_absolute():
        # A path: it must be an entry itself, straight inside one of FER_HOME's folders.
        parent = given.parent.resolve()
        for path, kind in listed.items():
            if path.parent.resolve() == parent and path.name == given.name:
                return kind, path
        raise StoreError(f"{name}: not a dataset, model or run in {home()}; nothing removed")
    exact = [
        (kind, path)
        for path, kind in listed.items()
        if path.name == name or (kind == "model" and path.name == f"{name}.npz")
    ]
    if not exact:
        exact = _abbreviated(name, {path: kind for path, kind in listed.items() if kind != "model"})
    if len(exact) > 1:
        raise StoreError(
            f"{name}: names both the {exact[0][0]} {exact[0][1]} and the {exact[1][0]} "
            f"{exact[1][1]}; give its path"
        )
    return exact[0]


def _abbreviated(name: str, listed: dict[Path, str]) -> list[tuple[str, Path]]:
    """The one dataset or run name abbreviates, leaving out its hash or time (OMISSIBLE_END);
    StoreError, with the closest names of every entry, if none or several."""
    entries = {path.name: (kind, path) for path, kind in listed.items()}
    matches = [
        match
        for match in abbreviated(name, sorted(entries))
        if OMISSIBLE_END.fullmatch(match[len(name) + 1 :])
    ]
    if len(matches) == 1:
        return [entries[matches[0]]]
    names = sorted({*entries, *(path.name for path in _listed())})
    reason = name_not_found(name, names, matches, "datasets, models or runs")
    if not matches:
        reason = reason.replace(
            "no datasets, models or runs of that name",
            f"no dataset, model or run of that name in {home()}",
        )
    raise StoreError(f"{reason} (see fer list; a model is named whole); nothing removed")


def find_entries(names: list[str]) -> list[tuple[str, Path]]:
    """Each name resolved once, against what fer list shows before anything is removed (a
    pattern such as evaluate-* to every entry whose name it matches), in order and each entry
    once. StoreError naming the first name that names nothing."""
    import fnmatch

    listed = _listed()
    found: dict[Path, str] = {}
    for name in names:
        if PATTERN_CHARACTERS & set(name) and Path(name).name == name:
            matched = [
                (kind, path)
                for path, kind in listed.items()
                if fnmatch.fnmatchcase(path.name, name)
            ]
            if not matched:
                raise StoreError(f"{name}: matches no dataset, model or run (see fer list)")
        else:
            matched = [find_entry(name, listed)]
        for kind, path in matched:
            found.setdefault(path, kind)
    return [(kind, path) for path, kind in found.items()]


def remove_entries(names: list[str]) -> list[Entry]:
    """Delete the datasets, model files and run folders that names name (find_entries: all
    resolved before the first is removed); returns what was removed, each with its size.
    StoreError if a name names nothing (then nothing is removed) or an entry cannot be."""
    return [_remove(kind, path) for kind, path in find_entries(names)]


def remove_entry(name: str) -> Entry:
    """Delete the one dataset, model file or run folder that name names (see find_entry)."""
    [removed] = remove_entries([name])
    return removed


def _remove(kind: str, path: Path) -> Entry:
    removed = Entry(kind, path.name, path, size_of(path), _modified(path))
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as error:
        raise StoreError(f"cannot remove {path}: {error.strerror or error}") from None
    return removed
