"""A cross-validation's files: report.json, the confusion pictures, predictions.csv, and the
fold networks as one ensemble model file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.core.errors import FerError, TrainingError
from fercli.core.store import atomic_write_json, atomic_write_text, slug
from fercli.learn.network import export_check
from fercli.learn.reports import CrossvalReport, CrossvalRun, EvaluationReport, ScoreReport

if TYPE_CHECKING:
    from fercli.learn.folds import FoldExport
    from fercli.learn.where import WhereMaps


def crossval_title(report: CrossvalReport) -> str:
    """The pictures' title of a cross-validation: data, folds and mean accuracy."""
    if report.diverged_folds:
        figures = f"{len(report.diverged_folds)} diverged"
    elif math.isnan(report.mean_accuracy):
        figures = "no result"
    else:
        figures = f"{report.mean_accuracy:.1%} +/- {report.std_accuracy:.1%}"
    return (
        f"{report.dataset['name']}: {len(report.folds)}/{report.planned_folds} folds "
        f"({_group(report)}), {figures}"
    )


def _group(report: ScoreReport) -> str:
    group = report.protocol["group"]
    return group if group in ("subject", "dataset") else "random"


def save_crossval(report: CrossvalReport, folder: Path) -> dict[str, Path]:
    """Write report.json, confusion.png, where.png (when report.where has its figures) and
    predictions.csv of a cross-validation, with each dataset's confusion.png where several
    were combined."""
    return save_scores(report, folder, crossval_title(report), report.per_dataset)


def save_evaluation(report: EvaluationReport, folder: Path, title: str) -> dict[str, Path]:
    """Write report.json, confusion.png, where.png and predictions.csv of an evaluation."""
    return save_scores(report, folder, title)


def save_scores(
    report: ScoreReport, folder: Path, title: str, per_dataset: dict[str, dict] | None = None
) -> dict[str, Path]:
    """The files of a report (title: the pictures'); per_dataset: a crossval's figures per
    dataset, each with its own confusion picture."""
    from fercli.media.discover import mark_output_folder
    from fercli.media.drawing import confusion_image

    # Marked as fercli's own, so that a search for photos in a folder above it leaves its
    # pictures out (media.discover).
    mark_output_folder(
        folder, "fer evaluate" if isinstance(report, EvaluationReport) else "fer crossval"
    )
    per_dataset = per_dataset or {}
    # Drawn first, so that report.json can say if it failed.
    where = _draw_where(report, folder, title)
    files = {"report": atomic_write_json(folder / "report.json", report.to_json())}
    files["confusion"] = confusion_image(
        report.confusion, report.labels, folder / "confusion.png", title
    )
    files.update(where)
    files.update(_dataset_confusions(report, folder, per_dataset))
    files["predictions"] = _write_predictions(report, folder / "predictions.csv", bool(per_dataset))
    return files


def _draw_where(report: ScoreReport, folder: Path, title: str) -> dict[str, Path]:
    """where.png, as {"where": its path}, when the report has its figures; {} otherwise. A
    failure to draw it is a warning in the report: it must not cost the rest of a long run's
    files (or its model, saved after them)."""
    if report.where is None:
        return {}
    try:
        return {"where": save_where(report.where, folder / "where.png", title)}
    except Exception as error:
        report.warnings.append(f"where.png was not drawn ({type(error).__name__}: {error})")
        return {}


def _dataset_confusions(
    report: ScoreReport, folder: Path, per_dataset: dict[str, dict]
) -> dict[str, Path]:
    """Each combined dataset's confusion picture, confusion-N-NAME.png, keyed "confusion
    NAME"; titled with its accuracy and how it was tested."""
    from fercli.media.drawing import confusion_image

    group = _group(report)
    how = "left out, trained on the others" if group == "dataset" else group + " folds"
    files = {}
    for number, (name, figures) in enumerate(per_dataset.items(), start=1):
        accuracy = (
            "no result"
            if figures["accuracy"] is None
            else f"{figures['accuracy']:.1%} of {figures['tested']}"
        )
        files[f"confusion {name}"] = confusion_image(
            np.array(figures["confusion_matrix"]),
            report.labels,
            folder / f"confusion-{number}-{slug(name)}.png",
            f"{name}: {accuracy} ({how})",
        )
    return files


def _write_predictions(report: ScoreReport, path: Path, with_dataset: bool) -> Path:
    """predictions.csv: per test image its path, fold, dataset (with_dataset: several
    combined), true and predicted class and the probability of each class."""
    import csv
    import io

    text = io.StringIO()
    origin = ["dataset"] if with_dataset else []
    writer = csv.DictWriter(
        text,
        fieldnames=[
            "path",
            "fold",
            *origin,
            "true",
            "predicted",
            *(f"p_{label}" for label in report.labels),
        ],
    )
    writer.writeheader()
    writer.writerows(report.predictions)
    return atomic_write_text(path, text.getvalue())


def save_where(where: WhereMaps, path: Path, title: str) -> Path:
    """where.png: per class, the mean map over its test faces and over those got wrong."""
    from fercli.infer.explain import PATCH
    from fercli.media.heatmaps import where_image
    from fercli.media.images import write_png

    rows = []
    for row, name, empty in (
        ("all", "all test faces of the class", "no test face"),
        ("wrong", "the faces it got wrong, with what it took them for", "none wrong"),
    ):
        tiles = {}
        for label, entry in where.rows.get(row, {}).items():
            shown = f"{entry['faces']} of {entry['of']}" + (" wrong" if row == "wrong" else "")
            taken = ", ".join(f"{other} {n}" for other, n in entry["taken_for"].items())
            tiles[label] = {**entry, "caption": f"{shown}: {taken}" if taken else shown}
        rows.append((name, tiles, empty))
    note = (
        f"colour: how much the probability of the class predicted for a face drops when a grey "
        f"patch ({PATCH}x{PATCH}) covers the spot, averaged over the faces of the tile (at most "
        f"{where.faces_per_class}, spread over the class); {where.note}. Shown over the "
        "faces' mean crop; one colour scale for every tile."
    )
    picture = where_image(where.labels, rows, f"where the network looked: {title}", note)
    return write_png(path, picture)


def save_crossval_model(
    run: CrossvalRun,
    output: Path,
    run_folder: Path | None = None,
    keep_existing: bool = True,
) -> Path:
    """Save a finished cross-validation's fold networks as one ensemble model file, which
    predict and evaluate average. Checked before it takes its name: each network within 1e-4
    of Keras on its fold's test crops, the file's ensemble within 1e-4 of the folds' Keras
    networks averaged on the load check's crops. TrainingError when the run has no model worth
    saving (run.model_refusal: a fold missing or diverged, ...). run_folder: the run's report
    folder, named in the file. Returns the path written."""
    from fercli.infer.model import probe_crops, save_networks

    refusal = run.model_refusal
    if refusal is not None:
        raise TrainingError(f"no model saved: {refusal}")
    exports = _checked_exports(run)
    selection = run.selection
    expected = np.mean([exported.probe for exported in exports], axis=0)
    check = export_check(probe_crops(selection.crops.shape[1]), expected, "the exported ensemble")
    return save_networks(
        output,
        [exported.network for exported in exports],
        selection.labels,
        PreprocessConfig.from_dict(run.dataset.meta["preprocess"]),
        run.config,
        _ensemble_details(run, len(exports), run_folder),
        keep_existing,
        training_crops=selection.crops,
        training_sources=selection.sources,
        check=check,
    )


def _checked_exports(run: CrossvalRun) -> list[FoldExport]:
    """The folds' exported networks in fold order; FerError (a bug) when one disagrees with
    Keras by more than 1e-4."""
    exports = []
    for index in sorted(run.outcomes):
        exported = run.outcomes[index].export
        if exported is None:  # model_refusal has said so; for the type checker
            raise TrainingError(f"no model saved: fold {index + 1} has no exported network")
        if not exported.difference <= 1e-4:
            raise FerError(
                f"fold {index + 1}'s exported network disagrees with Keras by "
                f"{exported.difference:.2g}; no model was saved (a bug: please report it)"
            )
        exports.append(exported)
    return exports


def _ensemble_details(run: CrossvalRun, members: int, run_folder: Path | None) -> dict:
    """What the model file records of its origin: test-time flipping, the data it learned
    from, and the cross-validation whose fold networks are its members."""
    report, dataset = run.report, run.dataset
    return {
        "test_time_flip": run.config.test_time_flip,
        "data_fingerprint": report.dataset["fingerprint"],
        "dataset": {
            "name": dataset.name,
            "source": dataset.meta.get("source"),
            "images": len(run.selection.crops),
        },
        "ensemble": {
            "kind": "crossval",
            "members": members,
            "folds": report.planned_folds,
            "group": report.protocol["group"],
            "run": str(run_folder) if run_folder else None,
            "mean_accuracy": report.mean_accuracy,
            "std_accuracy": report.std_accuracy,
            "note": "each member was trained on all folds but one; together they saw every image",
        },
    }
