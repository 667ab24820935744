"""where.png of fer crossval and fer evaluate: per class, where the network looked on the test
faces of that class, and on those it got wrong.

Each test face is explained (fercli.infer.explain: occlusion with a grey patch) by a network
that never trained on it: in a cross-validation the network of the fold that tested it, in an
evaluation the model evaluated. The map of a face is that of the class the network predicted
for it (what it looked at to decide, right or wrong). The cost is bounded: at most
WHERE_FACES faces per class and row, spread evenly over the class's test faces, each
explained by one network (an ensemble's map is the mean of its networks' maps, so an
evaluated ensemble's faces take its networks in turn: the mean over faces then estimates the
ensemble's at the cost of one network)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from fercli.infer.explain import PATCH, STRIDE, grey_crop, occlusion_maps
from fercli.infer.model import FerModel, Member

if TYPE_CHECKING:
    from fercli.learn.folds import FoldOutcome
    from fercli.learn.selection import Selection

# Faces per class and row (all test faces, faces got wrong): 16 faces of 7 classes cost about
# 4 s of CPU with one paper network (bench/explain.py: 34 ms a face).
WHERE_FACES = 8
# The rows of where.png: which test faces of each class are averaged.
ROWS = ("all", "wrong")

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class WhereMaps:
    """Per row (ROWS) and class: the mean crop and mean map of the faces averaged, with how
    many were averaged of how many there were (and, for faces got wrong, what they were taken
    for)."""

    labels: list[str]
    rows: dict[str, dict[str, dict]] = field(default_factory=dict)
    faces_per_class: int = WHERE_FACES
    seconds: float = 0.0
    note: str = ""

    def to_json(self) -> dict:
        """What report.json says of where.png: the method and each tile's face counts."""
        return {
            "file": "where.png",
            "method": f"occlusion, {PATCH}x{PATCH} grey patch, stride {STRIDE}; map of the "
            "predicted class, averaged over the faces",
            "faces_per_class": self.faces_per_class,
            "note": self.note,
            "seconds": round(self.seconds, 2),
            "rows": {
                row: {
                    label: {key: entry[key] for key in ("faces", "of", "taken_for")}
                    for label, entry in entries.items()
                }
                for row, entries in self.rows.items()
            },
        }


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """At most count of indices, evenly spread over them (in dataset order: over subjects)."""
    if len(indices) <= count:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))]


def where_maps(
    crops: np.ndarray,
    targets: np.ndarray,
    predicted: np.ndarray,
    labels: list[str],
    tested_by: np.ndarray,
    networks: Sequence[tuple[Predict, np.ndarray | None]],
    faces: int = WHERE_FACES,
    note: str = "",
) -> WhereMaps:
    """The where.png figures of test faces: crops (n, s, s) uint8, their true and predicted
    class numbers into labels, and tested_by, for each face the number of the network (into
    networks: (predict, grey) pairs) that explains it, or -1 for a face without one."""
    started = time.perf_counter()
    chosen = {}
    for number, label in enumerate(labels):
        mine = (targets == number) & (tested_by >= 0)
        chosen[("all", label)] = _spread(np.flatnonzero(mine), faces)
        chosen[("wrong", label)] = _spread(np.flatnonzero(mine & (predicted != number)), faces)
    needed = np.unique(np.concatenate([np.zeros(0, int), *chosen.values()]))
    face_maps: dict[int, np.ndarray] = {}
    for network, (predict, grey) in enumerate(networks):
        mine = needed[tested_by[needed] == network].astype(int)
        if len(mine):
            _, maps = occlusion_maps(predict, crops[mine], grey, PATCH, STRIDE)
            for index, own in zip(mine, maps, strict=True):
                face_maps[int(index)] = own[predicted[index]]
    result = WhereMaps(labels=list(labels), faces_per_class=faces, note=note)
    for row in ROWS:
        result.rows[row] = {}
        for number, label in enumerate(labels):
            indices = chosen[(row, label)]
            if not len(indices):
                continue
            pool = (targets == number) & (tested_by >= 0)
            if row == "wrong":
                pool &= predicted != number
            result.rows[row][label] = {
                "face": np.round(crops[indices].mean(axis=0)).astype(np.uint8),
                "map": np.mean([face_maps[int(index)] for index in indices], axis=0),
                "faces": len(indices),
                "of": int(pool.sum()),
                "taken_for": dict(Counter(labels[predicted[i]] for i in indices).most_common())
                if row == "wrong"
                else {},
            }
    result.seconds = time.perf_counter() - started
    return result


def crossval_where(
    selection: Selection, outcomes: dict[int, FoldOutcome], flip: bool
) -> WhereMaps | None:
    """where_maps of a cross-validation: each test face explained by its fold's network (the
    one that did not train on it); None when no fold has an exported network (every fold
    diverged, or --normalisation per-dataset, whose networks exist only inside their fold)."""
    from fercli.infer.runtime import NumpyNetwork

    count = len(selection.targets)
    tested_by = np.full(count, -1)
    predicted = np.full(count, -1)
    networks: list[tuple[Predict, np.ndarray | None]] = []
    for index in sorted(outcomes):
        outcome = outcomes[index]
        if outcome.diverged or outcome.export is None:
            continue
        network = outcome.export.network
        member = Member(
            NumpyNetwork(network.specs, network.weights),
            network.mean,
            network.std,
            network.per_image,
        )
        tested_by[outcome.test_index] = len(networks)
        predicted[outcome.test_index] = outcome.predicted
        grey = grey_crop([network.mean], selection.crops.shape[1], network.per_image)
        networks.append((partial(member.predict_proba, flip=flip), grey))
    if not networks:
        return None
    return where_maps(
        selection.crops,
        selection.targets,
        predicted,
        selection.labels,
        tested_by,
        networks,
        note="each face explained by the network of the fold that tested it",
    )


def model_where(
    model: FerModel,
    crops: np.ndarray,
    targets: np.ndarray,
    predicted: np.ndarray,
    shared: list,
    model_names: list | None = None,
) -> WhereMaps:
    """where_maps of an evaluation: the model's probabilities of the shared classes,
    renormalised as the evaluation's are; an ensemble's faces take its networks in turn.
    model_names: the model's own names of the shared classes, where they differ (aliases)."""
    columns = [model.classes.index(label) for label in model_names or shared]
    flip = bool(model.meta.get("test_time_flip"))

    def renormalised(member: Member, batch: np.ndarray) -> np.ndarray:
        raw = member.predict_proba(batch, flip)[:, columns]
        total = raw.sum(axis=1, keepdims=True)
        return np.where(total > 0, raw / np.where(total > 0, total, 1), 1 / len(shared))

    members = model.networks
    networks = [
        (
            partial(renormalised, member),
            grey_crop([member.mean], crops.shape[1], member.per_image, member.pixel_map),
        )
        for member in members
    ]
    note = (
        f"an ensemble of {len(members)}: each face explained by one of its networks in turn"
        if len(members) > 1
        else "each face explained by the model evaluated"
    )
    tested_by = np.arange(len(crops)) % len(members)
    return where_maps(crops, targets, predicted, shared, tested_by, networks, note=note)
