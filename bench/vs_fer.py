"""fercli against the PyPI `fer` library, whole processes taking turns, compared pair by pair.

    python bench/vs_fer.py FER_VENV [--rounds 5] [--model MODEL] [--only photo,photos,video]

FER_VENV: a virtual environment holding the `fer` library (fer 25.10 needs TensorFlow and
the setuptools that still has pkg_resources), made once with

    python3 -m venv FER_VENV && FER_VENV/bin/pip install fer "setuptools<81"

The work, as `fer predict PATH --json` does it and as the `fer` library does it (its Haar
cascade shipped in the package, FER(cascade_file=...), every face of every photo and of
every frame, its default TFLite model; the script it runs is FER_SCRIPT below):
    photo   one 512x512 photo, from a new process (bench/predict.py's photos)
    photos  100 such photos in one folder, one process
    video   a 640x480 clip of 150 frames with one face (bench/video.py's clip), every frame
and, fercli only, a clip of 20 s (600 frames) for frames a second with start-up.

Every round runs each program once for each piece of work, the order turning round by round,
after one unrecorded run of each (file caches, fercli's dlib models stored in its FER_HOME).
A run's figures: wall seconds, CPU seconds (user + system of it and every process it waited
for, from wait4) and peak resident memory of its largest process. Printed: medians, and the
median over rounds of fer/fercli for the pairs of each round (this machine's speed drifts;
the pair's two runs see the same minutes). fercli runs with compiled bytecode in a folder of
its own (PYTHONPYCACHEPREFIX; an environment that sets PYTHONDONTWRITEBYTECODE would
otherwise compile fercli from source on every run, which an installed fercli never does,
nor the `fer` library). Without --model a one-network model is trained on synthetic crops
first (one epoch; speed does not depend on what it learnt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import make_model, make_photos  # noqa: E402  (bench/predict.py)
from video import bench_clip  # noqa: E402  (bench/video.py)

FER_SCRIPT = r"""
import json, os, sys
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import cv2
import fer as fer_package
from fer.fer import FER

CASCADE = Path(fer_package.__file__).parent / "data" / "haarcascade_frontalface_default.xml"
IMAGES = {".jpg", ".jpeg", ".png"}
detector = FER(cascade_file=str(CASCADE))

def faces(image):
    return [{"box": [int(v) for v in face["box"]], "emotions": face["emotions"]}
            for face in detector.detect_emotions(image)]

results = []
for given in map(Path, sys.argv[1:]):
    files = sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGES) \
        if given.is_dir() else [given]
    for path in files:
        if path.suffix.lower() in (".mp4", ".avi"):
            capture, frames = cv2.VideoCapture(str(path)), []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append({"frame": len(frames), "faces": faces(frame)})
            results.append({"path": str(path), "frames": frames})
        else:
            results.append({"path": str(path), "faces": faces(cv2.imread(str(path)))})
json.dump(results, sys.stdout, default=float)
"""


def run(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall s, CPU s of the process and those it waited for, peak RSS MB) of one run."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{errors.read().decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def median(values) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fer_venv", type=Path, help="a venv with the `fer` library installed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a fercli model (default: made here)")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--only", default="photo,photos,video", help="which work to time")
    options = parser.parse_args()
    fer_python = options.fer_venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    if not fer_python.exists():
        sys.exit(f"no python in {options.fer_venv}: make the venv as the docstring says")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = dict(
            os.environ,
            FER_HOME=str(scratch / "home"),
            PYTHONPATH=str(ROOT / "src"),
            PYTHONPYCACHEPREFIX=str(scratch / "pycache"),
            TF_CPP_MIN_LOG_LEVEL="3",
        )
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        model = options.model or make_model(scratch / "model.npz", 1)
        photos = scratch / "photos"
        make_photos(photos, options.photos)
        clip = bench_clip(scratch / "clip150", 5.0)
        long_clip = bench_clip(scratch / "clip600", 20.0)
        script = scratch / "fer_library.py"
        script.write_text(FER_SCRIPT)
        fercli = [sys.executable, "-m", "fercli", "predict"]
        targets = {
            "photo": photos / "photo0000.jpg",
            "photos": photos,
            "video": clip,
        }
        work = [name for name in options.only.split(",") if name in targets]
        programs = {
            name: {
                "fercli": [*fercli, str(targets[name]), "--model", str(model), "--json"],
                "fer": [str(fer_python), str(script), str(targets[name])],
            }
            for name in work
        }
        if "video" in work:
            programs["20 s clip"] = {
                "fercli": [*fercli, str(long_clip), "--model", str(model), "--json"]
            }
        for commands in programs.values():  # unrecorded: caches warm, dlib's models stored
            for command in commands.values():
                run(command, env)
        figures = {(name, who): [] for name, commands in programs.items() for who in commands}
        loads = []
        for round_ in range(options.rounds):
            loads.append(os.getloadavg()[0])
            for name, commands in programs.items():
                order = list(commands) if round_ % 2 == 0 else list(commands)[::-1]
                for who in order:
                    figures[(name, who)].append(run(commands[who], env))
        print(
            f"{options.rounds} rounds; load average at the rounds' starts {min(loads):.1f}-"
            f"{max(loads):.1f} on {os.cpu_count()} cores"
        )
        report(programs, figures, options.photos)


def report(programs: dict, figures: dict, photos: int) -> None:
    counts = {"photo": 1, "photos": photos, "video": 150, "20 s clip": 600}
    units = {"photo": "photos", "photos": "photos", "video": "frames", "20 s clip": "frames"}
    for name, commands in programs.items():
        for who in commands:
            walls, cpus, peaks = zip(*figures[(name, who)], strict=True)
            rate = counts[name] / median(walls)
            print(
                f"{name}, {who}: wall {median(walls):.2f} s (min {min(walls):.2f}, max "
                f"{max(walls):.2f}), {rate:.1f} {units[name]}/s; CPU {median(cpus):.2f} s; "
                f"peak {median(peaks):.0f} MB"
            )
        if "fer" in commands:
            pairs = zip(figures[(name, "fercli")], figures[(name, "fer")], strict=True)
            ratios = [(b[0] / a[0], b[1] / a[1]) for a, b in pairs]
            wall_ratios, cpu_ratios = zip(*ratios, strict=True)
            print(
                f"{name}: fercli faster by {median(wall_ratios):.1f}x wall (pairs "
                f"{min(wall_ratios):.1f}-{max(wall_ratios):.1f}), {median(cpu_ratios):.1f}x CPU "
                f"({min(cpu_ratios):.1f}-{max(cpu_ratios):.1f})"
            )


if __name__ == "__main__":
    main()
