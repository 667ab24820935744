"""fer preprocess, fer list, fer remove: parse, call the library, hand the result to
render_data."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
import typer.core
import typer.rich_utils

from fercli.cli.app import (
    Equalization,
    Framing,
    Layout,
    emit_json,
    fail,
    out,
    progress_bar,
    shown,
    user_errors,
)
from fercli.cli.options import FaceCropsOption
from fercli.cli.render_data import render_inventory, render_preprocess, size_text
from fercli.core.config import PREPROCESS_SETTINGS

# --crop-size's range, as PreprocessConfig declares it.
CROP_SIZE_RULE = PREPROCESS_SETTINGS["crop_size"]


def preprocess(
    dataset_dir: Path = typer.Argument(
        ...,
        metavar="DATASET_DIR",
        help="The dataset folder (JAFFE, a CK+ tree, or <class>/<image> folders).",
    ),
    layout: Layout | None = typer.Option(None, help="Force a layout (default: detected)."),
    ck_frames: int = typer.Option(
        3, help="CK+ tree: last frames of each labelled sequence to take."
    ),
    ck_neutral: bool = typer.Option(
        False, help="CK+ tree: also take each labelled sequence's first frame as neutral."
    ),
    min_face_score: float = typer.Option(
        0.3, help="dlib detection score a face needs (lower finds more, and more false faces)."
    ),
    crop_size: int | None = typer.Option(
        None,
        min=int(CROP_SIZE_RULE.low or 0),
        max=int(CROP_SIZE_RULE.high or 0),
        show_default=False,
        help="Side of the square crops, in pixels. Default: the paper's 32, or 48 for a "
        "dataset of 5,000 images or more (FER2013), where it keeps more of the faces' detail "
        "for about 1.5-1.8 times the training time.",
    ),
    equalization: Equalization = typer.Option(
        Equalization.face,
        help="Contrast equalization: face (the paper's histogram equalization, "
        "counting only pixels inside the photo), midpoint, clahe, whole or none.",
    ),
    framing: Framing = typer.Option(
        Framing.paper,
        help="How the crop frames the level face: paper (from above the eyebrows to the "
        "chin, jaw to jaw) or wide (a square 2.7 eye distances a side around the eyes, "
        "forehead and outline included, as FER2013 frames its faces).",
    ),
    face_crops: bool = FaceCropsOption,
    workers: int | None = typer.Option(
        None, min=1, help="Processes to align with (default: one per core)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Align every face of a dataset and cache the 32x32 crops (48x48 from 5,000 images;
    --crop-size) for train and crossval."""
    with user_errors(as_json):
        from fercli.api import prepare_dataset
        from fercli.core.config import PreprocessConfig, ScanConfig

        options = ScanConfig(
            layout=layout and layout.value, ck_frames=ck_frames, ck_neutral_first=ck_neutral
        )
        sized = {} if crop_size is None else {"crop_size": crop_size}
        config = PreprocessConfig(
            min_face_score=min_face_score,
            equalization=equalization.value,
            framing=framing.value,
            **sized,
        )
        bar, update = progress_bar("aligning")
        with bar if not as_json else contextlib.nullcontext():
            report = prepare_dataset(
                dataset_dir,
                options,
                config,
                workers,
                progress=None if as_json else update,
                size_by_images=crop_size is None,
                face_crops=face_crops,
            )
    failure = (
        f"{dataset_dir}: no image could be aligned ({len(report.skipped)} skipped)"
        if report.aligned == 0
        else None
    )
    if as_json:
        emit_json({**report.to_json(), **({"error": failure} if failure else {})})
    else:
        render_preprocess(report)
    if failure:
        raise fail(failure)


def list_entries(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """What FER_HOME holds: datasets, models (with their cross-validation score) and runs."""
    with user_errors(as_json):
        from fercli.api import list_home

        inventory = list_home()
    if as_json:
        emit_json(inventory.to_json())
    else:
        render_inventory(inventory)


def remove(
    names: list[str] = typer.Argument(
        ...,
        metavar="NAMES...",
        help="Datasets, models or runs, as fer list names them (or their paths; a model by its "
        "whole name; a pattern such as 'evaluate-*' in quotes).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Delete datasets, models or runs (crossval, evaluate, sweep) from FER_HOME, saying how much
    was freed; every name is checked before anything is deleted."""
    with user_errors(as_json):
        from fercli.api import remove_entries

        removed = remove_entries(names)
    if as_json:
        emit_json(
            {
                "removed": [entry.to_json() for entry in removed],
                "freed": sum(entry.size for entry in removed),
            }
        )
        return
    for entry in removed:
        out.print(f"removed {entry.kind} {shown(entry.path)} ({size_text(entry.size)})")
    if len(removed) > 1:
        out.print(f"{size_text(sum(entry.size for entry in removed))} freed")
