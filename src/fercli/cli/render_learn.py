"""What fer train, crossval, evaluate and sweep print: tables and lines, no work."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from fercli.cli.app import emit_json, out, shown
from fercli.cli.options import recipe_summary
from fercli.cli.render_media import plural
from fercli.core.labels import describe_shares


def render_sources(parts: list[dict], labels: list[str]) -> None:
    """Several datasets combined: which classes came from where, and how many images each gave."""
    table = Table(title="images per dataset and class")
    table.add_column("class", overflow="fold")
    for part in parts:
        table.add_column(shown(part["name"]), justify="right", overflow="fold")
    for label in labels:
        table.add_row(shown(label), *(str(part["classes"].get(label, 0)) for part in parts))
    table.add_row("all", *(str(part["images"]) for part in parts), style="bold")
    out.print(table)


def render_training(result, ensemble: int, as_json: bool) -> None:
    """fer train's result: one JSON object, or its lines (images, epochs, final figures, the
    network kept, the datasets combined, notes, where the model was saved)."""
    parts = result.parts
    if as_json:
        emit_json(
            {
                "model": str(result.path),
                "dataset": result.dataset,
                "classes": result.classes,
                **({"datasets": parts} if parts else {}),
                "images": result.images,
                "epochs": result.epochs,
                "final_loss": result.loss,
                "final_train_accuracy": result.accuracy,
                "seconds": round(result.seconds, 1),
                "runtime_difference": result.runtime_difference,
                "networks": ensemble,
                **({"validation": result.validation} if result.validation else {}),
                **({"notes": result.notes} if result.notes else {}),
            }
        )
        return
    kept = result.validation
    # A --validation share is held out of the images selected; another dataset's are its own.
    held = kept["images"] if kept.get("share") else 0
    out.print(
        f"trained on {result.images - held}"
        + (f" of the {result.images}" if held else "")
        + f" images of {shown(result.dataset)} ({shown(', '.join(result.classes))}), "
        f"{plural(result.epochs, 'epoch')} in {result.seconds:.1f} s; "
        f"final training loss {result.loss:.3f}, "
        f"training accuracy {result.accuracy:.1%} (not a test score: use fer crossval)"
    )
    if kept:
        scored = (
            f"the {kept['images']} images held out of them"
            if held
            else f"--validation's {kept['images']} images of these classes"
        )
        out.print(
            f"kept the network of epoch {', '.join(map(str, kept['epochs']))}: the best on "
            f"{scored} (validation accuracy "
            f"{', '.join(f'{value:.1%}' for value in kept['accuracies'])})"
        )
    if parts:
        render_sources(parts, result.classes)
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {shown(note)}")
    out.print(
        f"model saved to {shown(result.path)}"
        + (f" (an ensemble of {ensemble} networks)" if ensemble > 1 else "")
    )


def render_per_dataset(report) -> None:
    """Each dataset's accuracy on its own test images: one mean can hide that one carries the
    other."""
    table = Table(title="accuracy per dataset (its own test images, over the folds)")
    for column in ("dataset", "tested", "accuracy", "mean +/- std over folds"):
        table.add_column(
            column, justify="left" if column == "dataset" else "right", overflow="fold"
        )
    for name, figures in report.per_dataset.items():
        if figures["accuracy"] is None:
            table.add_row(shown(name), str(figures["tested"]), "-", "-")
        else:
            spread = (
                f"{figures['mean_accuracy']:.2%} +/- {figures['std_accuracy']:.2%} "
                f"({figures['folds']} folds)"
                if figures["folds"] > 1
                else "one fold"
            )
            table.add_row(shown(name), str(figures["tested"]), f"{figures['accuracy']:.2%}", spread)
    out.print(table)


def render_crossval_run(report, failure: str | None, as_json: bool) -> None:
    """fer crossval's result: the JSON report with its files, notes (the default model) and
    error (failure), or the tables and the notes."""
    files = report.files
    notes = [report.default_model.describe()] if report.default_model else []
    if as_json:
        emit_json(
            {
                **report.to_json(),
                "files": {name: str(path) for name, path in files.items()},
                **({"notes": notes} if notes else {}),
                **({"error": failure} if failure else {}),
            }
        )
        return
    render_crossval(report, files)
    for note in notes:
        out.print(f"[yellow]note:[/yellow] {shown(note)}")


def render_crossval(report, files: dict) -> None:
    protocol = report.protocol
    kind = {
        "subject": "subject folds (no person in both train and test)",
        "dataset": "leave-one-dataset-out folds (each dataset tested by a network trained on the "
        "others)",
    }.get(protocol["group"], "random stratified folds")
    training = protocol["training"]
    out.print(
        f"[bold]protocol[/bold]: {protocol['folds']}-fold {kind}, seed {training['seed']}; "
        f"{len(report.labels)} classes ({shown(', '.join(report.labels))}); "
        f"{recipe_summary(training)}; "
        f"{report.dataset['images']} images of {shown(report.dataset['name'])}"
    )
    folds = fold_table(report)
    if "datasets" in report.dataset:
        render_sources(report.dataset["datasets"], report.labels)
    out.print(folds)
    if report.diverged_folds:
        out.print(
            f"[bold]no mean accuracy[/bold]: training diverged in {len(report.diverged_folds)} of "
            f"{len(report.folds)} folds; the figures below count only the folds that did not"
        )
    elif report.folds:
        out.print(
            f"[bold]mean accuracy {report.mean_accuracy:.2%} +/- {report.std_accuracy:.2%}[/bold] "
            f"over {len(report.folds)} folds (pooled {report.pooled_accuracy:.2%}), macro-F1 "
            f"{report.macro_f1:.3f}"
        )
    if report.per_dataset:
        render_per_dataset(report)
    render_scores(report, "per class (summed over folds)")
    for warning in report.warnings:
        out.print(f"[yellow]note:[/yellow] {warning}")
    for name, path in files.items():
        out.print(f"{name}: {shown(path)}")


def fold_table(report) -> Table:
    """One row per fold: its sizes and accuracy, with the test subjects (subject folds) and
    each dataset's accuracy (several datasets)."""
    subject_folds = report.protocol["group"] == "subject"
    table = Table(title="accuracy per fold")
    for column in ("fold", "train", "test", "accuracy"):
        table.add_column(column, justify="right")
    names = list(report.per_dataset)
    if subject_folds:
        table.add_column("test subjects", overflow="fold")
    for name in names:
        table.add_column(shown(name), justify="right", overflow="fold")
    for fold in report.folds:
        row = [
            str(fold.fold),
            str(fold.train_size),
            str(fold.test_size),
            "diverged" if fold.accuracy is None else f"{fold.accuracy:.1%}",
        ]
        if subject_folds:
            row.append(shown(", ".join(fold.test_subjects)))
        row.extend(
            f"{fold.per_dataset[name]['accuracy']:.1%}" if name in fold.per_dataset else "-"
            for name in names
        )
        table.add_row(*row)
    return table


def render_evaluation(report, split: str | None) -> None:
    """fer evaluate's tables and lines: the protocol (model, its training, the dataset and
    split, the shared classes), accuracy, per-class scores, answers, notes, files."""
    model_info = report.protocol["model"]
    trained_on = model_info.get("dataset") or {}
    networks = (
        f", an ensemble of {model_info['networks']} networks" if model_info["networks"] > 1 else ""
    )
    out.print(
        f"[bold]protocol[/bold]: model {shown(Path(model_info['path']).name)} "
        f"({recipe_summary(model_info['training'] or {})}"
        f"{networks}; trained on {trained_on.get('images', '?')} images of "
        f"{shown(trained_on.get('name', '?'))}, "
        f"data fingerprint {model_info.get('data_fingerprint') or '?'}) on "
        f"{plural(report.dataset['images'], 'image')} of "
        f"{shown(report.dataset['name'])}{f' (split {shown(split)})' if split else ''}; "
        f"{plural(len(report.labels), 'shared class')} ({shown(', '.join(report.labels))})"
    )
    if len(report.labels) == 1:
        # Every image is predicted as the one class: the figure measures nothing.
        out.print(
            f"[bold]accuracy not meaningful[/bold] with one class "
            f"({report.pooled_accuracy:.2%}: every image is predicted as {shown(report.labels[0])})"
        )
    else:
        render_evaluation_accuracy(report)
    render_scores(report, "per class")
    out.print(f"answers: {shown(describe_shares(report.answer_shares))}")
    for warning in report.warnings:
        out.print(f"[yellow]note:[/yellow] {shown(warning)}")
    for key, path in report.files.items():
        out.print(f"{key}: {shown(path)}")


def render_evaluation_accuracy(report) -> None:
    """fer evaluate's accuracy over the faces found and over every image (an image without a
    face found counted wrong), and its macro-F1."""
    every = report.all_images
    faces = report.folds[0].test_size if report.folds else 0
    f1 = f"macro-F1 {report.macro_f1:.3f}"
    if not every or every.get("images") is None:
        out.print(f"[bold]accuracy {report.pooled_accuracy:.2%}[/bold] of the faces found, {f1}")
        if every.get("note"):
            out.print(f"[yellow]note:[/yellow] {shown(every['note'])}")
        return
    if not every["without_face"]:
        out.print(
            f"[bold]accuracy {report.pooled_accuracy:.2%}[/bold] of the {plural(faces, 'image')} "
            f"(a face found in every one), {f1}"
        )
        return
    out.print(
        f"[bold]accuracy {report.pooled_accuracy:.2%}[/bold] of the {plural(faces, 'face')} "
        f"found, [bold]{every['accuracy']:.2%}[/bold] of all {plural(every['images'], 'image')} "
        f"({every['without_face']} without a face found, counted wrong), {f1}"
    )
    missing = ", ".join(
        f"{shown(label)} {count}"
        for label, count in every["without_face_per_class"].items()
        if count
    )
    out.print(f"without a face found: {missing}")


def render_scores(report, title: str) -> None:
    """The per-class table and the confusion matrix of a crossval or evaluate report."""
    classes = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "images"):
        classes.add_column(
            column, justify="left" if column == "class" else "right", overflow="fold"
        )
    for label, values in report.per_class.items():
        classes.add_row(
            shown(label),
            f"{values['precision']:.3f}",
            f"{values['recall']:.3f}",
            f"{values['f1']:.3f}",
            str(values["support"]),
        )
    out.print(classes)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("", overflow="fold")
    for label in report.labels:
        matrix.add_column(shown(label), justify="right", overflow="fold")
    for label, row in zip(report.labels, report.confusion, strict=True):
        matrix.add_row(shown(label), *(str(int(value)) for value in row))
    out.print(matrix)


def render_sweep(report) -> None:
    grid = report.grid
    out.print(
        f"[bold]sweep[/bold]: {plural(len(report.recipes), 'recipe')} x "
        f"{plural(len(grid.seeds), 'seed')} ({', '.join(map(str, grid.seeds))}) x {grid.folds} "
        f"{grid.group} folds on {plural(report.dataset['images'], 'image')} of "
        f"{shown(report.dataset['name'])}; {plural(report.trained_folds, 'fold')} trained now, "
        f"{report.stored_folds} found stored; {report.seconds:.1f} s on {report.engine['name']}"
    )
    table = Table(title="recipes, best first (accuracy: mean over seeds of the mean fold accuracy)")
    for column in ("#", "recipe", "accuracy", "spread", "F1", "vs base", "95% interval", "time"):
        table.add_column(
            column,
            justify="left" if column == "recipe" else "right",
            no_wrap=column != "recipe",
            min_width=16 if column == "recipe" else None,
            overflow="fold" if column == "recipe" else "ellipsis",
        )
    for item in report.recipes:
        d_low, d_high = item.difference_interval
        table.add_row(
            str(item.rank),
            shown(report.base if item.is_base else item.name),
            f"{item.accuracy:.2%}",
            "n/a" if math.isnan(item.spread) else f"{item.spread:.2%}",
            f"{item.macro_f1:.3f}",
            "base" if item.is_base else f"{item.difference:+.2%}",
            ""
            if item.is_base
            else "n/a"
            if math.isnan(d_low)
            else f"{d_low:+.1%} .. {d_high:+.1%}",
            f"{item.seconds:.0f} s",
        )
    out.print(table)
    out.print(
        "spread: standard deviation of the per-seed means; vs base: mean paired difference on the "
        "same "
        "(seed, fold) pairs, 95% interval from the corrected resampled t-test for repeated k-fold "
        "CV "
        "(Nadeau & Bengio 2003); time: training time of the recipe's folds"
    )
    for name, path in report.files.items():
        out.print(f"{name}: {shown(path)}")
