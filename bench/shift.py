"""A development protocol for dataset shift: held-out people under a simulated other camera
and other crop. A PROXY: the same dataset, the same kind of people, the same lab, with the
camera and the crop changed by simulation only. The held-out datasets (JAFFE, the outside copy
of CK+48) are the judge; figures from here only rank recipes for trying there.

Per seed, the subjects of CK+48 are split at random into training subjects (75%) and
held-out subjects (25%); a network is trained on every crop of the training subjects and
tested on the held-out subjects' photos as they are ("clean") and under each shift:

    photometric, applied to the source photo before fercli's whole pipeline (face detection,
    landmarks, alignment, equalization), as another camera would:
        gamma-0.6, gamma-1.6          grey levels to the power gamma
        contrast-0.6, contrast-1.4    deviations from the photo's mean grey scaled
        blur-1.2                      Gaussian blur, sigma 1.2 photo pixels (~1 crop pixel)
        jpeg-30                       JPEG quality 30
        noise-8                       Gaussian noise, sigma 8 grey levels
    geometric, the crop box changed in the photo's (eye-levelled) geometry:
        scale-0.9, scale-1.15         the box scaled about its centre
        dx+3, dy-3, dy+3              the box moved by 3/32 of its width or height
    another equalization of the crops (the training crops keep the recipe's):
        eq-clahe, eq-none

Reported per recipe: the accuracy on each shift, the mean over the shifts (clean excluded),
and the answer share of the most frequent predicted class (collapse: the true share of the
largest class among the held-out photos is printed beside it), each the mean over seeds.
Where a shifted photo has no face found, the clean photo's detection box is used (counted).

    python bench/shift.py CK48_DIR --recipe "paper=recipe=paper" \\
        --recipe "best=recipe=best" [--recipe "NAME=key=value,..."] [--seeds 0,1,2] \\
        [--home /tmp/fer-shift] [--output bench/results/shift.json]

A recipe is NAME=key=value,... : "recipe" names a preset (core.recipes.RECIPES); other keys are
TrainConfig or PreprocessConfig fields (values read as JSON, else as text). Each run (recipe,
seed) is appended to HOME/shift-runs.jsonl as it finishes and not repeated, so a killed bench
resumes. Development data only: the photos' crops stay in memory and under HOME; the output
file holds numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

TEST_SHARE = 0.25


def gamma(value: float) -> Callable:
    lut = np.clip(np.round(255 * (np.arange(256) / 255) ** value), 0, 255).astype(np.uint8)
    return lambda gray, rng: lut[gray]


def contrast(factor: float) -> Callable:
    def apply(gray: np.ndarray, rng) -> np.ndarray:
        mean = gray.mean()
        return np.clip(np.round(mean + factor * (gray - mean)), 0, 255).astype(np.uint8)

    return apply


def blur(sigma: float) -> Callable:
    return lambda gray, rng: cv2.GaussianBlur(gray, (0, 0), sigma)


def jpeg(quality: int) -> Callable:
    def apply(gray: np.ndarray, rng) -> np.ndarray:
        _, data = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)

    return apply


def noise(sigma: float) -> Callable:
    def apply(gray: np.ndarray, rng) -> np.ndarray:
        noisy = gray + rng.normal(0, sigma, gray.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    return apply


@dataclass(frozen=True)
class Shift:
    """One simulated change: of the photo, of the crop box (scale, dx, dy in box
    fractions), or of the equalization."""

    photo: Callable | None = None
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    equalization: str | None = None


SHIFTS: dict[str, Shift] = {
    "clean": Shift(),
    "scale-0.9": Shift(scale=0.9),
    "scale-1.15": Shift(scale=1.15),
    "dx+3": Shift(dx=3 / 32),
    "dy-3": Shift(dy=-3 / 32),
    "dy+3": Shift(dy=3 / 32),
    "gamma-0.6": Shift(photo=gamma(0.6)),
    "gamma-1.6": Shift(photo=gamma(1.6)),
    "contrast-0.6": Shift(photo=contrast(0.6)),
    "contrast-1.4": Shift(photo=contrast(1.4)),
    "blur-1.2": Shift(photo=blur(1.2)),
    "jpeg-30": Shift(photo=jpeg(30)),
    "noise-8": Shift(photo=noise(8.0)),
    "eq-clahe": Shift(equalization="clahe"),
    "eq-none": Shift(equalization="none"),
}


@dataclass
class Photos:
    """The CK+48 photos: decoded grey images, labels, subjects, and each one's clean face
    detection box (left, top, right, bottom)."""

    grays: list[np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    boxes: list[tuple[int, int, int, int]]


def load_photos(folder: Path) -> Photos:
    """Every photo of the folder with a face found (fercli's detector and settings)."""
    from fercli.core.config import PreprocessConfig
    from fercli.data.datasets import scan_dataset
    from fercli.faces.align import detect_faces
    from fercli.media.images import decode_gray, read_file

    scan = scan_dataset(folder)
    grays, labels, subjects, boxes = [], [], [], []
    for record in scan.records:
        gray = decode_gray(read_file(record.path))
        found = detect_faces(gray, PreprocessConfig())
        if not found:
            continue
        box = found[0][0]
        grays.append(gray)
        labels.append(record.label)
        subjects.append(record.subject)
        boxes.append((box.left(), box.top(), box.right(), box.bottom()))
    print(f"{len(grays)} of {len(scan.records)} photos with a face", flush=True)
    return Photos(grays, np.array(labels), np.array(subjects), boxes)


def shifted_crops(photos: Photos, preprocess, shift: Shift, seed: int = 7) -> tuple:
    """The crops of every photo under a shift, made as fercli makes them; (crops, fallbacks:
    photos whose shifted version had no face found, aligned with the clean box)."""
    import dlib

    from fercli.faces.align import (
        crop_transform,
        detect_faces,
        equalize,
        inside_photo,
        landmark_predictor,
    )

    rng = np.random.default_rng(seed)
    grays = [shift.photo(gray, rng) if shift.photo else gray for gray in photos.grays]
    boxes, fallbacks = [], 0
    for gray, clean in zip(grays, photos.boxes, strict=True):
        found = detect_faces(gray, preprocess) if shift.photo else []
        if found:
            boxes.append(found[0][0])
        else:
            fallbacks += bool(shift.photo)
            boxes.append(dlib.rectangle(*clean))
    points = landmark_predictor().predict_many(list(zip(grays, boxes, strict=True)))
    equalization = shift.equalization or preprocess.equalization
    size = preprocess.crop_size
    crops = np.empty((len(grays), size, size), np.uint8)
    for index, (gray, landmarks) in enumerate(zip(grays, points, strict=True)):
        transform, (width, height), _ = crop_transform(landmarks.astype(np.float64), preprocess)
        # The box scaled about its centre and moved, in the eye-levelled geometry.
        new_width, new_height = width * shift.scale, height * shift.scale
        left = (width - new_width) / 2 + shift.dx * width
        top = (height - new_height) / 2 + shift.dy * height
        moved = transform.copy()
        moved[:, 2] -= (left, top)
        box = (max(1, round(new_width)), max(1, round(new_height)))
        face = cv2.warpAffine(
            gray, moved, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        face = equalize(face, inside_photo(moved, box, gray.shape), equalization)
        crops[index] = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    return crops, fallbacks


def parse_recipe(text: str):
    """NAME=key=value,... -> (name, TrainConfig overrides with "recipe", PreprocessConfig
    overrides)."""
    from fercli.core.config import PreprocessConfig

    name, _, body = text.partition("=")
    preprocess_keys = {item.name for item in fields(PreprocessConfig)}
    train, preprocess = {"recipe": "paper"}, {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        (preprocess if key in preprocess_keys else train)[key] = value
    return name, train, preprocess


def subject_split(subjects: np.ndarray, seed: int) -> np.ndarray:
    """True for the photos of the held-out subjects of this seed."""
    people = np.array(sorted(set(subjects.tolist())))
    rng = np.random.default_rng(10_000 + seed)
    held = rng.choice(people, round(TEST_SHARE * len(people)), replace=False)
    return np.isin(subjects, held)


def run(
    photos: Photos,
    train: dict,
    preprocess_overrides: dict,
    seed: int,
    crops_for,
    adapt: bool = False,
) -> dict:
    """Train one network on the training subjects of a seed; its figures on every shift (with
    adapt: also those of the network adapted to each shifted test set, fercli.infer.adapt)."""
    from fercli.core.config import PreprocessConfig
    from fercli.core.labels import label_order
    from fercli.core.recipes import recipe_config
    from fercli.learn.fitting import fit, keras_probabilities

    settings = dict(train)
    config = recipe_config(settings.pop("recipe"), seed=seed, **settings)
    preprocess = replace(PreprocessConfig(), **preprocess_overrides)
    labels = label_order(set(photos.labels.tolist()))
    targets = np.array([labels.index(label) for label in photos.labels])
    held = subject_split(photos.subjects, seed)
    clean = crops_for(preprocess, "clean")
    started = time.perf_counter()
    fitted = fit(clean[~held], targets[~held], len(labels), config, seed)
    model, mean, std = fitted.model, fitted.mean, fitted.std
    seconds = time.perf_counter() - started
    row = {"seed": seed, "train_images": int((~held).sum()), "test_images": int(held.sum())}
    row["seconds"] = round(seconds, 1)
    truth = targets[held]
    row["largest_true_share"] = float(np.bincount(truth).max() / len(truth))
    row["shifts"] = {}
    for name in SHIFTS:
        crops = crops_for(preprocess, name)[held]
        per_image = config.normalisation == "image"
        probabilities = keras_probabilities(
            model, crops, mean, std, config.test_time_flip, per_image
        )
        predicted = probabilities.argmax(1)
        row["shifts"][name] = {
            "accuracy": float(np.mean(predicted == truth)),
            "top_share": float(np.bincount(predicted).max() / len(predicted)),
        }
        if adapt:
            adapted = adapted_predictions(model, mean, std, config, preprocess, labels, crops)
            row["shifts"][name]["adapted_accuracy"] = float(np.mean(adapted == truth))
    return row


def adapted_predictions(model, mean, std, config, preprocess, labels, crops) -> np.ndarray:
    """The classes the network predicts for crops once adapted to them (--adapt: its input
    and batch normalisation statistics from these unlabelled crops), on the NumPy path."""
    from fercli.infer.adapt import adapt_model
    from fercli.infer.model import FerModel
    from fercli.infer.runtime import NumpyNetwork
    from fercli.learn.network import export_network

    exported = export_network(model, mean, std, config.normalisation == "image")
    loaded = FerModel(
        network=NumpyNetwork(exported.specs, exported.weights),
        classes=labels,
        mean=exported.mean,
        std=exported.std,
        preprocess=preprocess,
        meta={
            "test_time_flip": config.test_time_flip,
            "per_image_standardisation": exported.per_image,
        },
    )
    adapted, _ = adapt_model(loaded, crops)
    return adapted.predict_proba(crops).argmax(1)


def print_adapted(name: str, row: dict) -> None:
    """One seed's accuracies without and with --adapt, shift by shift."""
    print(f"{name} seed {row['seed']}: shift, accuracy, adapted accuracy")
    for shift, figures in row["shifts"].items():
        print(f"  {shift:14} {figures['accuracy']:6.1%} {figures['adapted_accuracy']:6.1%}")
    plain = [f["accuracy"] for s, f in row["shifts"].items() if s != "clean"]
    adapted = [f["adapted_accuracy"] for s, f in row["shifts"].items() if s != "clean"]
    print(
        f"  {'mean of shifts':14} {statistics.fmean(plain):6.1%} {statistics.fmean(adapted):6.1%}"
    )


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per recipe: every shift's accuracy and top share, the mean over shifts, all as means
    over seeds (and the per-seed means over shifts)."""
    summary = {}
    for name, rows in runs.items():
        shifts = {}
        for shift in SHIFTS:
            shifts[shift] = {
                key: round(statistics.fmean(row["shifts"][shift][key] for row in rows), 4)
                for key in ("accuracy", "top_share")
            }
        per_seed = [
            statistics.fmean(
                row["shifts"][shift]["accuracy"] for shift in SHIFTS if shift != "clean"
            )
            for row in rows
        ]
        summary[name] = {
            "seeds": [row["seed"] for row in rows],
            "shifts": shifts,
            "clean": shifts["clean"]["accuracy"],
            "clean_per_seed": [round(row["shifts"]["clean"]["accuracy"], 4) for row in rows],
            "mean_over_shifts": round(statistics.fmean(per_seed), 4),
            "mean_over_shifts_per_seed": [round(value, 4) for value in per_seed],
            "worst_shift": min(
                (shift for shift in SHIFTS if shift != "clean"),
                key=lambda shift: shifts[shift]["accuracy"],
            ),
            "top_share_mean_over_shifts": round(
                statistics.fmean(
                    shifts[shift]["top_share"] for shift in SHIFTS if shift != "clean"
                ),
                4,
            ),
            "largest_true_share": round(
                statistics.fmean(row["largest_true_share"] for row in rows), 4
            ),
            "seconds_per_training": round(statistics.fmean(row["seconds"] for row in rows), 1),
        }
    return summary


def print_table(summary: dict) -> None:
    names = list(summary)
    width = max(14, *(len(name) + 2 for name in names))
    print("\naccuracy, mean over seeds (top share: answers given to the most frequent class)")
    print("shift".ljust(16) + "".join(name.rjust(width) for name in names))
    for shift in SHIFTS:
        cells = "".join(
            f"{summary[name]['shifts'][shift]['accuracy']:.1%}".rjust(width) for name in names
        )
        print(shift.ljust(16) + cells)
    rows = (
        ("mean of shifts", lambda item: f"{item['mean_over_shifts']:.1%}"),
        ("top share", lambda item: f"{item['top_share_mean_over_shifts']:.1%}"),
        ("largest class", lambda item: f"{item['largest_true_share']:.1%}"),
        ("s/training", lambda item: f"{item['seconds_per_training']:.0f}"),
        ("seeds", lambda item: ",".join(map(str, item["seeds"]))),
    )
    for label, cell in rows:
        print(label.ljust(16) + "".join(cell(summary[name]).rjust(width) for name in names))


def write_log(rows: list[dict], path: Path) -> None:
    """Every run (recipe, seed) as one markdown table row: clean, mean of shifts, each shift,
    the top share's mean over shifts, the training's seconds."""
    header = ["recipe", "seed", "clean", "mean", *[s for s in SHIFTS if s != "clean"], "top", "s"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in rows:
        shifts = row["shifts"]
        others = [shift for shift in SHIFTS if shift != "clean"]
        cells = [
            f"{row['recipe']} (`{row['spec']}`)",
            str(row["seed"]),
            f"{shifts['clean']['accuracy']:.1%}",
            f"{statistics.fmean(shifts[s]['accuracy'] for s in others):.1%}",
            *[f"{shifts[s]['accuracy']:.0%}" for s in others],
            f"{statistics.fmean(shifts[s]['top_share'] for s in others):.0%}",
            f"{row['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="the CK+48 folder")
    parser.add_argument("--recipe", action="append", required=True, help="NAME=key=value,...")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--home", type=Path, default=Path("/tmp/fer-shift"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--adapt", action="store_true", help="also score each network adapted to each test set"
    )
    parser.add_argument("--output", type=Path, default=None, help="summary JSON (numbers only)")
    parser.add_argument(
        "--log", type=Path, default=None, help="write every run in HOME as a markdown table"
    )
    options = parser.parse_args()

    os.environ["FER_HOME"] = str(options.home)
    options.home.mkdir(parents=True, exist_ok=True)
    from fercli.learn.fitting import configure_tensorflow

    configure_tensorflow(options.threads)
    log = options.home / "shift-runs.jsonl"
    done: dict[tuple, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["spec"], row["seed"])] = row
    photos = load_photos(options.dataset)
    cache: dict[tuple, np.ndarray] = {}

    def crops_for(preprocess, shift: str) -> np.ndarray:
        key = (preprocess.fingerprint(), shift)
        if key not in cache:
            cache[key], fallbacks = shifted_crops(photos, preprocess, SHIFTS[shift])
            if fallbacks:
                print(f"  {shift}: {fallbacks} photos without a face found", flush=True)
        return cache[key]

    seeds = [int(seed) for seed in options.seeds.split(",")]
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for text in options.recipe:
            name, train, preprocess = parse_recipe(text)
            spec = text.partition("=")[2]
            if (spec, seed) not in done or (
                options.adapt and "adapted_accuracy" not in done[(spec, seed)]["shifts"]["clean"]
            ):
                row = run(photos, train, preprocess, seed, crops_for, options.adapt)
                row.update(spec=spec, recipe=name)
                done[(spec, seed)] = row
                with log.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(
                    f"{name} seed {seed}: clean {row['shifts']['clean']['accuracy']:.1%}, "
                    f"{row['seconds']:.0f} s",
                    flush=True,
                )
                if options.adapt:
                    print_adapted(name, row)
            runs.setdefault(name, []).append(done[(spec, seed)])
    summary = summarise(runs)
    print_table(summary)
    if options.log:
        write_log(list(done.values()), options.log)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        specs = {
            name: text.partition("=")[2]
            for name, text in map(lambda item: (item.partition("=")[0], item), options.recipe)
        }
        payload = {
            "protocol": "bench/shift.py: CK+48 subject split 75/25 per seed, simulated shifts "
            "(a proxy; the held-out datasets are the judge)",
            "recipes": {name: {"spec": specs[name], **summary[name]} for name in summary},
        }
        options.output.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nsaved {options.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
