"""Images that are themselves face crops (faces/face_crops.py): how many a folder of them
aligns, how well, and how many pictures without a face pass the face check.

    python bench/face_crops.py FOLDER [--every 3] [--negatives 600]

FOLDER holds face crops in class folders (FER2013's validation/, CK+48); every --every-th
image is measured. Prints one JSON line:
- coverage: the share of the images the detector finds (levels 0 and 1, fercli's rule), the
  share the face-crop fallback adds, and the total;
- agreement: on the images the detector finds, the landmarks found by the fallback against
  those found from the detector's box, in eye distances (median, 90th percentile, share over
  0.1), for each start box of START_SHARES alone;
- face check: of the images the detector misses, the share passing at several thresholds
  (the first start alone, either start); and the same for --negatives 48x48 patches without
  a face, cut from pictures anyone has (the public-domain test photo away from its face, and
  scikit-learn's two sample pictures).
Development data (FER2013, CK+) is read, never copied: run it on your own download.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from fercli.core.config import PreprocessConfig
from fercli.faces import face_crops
from fercli.faces.align import detect_faces, eye_centres, landmark_predictor

PHOTO = Path(__file__).resolve().parent.parent / "tests/data/faces/happiness/astronaut.png"
FACE = (120, 20, 330, 230)  # x0, y0, x1, y1 of the test photo's face, left out of negatives
THRESHOLDS = (-1.0, -0.9, -0.8, -0.5)


def images(folder: Path, every: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return paths[::every]


def check_scores(gray: np.ndarray) -> list[float]:
    """The face check's score from each start box."""
    return [
        face_crops.face_check_score(gray, face_crops.refined_landmarks(gray, share))
        for share in face_crops.START_SHARES
    ]


def negatives(count: int, seed: int = 0) -> list[np.ndarray]:
    """48x48 patches without a face: the test photo away from its face, and scikit-learn's
    sample pictures (a building and a flower)."""
    from sklearn.datasets import load_sample_images

    photo = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    sources = [photo] + [
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in load_sample_images().images
    ]
    rng = np.random.default_rng(seed)
    patches = []
    while len(patches) < count:
        which = int(rng.integers(len(sources)))
        source = sources[which]
        side = int(rng.integers(32, 200))
        x = int(rng.integers(0, source.shape[1] - side))
        y = int(rng.integers(0, source.shape[0] - side))
        x0, y0, x1, y1 = FACE
        if which == 0 and x < x1 and x + side > x0 and y < y1 and y + side > y0:
            continue
        patch = source[y : y + side, x : x + side]
        patches.append(cv2.resize(patch, (48, 48), interpolation=cv2.INTER_AREA))
    return patches


def passing(scores: np.ndarray) -> dict:
    """The share passing each threshold, from the first start and from either."""
    return {
        f"{threshold:g}": {
            "first start": round(float(np.mean(scores[:, 0] >= threshold)), 4),
            "either start": round(float(np.mean(scores.max(axis=1) >= threshold)), 4),
        }
        for threshold in THRESHOLDS
    }


def agreement(errors: list[list[float]]) -> dict:
    table = np.array(errors)
    return {
        f"start {share:g}": {
            "median": round(float(np.median(table[:, column])), 4),
            "p90": round(float(np.percentile(table[:, column], 90)), 4),
            "over 0.1": round(float(np.mean(table[:, column] > 0.1)), 4),
        }
        for column, share in enumerate(face_crops.START_SHARES)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=600)
    arguments = parser.parse_args()
    config = PreprocessConfig()
    predictor = landmark_predictor()
    detected = 0
    missed_scores, errors = [], []
    paths = images(arguments.folder, arguments.every)
    for path in paths:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        found = detect_faces(gray, config)
        if not found:
            missed_scores.append(check_scores(gray))
            continue
        detected += 1
        reference = predictor(gray, found[0][0]).astype(np.float64)
        left, right = eye_centres(reference)
        distance = float(np.linalg.norm(right - left))
        errors.append(
            [
                float(
                    np.linalg.norm(
                        face_crops.refined_landmarks(gray, share) - reference, axis=1
                    ).mean()
                )
                / distance
                for share in face_crops.START_SHARES
            ]
        )
    missed = np.array(missed_scores).reshape(-1, len(face_crops.START_SHARES))
    passed = np.mean(missed.max(axis=1) >= face_crops.CANVAS_MIN_SCORE) if len(missed) else 0.0
    print(
        json.dumps(
            {
                "folder": str(arguments.folder),
                "images": len(paths),
                "coverage": {
                    "detector": round(detected / len(paths), 4),
                    "face crops": round(len(missed) * passed / len(paths), 4),
                    "total": round((detected + len(missed) * passed) / len(paths), 4),
                    "threshold": face_crops.CANVAS_MIN_SCORE,
                },
                "agreement (eye distances)": agreement(errors) if errors else None,
                "face check, faces the detector missed": passing(missed),
                "face check, patches without a face": passing(
                    np.array([check_scores(patch) for patch in negatives(arguments.negatives)])
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
