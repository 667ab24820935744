"""What fer preprocess, fer list and fer remove print: tables and lines, no work."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table

from fercli.cli.app import out, shown
from fercli.cli.render_media import plural


def render_preprocess(report) -> None:
    table = Table(
        title=f"fer preprocess {shown(report.source)} ({report.layout})", show_header=False
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("images found", str(report.found))
    table.add_row("aligned", str(report.aligned))
    table.add_row("skipped", str(sum(not item.folder for item in report.skipped)))
    table.add_row("from cache", str(report.cache_hits))
    table.add_row("time", f"{report.seconds:.2f} s ({plural(report.workers, 'worker')})")
    out.print(table)
    classes = Table(title="aligned per class")
    classes.add_column("class", overflow="fold")
    classes.add_column("images", justify="right")
    for label, count in report.classes.items():
        classes.add_row(shown(label), str(count))
    out.print(classes)
    render_edges(report.edges)
    if report.subjects:
        listing = ", ".join(f"{subject} {count}" for subject, count in report.subjects.items())
        out.print(f"[bold]aligned per subject[/bold] ({len(report.subjects)}): {shown(listing)}")
    for note in report.notes:
        out.print(f"note: {shown(note)}")
    render_skipped(report.skipped, report.found)
    if report.dataset:
        out.print(f"dataset: {shown(report.dataset)}")
    if report.contact_sheet:
        out.print(f"contact sheet: {shown(report.contact_sheet)}")


def render_edges(edges: dict) -> None:
    """Per class: crops that pass the photo's edge (and how much of them was filled in) and
    saturated crops; nothing when there are none."""
    shown_classes = {
        label: values for label, values in edges.items() if values["padded"] or values["saturated"]
    }
    if not shown_classes:
        return
    table = Table(
        title="crops past the photo's edge (filled in) and saturated crops (>10% of pixels >= 250)"
    )
    for column in ("class", "past the edge", "mean share filled", "saturated"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, values in shown_classes.items():
        table.add_row(
            shown(label),
            f"{values['padded']} of {values['crops']}",
            f"{values['mean_padding']:.1%}",
            str(values["saturated"]),
        )
    out.print(table)


def render_skipped(skipped: list, found: int, limit: int = 50) -> None:
    """The first limit skipped files with their reasons, and how many were skipped."""
    for item in skipped[:limit]:
        out.print(f"[yellow]skipped[/yellow] {shown(item.path)}: {shown(item.reason)}")
    if len(skipped) > limit:
        out.print(
            f"... and {len(skipped) - limit} more skipped (all of them: fer preprocess --json)"
        )
    files = sum(not item.folder for item in skipped)
    folders = len(skipped) - files  # loops, repeats, unreadable: no images among those found
    counts = [
        f"{files} of {found} skipped" if files else "",
        f"{plural(folders, 'folder')} not read" if folders else "",
    ]
    if skipped:
        out.print("; ".join(filter(None, counts)))


def render_inventory(inventory) -> None:
    """fer list: a table each of the datasets, models and runs under FER_HOME (the defaults
    fer train and fer predict take named under theirs), then the space it all takes."""
    now = time.time()
    if not (inventory.datasets or inventory.models or inventory.runs):
        out.print(f"no datasets, models or runs in {shown(inventory.home)} yet")
    for title, columns, entries, cells in _inventory_tables(inventory):
        if not entries:
            continue
        out.print(_inventory_table(title, columns, entries, cells, now))
        _render_default(title, inventory, entries)
    other = ", ".join(f"{name} {size_text(size)}" for name, size in inventory.other.items())
    out.print(
        f"{shown(inventory.home)}: {size_text(inventory.total)} in all ({other}); "
        "remove an entry with fer remove NAME"
    )


def _inventory_tables(inventory) -> list[tuple[str, list[str], list, Callable[[dict], list[str]]]]:
    """Per table of fer list: its title, columns, entries, and the cells between an entry's
    name and its age and size."""
    return [
        (
            "datasets",
            ["name", "images", "classes", "age", "size"],
            inventory.datasets,
            _dataset_cells,
        ),
        (
            "models",
            ["name", "dataset", "recipe", "crossval", "age", "size"],
            inventory.models,
            _model_cells,
        ),
        (
            "runs",
            ["name", "dataset", "folds", "accuracy", "age", "size"],
            inventory.runs,
            _run_entry_cells,
        ),
    ]


def _inventory_table(
    title: str, columns: list[str], entries: list, cells: Callable[[dict], list[str]], now: float
) -> Table:
    """One table of fer list: a row per entry, an unreadable entry's error in place of its
    cells."""
    table = Table(title=title)
    for column in columns:
        # Names whole on one line, however narrow the terminal: they are copied into
        # fer remove.
        table.add_column(
            column,
            overflow="fold",
            no_wrap=column == "name",
            justify="right" if column in ("images", "size") else "left",
        )
    for entry in entries:
        middle = (
            cells(entry.details)
            if "error" not in entry.details
            else [f"unreadable: {shown(entry.details['error'])}", *[""] * (len(columns) - 4)]
        )
        table.add_row(shown(entry.name), *middle, age(now - entry.modified), size_text(entry.size))
    return table


def _render_default(title: str, inventory, entries: list) -> None:
    """Under the datasets, the one fer train uses; under the models, the one fer predict uses."""
    if title == "datasets" and inventory.default_dataset:
        out.print(f"fer train uses {shown(inventory.default_dataset)} (newest preprocessed)")
    if title == "models" and inventory.default_model:
        # A newer file that cannot be read is passed over (and listed as unreadable).
        which = (
            "the newest" if entries[-1].name == inventory.default_model else "the newest readable"
        )
        out.print(f"fer predict uses {shown(inventory.default_model)} ({which})")


def _dataset_cells(details: dict) -> list[str]:
    """A dataset's images and classes cells (fer evaluate's test sets marked as such)."""
    classes = shown(", ".join(details.get("classes") or {}))
    if details.get("made_by") == "evaluate":
        classes += " (fer evaluate's test set)"
    return [str(details.get("images", "")), classes]


def _model_cells(details: dict) -> list[str]:
    """A model's dataset, recipe and cross-validation score cells."""
    return [
        shown(details.get("dataset") or "?"),
        shown(details.get("recipe", "")),
        crossval_score(details.get("crossval")),
    ]


def _run_entry_cells(details: dict) -> list[str]:
    """A run's dataset, folds and accuracy cells."""
    return [shown(details.get("dataset") or "?"), *run_cells(details)]


def run_cells(details: dict) -> list[str]:
    """A run's folds and accuracy cells: a cross-validation's, an evaluation's (one test, no
    spread) or a sweep's (its progress, and its best recipe once finished)."""
    kind = details.get("run")
    if kind == "evaluate":
        how = "fer evaluate --adapt" if details.get("adapted") else "fer evaluate"
        figure = percent(details.get("pooled_accuracy"), None)
        if details.get("classes") == 1:
            # Every image is said to be the one class: the figure measures nothing.
            figure += " (one class: not meaningful)"
        return [f"one test ({how})", figure]
    if kind == "sweep":
        size = f"sweep: {plural(details['recipes'], 'recipe')} x {plural(details['seeds'], 'seed')}"
        if not details["finished"]:
            done = f"{details['folds']} of {details['planned_folds']} folds"
            return [f"{size}, {done} (unfinished)", "-"]
        best = details["best"]
        return [size, f"best {shown(best['recipe'])}: {best['accuracy']:.1%}"]
    folds = f"{details.get('folds')} {details.get('group')}"
    if details.get("interrupted"):
        if not details.get("folds"):
            return [f"none of {details.get('planned_folds')} (interrupted)", "-"]
        folds = f"{details.get('folds')} of {details.get('planned_folds')} (interrupted)"
    return [folds, percent(details.get("mean_accuracy"), details.get("std_accuracy"))]


def crossval_score(crossval: dict | None) -> str:
    if not crossval:
        return "-"
    figures = percent(crossval["mean_accuracy"], crossval["std_accuracy"])
    return f"{figures} ({crossval['folds']} {crossval['group']} folds)"


def percent(mean: float | None, std: float | None) -> str:
    """A mean accuracy and the spread of its folds (none for a single test)."""
    if mean is None:
        return "-"
    return f"{mean:.1%}" if std is None else f"{mean:.1%} +/- {std:.1%}"


def age(seconds: float) -> str:
    """A duration in the largest whole unit: '40 s', '5 min', '3 h', '12 d'."""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit}"
    return f"{max(0, int(seconds))} s"


def size_text(size: int) -> str:
    """Bytes for people: '812 B', '2.4 kB', '66.1 MB'."""
    for unit, length in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= length:
            return f"{size / length:.1f} {unit}"
    return f"{size} B"
