"""Throughput of `fer preprocess`: a first run (empty FER_HOME), cold (no crop cached) and warm.

    python bench/preprocess.py [DATASET_DIR] [--count N] [--workers N] [--repeat 5] [--scratch DIR]

Without DATASET_DIR it times N (default 213, the size of JAFFE) generated 256x256 JAFFE-named
TIFFs made from the test photo, each slightly moved, scaled, brightened and noised so that no
two files have the same content (the cache is keyed by content). The real `fer` runs in a
subprocess, so that start-up (interpreter and imports) is included; it is also reported on its
own. Three runs: the first ever (FER_HOME empty: dlib's detector is built and stored there
too, and dlib's landmark model converted), cold (crops and datasets removed, the stored dlib
files kept: every later run over new images) and warm (every crop cached). Targets (issue 2, 2
cores): >= 200 aligned images/s
cold, a warm re-run over 213 images in < 1 s after start-up; (issue 5) < 1 GB peak memory for
10,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

PHOTO = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "data"
    / "faces"
    / "happiness"
    / "astronaut.png"
)
FER = Path(sys.executable).with_name("fer")
FACE_BOX = (120, 20, 330, 230)  # x0, y0, x1, y1 of the photo's face, roughly
SUBJECTS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
CODES = ("AN", "DI", "FE", "HA", "NE", "SA", "SU")


def generate(folder: Path, count: int, seed: int = 0) -> None:
    """count distinct 256x256 grayscale TIFFs named like JAFFE (KA.AN1.39.tiff)."""
    photo = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = FACE_BOX
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    side = x1 - x0
    folder.mkdir(parents=True, exist_ok=True)
    for serial in range(count):
        # A similarity transform that maps a jittered face box onto 256x256.
        scale = 256 / (side * rng.uniform(0.92, 1.08))
        angle = rng.uniform(-6, 6)
        shift = rng.uniform(-8, 8, 2)
        matrix = cv2.getRotationMatrix2D(tuple(centre + shift), angle, scale)
        matrix[:, 2] += 128 - (centre + shift)
        face = cv2.warpAffine(
            photo, matrix, (256, 256), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        if rng.random() < 0.5:
            face = face[:, ::-1]
        noisy = face.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
        noisy += rng.normal(0, 2.0, face.shape)
        face = np.clip(noisy, 0, 255).astype(np.uint8)
        name = (
            f"{SUBJECTS[serial % 10]}.{CODES[(serial // 10) % 7]}{serial % 3 + 1}.{serial + 1}.tiff"
        )
        (folder / name).write_bytes(cv2.imencode(".tiff", face)[1].tobytes())


class TreeMemory:
    """Samples the summed memory of a process and all its descendants (RSS and PSS)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, index = [self.pid], 0
        while index < len(pids):
            try:
                children = (
                    Path(f"/proc/{pids[index]}/task/{pids[index]}/children").read_text().split()
                )
            except OSError:
                children = []
            pids.extend(int(child) for child in children)
            index += 1
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            pids = self._tree()
            for pid in pids:
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1])
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1])
                except OSError:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_fer(arguments: list[str], home: Path) -> dict:
    """Run fer with FER_HOME=home; wall time, exit code, output and sampled tree memory."""
    environment = {**os.environ, "FER_HOME": str(home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(FER), *arguments], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    memory = TreeMemory(process.pid)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of fer and its workers (reaped by fer): a measure that other programs
    # competing for the cores do not inflate as much as they inflate wall time.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode != 0:
        message = stderr.decode(errors="replace")[-2000:]
        sys.exit(f"fer {' '.join(arguments)} failed ({process.returncode}): {message}")
    return {
        "wall": wall,
        "cpu": cpu,
        "stdout": stdout,
        "rss_kb": memory.peak_rss,
        "pss_kb": memory.peak_pss,
        "processes": memory.peak_processes,
    }


def children_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def self_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(name: str, run: dict, report: dict) -> None:
    """Print one run: counts, where the wall time went, rate, CPU and memory."""
    inside = report["seconds"]  # preprocess_dataset's own time, as fer measured it
    aligned = report["aligned"]
    print(f"{name}: aligned {aligned} of {report['found']}, {report['cache_hits']} from the cache")
    print(
        f"  wall {run['wall']:.2f} s = start-up and exit {run['wall'] - inside:.2f} s"
        f" + preprocess {inside:.2f} s; CPU (fer and its workers) {run['cpu']:.2f} s"
    )
    print(
        f"  {aligned / run['wall']:.0f} aligned/s with start-up, "
        f"{aligned / max(inside, 1e-9):.0f}/s without"
    )
    print(
        f"  peak memory of the process tree: {run['rss_kb'] / 1024:.0f} MB RSS, "
        f"{run['pss_kb'] / 1024:.0f} MB PSS (shared pages counted once), "
        f"{run['processes']} processes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dataset", nargs="?", type=Path, help="dataset folder (default: generated images)"
    )
    parser.add_argument(
        "--count", type=int, default=213, help="images to generate when no folder is given"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="fer preprocess --workers (default: fer's own)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="cold runs to take the median of (default 5)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and print where it is"
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="where the temporary folder (images and FER_HOME) goes (default: the system's "
        "temporary folder; on one machine creating files there was at times far slower than "
        "elsewhere on the same disk)",
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="fer-bench-", dir=args.scratch))
    try:
        if args.dataset:
            dataset = args.dataset
        else:
            dataset = scratch / "jaffe-like"
            started = time.perf_counter()
            generate(dataset, args.count)
            print(f"generated {args.count} 256x256 images in {time.perf_counter() - started:.1f} s")
        home = scratch / "fer-home"
        load = os.getloadavg()[0]

        help_runs = [run_fer(["--help"], home) for _ in range(5)]
        help_time = statistics.median(run["wall"] for run in help_runs)
        help_cpu = statistics.median(run["cpu"] for run in help_runs)
        command = ["preprocess", str(dataset), "--json"] + (
            ["--workers", str(args.workers)] if args.workers else []
        )
        # First run ever: FER_HOME is empty, so dlib's detector is also built and stored.
        first = run_fer(command, home)
        first_report = json.loads(first["stdout"])
        # Cold: no crop is cached (what the target is about), the stored detector is. This
        # machine's speed wanders from run to run: the median of --repeat runs is reported.
        colds = []
        for _ in range(args.repeat):
            shutil.rmtree(home / "crops")
            shutil.rmtree(home / "datasets")
            run = run_fer(command, home)
            colds.append((run, json.loads(run["stdout"])))
        colds.sort(key=lambda pair: pair[0]["wall"])
        cold, cold_report = colds[len(colds) // 2]
        cold_children_mb = children_maxrss_mb()
        warm = run_fer(command, home)
        warm_report = json.loads(warm["stdout"])

        aligned, found = cold_report["aligned"], cold_report["found"]
        print(f"dataset: {dataset} ({cold_report['layout']}), {found} images")
        print(
            f"workers: {cold_report['workers']}; load average before: {load:.2f} on "
            f"{os.cpu_count()} cores (well above 0: something else competes, figures suffer)"
        )
        print(
            f"fer --help, median of 5: {help_time * 1000:.0f} ms wall, {help_cpu * 1000:.0f} ms CPU"
        )
        runs = (
            ("first run (empty FER_HOME)", first, first_report),
            (f"cold (no crop cached; median of {len(colds)})", cold, cold_report),
            ("warm (every crop cached)", warm, warm_report),
        )
        for name, run, report in runs:
            describe(name, run, report)
        if len(colds) > 1:
            walls = ", ".join(f"{run['wall']:.2f}" for run, _ in colds)
            inside = ", ".join(f"{report['seconds']:.2f}" for _, report in colds)
            print(
                f"cold runs, sorted: wall {walls} s; preprocess alone {inside} s (median shown "
                "above)"
            )
        print(
            f"peak RSS of one process (getrusage maxrss): this script {self_maxrss_mb():.0f} MB; "
            f"fer or a worker: {cold_children_mb:.0f} MB cold, {children_maxrss_mb():.0f} MB in all"
        )
        cold_rate = cold_report["aligned"] / cold["wall"]
        warm_after_start = warm_report["seconds"]
        print(
            f"targets: cold >= 200 aligned/s: {cold_rate:.0f}/s with start-up, "
            f"{cold_report['aligned'] / cold_report['seconds']:.0f}/s without; "
            f"warm < 1 s after start-up: {warm_after_start:.2f} s; "
            f"peak < 1 GB: {max(cold['rss_kb'], warm['rss_kb']) / 1024:.0f} MB (tree RSS)"
        )
        if aligned < found:
            reasons = "; ".join(item["reason"] for item in cold_report["skipped"][:3])
            print(f"note: {found - aligned} images were not aligned; first reasons: {reasons}")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
