"""Several preprocessed datasets as one selection, for combined training and for
leave-one-dataset-out cross-validation.

Every image keeps the dataset it came from (the `origins` column), and subjects are made
unique per dataset ("jaffe:KA", "ck48:S005"): a subject name is only unique within its
dataset. The checks here refuse what would make the numbers meaningless: one dataset given
twice, the same data under two names, crops made with different preprocessing settings, and
datasets that share no class. Crops that are byte for byte in an earlier dataset too are
dropped from the later one and counted, so that no image can be on both sides of a fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fercli.core.config import PREPROCESS_SETTINGS, PreprocessConfig
from fercli.core.errors import DatasetError
from fercli.core.hashing import crop_digests, data_fingerprint
from fercli.core.labels import BASIC_LABELS, canonical_label, label_order
from fercli.data.prepared import (
    PreparedDataset,
    not_yet_preprocessed,
    resolve_dataset,
)

# Settings `fer preprocess` takes on its command line, by PreprocessConfig field, from the
# settings' own declarations (crop_size aside: preprocess_command names it always).
PREPROCESS_OPTIONS = {
    key: rule.option
    for key, rule in PREPROCESS_SETTINGS.items()
    if rule.option.startswith("--") and key != "crop_size"
}


@dataclass
class CombinedDataset(PreparedDataset):
    """Several datasets as one: the PreparedDataset columns plus the dataset of every image."""

    origins: np.ndarray | None = None  # (n,) str: short name of the dataset each image came from
    parts: list[dict] = field(
        default_factory=list
    )  # per dataset: names, fingerprint, images, classes
    notes: list[str] = field(
        default_factory=list
    )  # what a report must say (duplicates dropped, ...)

    @property
    def name(self) -> str:
        return "+".join(part["name"] for part in self.parts)

    @property
    def dataset_names(self) -> list[str]:
        return [part["name"] for part in self.parts]


def short_names(datasets: list[PreparedDataset]) -> list[str]:
    """A short, distinct name per dataset: its source folder's name ("jaffe", "ck48"), else
    its stored name; the stored name (with its id) where two source names clash."""
    names = []
    for dataset in datasets:
        source = dataset.meta.get("source")
        names.append(
            Path(source).name if isinstance(source, str) and Path(source).name else dataset.name
        )
    if len(set(names)) < len(names):
        names = [dataset.name for dataset in datasets]
    if len(set(names)) < len(names):
        names = [f"{name}-{number}" for number, name in enumerate(names, start=1)]
    return names


def preprocess_command(source: str, settings: dict, made: dict | None = None) -> str:
    """The `fer preprocess` command that makes crops of source with the given settings; made:
    the meta of a dataset already made of source, whose --face-crops the command keeps (made
    again without it, a dataset of face crops would lose those the face check turns down)."""
    defaults = PreprocessConfig().to_dict()
    options = [
        f"{option} {settings[key]}"
        for key, option in PREPROCESS_OPTIONS.items()
        if key in settings and settings[key] != defaults[key]
    ]
    # Named always: without it the size depends on the dataset's (core.recipes.auto_crop_size).
    if "crop_size" in settings:
        options.append(f"--crop-size {settings['crop_size']}")
    if made and made.get("every_image_a_face"):
        options.append("--face-crops")
    return " ".join(["fer preprocess", source, *options])


def resolve_datasets(choices: list[str]) -> list[PreparedDataset]:
    """The preprocessed datasets named on a command line (names, folders under FER_HOME, or
    the original folders), checked to be distinct and made with the same settings.
    DatasetError, one line, for the first problem found."""
    found: list[tuple[str, PreparedDataset]] = []
    missing: list[str] = []
    for choice in choices:
        if not_yet_preprocessed(choice):
            missing.append(choice)  # an original folder not yet preprocessed
            continue
        found.append((choice, resolve_dataset(choice)))
    if missing:
        # Refused rather than preprocessed here: preprocessing is its own command with its own
        # report (skipped files, contact sheet) that a user should see before training on it.
        settings = found[0][1].meta["preprocess"] if found else {}
        commands = "; ".join(f"`{preprocess_command(choice, settings)}`" for choice in missing)
        same = " with the settings of the others" if found else ""
        raise DatasetError(
            f"{', '.join(missing)}: not preprocessed yet; run {commands} first{same}"
        )
    seen: dict[Path, str] = {}
    for choice, dataset in found:
        where = Path(dataset.location).resolve()
        if where in seen:
            raise DatasetError(
                f"{seen[where]} and {choice} are the same dataset ({dataset.location}); give each "
                "dataset once"
            )
        seen[where] = choice
    fingerprints: dict[str, str] = {}
    for choice, dataset in found:
        digest = data_fingerprint(dataset.crops, dataset.labels.tolist())
        if digest in fingerprints:
            raise DatasetError(
                f"{fingerprints[digest]} and {choice} hold the same data (fingerprint {digest}): "
                "one dataset under two names; give it once"
            )
        fingerprints[digest] = choice
    first_choice, first = found[0]
    for choice, dataset in found[1:]:
        problem = settings_difference(first.meta["preprocess"], dataset.meta["preprocess"])
        if problem:
            source = dataset.meta.get("source") or choice
            raise DatasetError(
                f"{first_choice} and {choice} were preprocessed with different settings "
                f"({problem}), so their "
                "crops do not compare; run "
                f"`{preprocess_command(str(source), first.meta['preprocess'], dataset.meta)}` "
                "to make "
                f"{choice}'s crops as {first_choice}'s"
            )
    return [dataset for _, dataset in found]


def settings_difference(first: dict, second: dict) -> str | None:
    """How two datasets' preprocessing settings differ, as "equalization face against
    midpoint"; None when they make the same crops."""
    one, other = PreprocessConfig.from_dict(first), PreprocessConfig.from_dict(second)
    if one.fingerprint() == other.fingerprint():
        return None
    mine, theirs = one.to_dict(), other.to_dict()
    return ", ".join(
        f"{key} {mine[key]} against {theirs[key]}" for key in mine if mine[key] != theirs[key]
    )


def combined_classes(
    names: list[str], class_sets: list[set[str]], classes: tuple[str, ...], shared_classes: bool
) -> list[str]:
    """The classes a combination keeps: the named ones, the shared ones, or all when every
    dataset has the same. DatasetError for classes only some datasets have (unless named),
    unknown names, or datasets without a shared class."""
    every = set().union(*class_sets)
    shared = set.intersection(*class_sets)
    having = "; ".join(
        f"{name} has {', '.join(label_order(labels))}"
        for name, labels in zip(names, class_sets, strict=True)
    )
    if classes and shared_classes:
        raise DatasetError("give --classes or --shared-classes, not both")
    if classes:
        wanted = [canonical_label(name) for name in classes]
        unknown = [name for name, label in zip(classes, wanted, strict=True) if label not in every]
        if unknown:
            raise DatasetError(f"unknown class {', '.join(map(repr, unknown))}: {having}")
        chosen = label_order(set(wanted))
    elif shared_classes:
        chosen = label_order(shared)
    elif shared != every:
        having = {
            label: ", ".join(
                name for name, labels in zip(names, class_sets, strict=True) if label in labels
            )
            for label in label_order(every - shared)
        }
        only = "; ".join(f"{label} ({names_of} only)" for label, names_of in having.items())
        # The paper's classes any dataset has, each learnt from the datasets that have it: what a
        # general model (fer2013/train with ck48/, which has no neutral) wants, spelt out.
        basic = [label for label in BASIC_LABELS if label in every]
        naming = (
            f"--classes (--classes {','.join(basic)}: each from the datasets that have it)"
            if set(basic) - shared
            else "--classes"
        )
        raise DatasetError(
            f"classes in only some datasets: {only}; keep the classes all datasets have with "
            f"--shared-classes ({', '.join(label_order(shared)) or 'none'}) or name them with "
            f"{naming}"
        )
    else:
        chosen = label_order(every)
    if not shared & set(chosen):
        raise DatasetError(
            f"the datasets share no class{' among those chosen' if classes else ''}: {having}"
        )
    return chosen


def combine(
    datasets: list[PreparedDataset], classes: tuple[str, ...] = (), shared_classes: bool = False
) -> CombinedDataset:
    """One selection from several datasets (see the module's docstring).

    classes: keep these (a class may come from some datasets only); shared_classes: keep the
    classes every dataset has. Without either, the datasets must have the same classes.
    """
    if len(datasets) < 2:
        raise DatasetError("combining needs at least two datasets")
    names = short_names(datasets)
    class_sets = [set(dataset.labels.tolist()) for dataset in datasets]
    chosen = combined_classes(names, class_sets, classes, shared_classes)
    seen: set[bytes] = set()
    columns: dict[str, list[np.ndarray]] = {
        "crops": [],
        "labels": [],
        "subjects": [],
        "paths": [],
        "origins": [],
        "sources": [],
    }
    parts, notes = [], []
    for name, dataset in zip(names, datasets, strict=True):
        keep, dropped = _new_rows(name, dataset, chosen, seen)
        if dropped:
            notes.append(
                f"{dropped} crops of {name} are also in an earlier dataset (the same images): "
                f"dropped from {name}, so that no image is on both sides of a fold"
            )
        subjects = dataset.subjects[keep]
        columns["crops"].append(dataset.crops[keep])
        columns["labels"].append(dataset.labels[keep])
        columns["subjects"].append(
            np.array(
                [f"{name}:{subject}" if subject else "" for subject in subjects.tolist()], dtype=str
            )
        )
        columns["paths"].append(dataset.paths[keep])
        columns["origins"].append(np.full(int(keep.sum()), name))
        if dataset.sources is not None:
            columns["sources"].append(dataset.sources[keep])
        parts.append(_part(name, dataset, keep, chosen, dropped))
    notes += _missing_class_notes(parts, chosen)
    labels = np.concatenate(columns["labels"])
    return CombinedDataset(
        crops=np.concatenate(columns["crops"]),
        labels=labels,
        subjects=np.concatenate(columns["subjects"]),
        paths=np.concatenate(columns["paths"]),
        meta={
            "layout": "combined",
            "source": None,
            "preprocess": datasets[0].meta["preprocess"],
            "preprocess_fingerprint": datasets[0].meta.get("preprocess_fingerprint"),
            "classes": {label: int(np.count_nonzero(labels == label)) for label in chosen},
            "datasets": parts,
        },
        # Only where every dataset has them: a row without its file's digest has none to give.
        sources=(
            np.concatenate(columns["sources"]) if len(columns["sources"]) == len(datasets) else None
        ),
        origins=np.concatenate(columns["origins"]),
        parts=parts,
        notes=notes,
    )


def _new_rows(
    name: str, dataset: PreparedDataset, chosen: list[str], seen: set[bytes]
) -> tuple[np.ndarray, int]:
    """The rows of a dataset a combination keeps: of the chosen classes, and not byte for byte
    in an earlier dataset (seen: the digests of the earlier datasets' crops, this one's added);
    with the count of chosen rows dropped as such duplicates. DatasetError when none is left."""
    digests = [row.tobytes() for row in crop_digests(dataset.crops, 32)]
    duplicate = np.array([digest in seen for digest in digests], dtype=bool)
    seen.update(digests)
    wanted = np.isin(dataset.labels, chosen)
    keep = wanted & ~duplicate
    if not keep.any():
        reason = (
            "are all in an earlier dataset"
            if wanted.any()
            else f"include none of {', '.join(chosen)}"
        )
        raise DatasetError(f"{name}: its images {reason}; leave it out")
    return keep, int(np.count_nonzero(wanted & duplicate))


def _part(
    name: str, dataset: PreparedDataset, keep: np.ndarray, chosen: list[str], dropped: int
) -> dict:
    """What a combination says of one of its datasets (CombinedDataset.parts): names, where,
    fingerprint, and the images, subjects and classes it gave."""
    kept = dataset.labels[keep].tolist()
    return {
        "name": name,
        "dataset": dataset.name,
        "path": str(dataset.location),
        "source": dataset.meta.get("source"),
        "layout": dataset.meta.get("layout"),
        "fingerprint": data_fingerprint(dataset.crops, dataset.labels.tolist()),
        "images": int(keep.sum()),
        "subjects": len(set(dataset.subjects[keep].tolist()) - {""}),
        "classes": {label: kept.count(label) for label in chosen if label in kept},
        "duplicates_dropped": dropped,
    }


def _missing_class_notes(parts: list[dict], chosen: list[str]) -> list[str]:
    """A note for each chosen class that some of the datasets do not give."""
    notes = []
    for label in chosen:
        without = [part["name"] for part in parts if label not in part["classes"]]
        if without:
            notes.append(
                f"class {label} comes from "
                f"{', '.join(p['name'] for p in parts if label in p['classes'])} "
                f"only ({', '.join(without)} has none)"
            )
    return notes


def load_combined(
    choices: list[str],
    classes: tuple[str, ...] = (),
    shared_classes: bool = False,
    part: Callable[[PreparedDataset], PreparedDataset] | None = None,
) -> PreparedDataset:
    """What train and crossval use for their DATASET arguments: the one dataset named (or the
    most recent), or several combined. --shared-classes on one dataset changes nothing.
    part: what of each dataset to take (fer train: its training split), before combining."""
    take = part or (lambda dataset: dataset)
    if len(choices) <= 1:
        return take(resolve_dataset(choices[0] if choices else None))
    return combine(
        [take(dataset) for dataset in resolve_datasets(choices)], classes, shared_classes
    )
