"""Speed and memory of `fer predict` on a video: frames analysed a second, and peak memory.

    python bench/video.py [--model MODEL] [--seconds 60] [--long 600] [--keep DIR]

Makes a 640x480, 30 frames/s clip of --seconds seconds with one face (the public-domain test
photo's, moving and changing size; see tests/clips.py) and runs `fer predict` on it in a new
process each time: every frame analysed (faces followed by their landmarks between full
detections every 5 frames, the default), every frame with a full detection on each
(--detect-every 1), and --every 3. Then the peak memory (maximum resident set size of the
process) with --json for the clip and for a clip of --long seconds. Without --model, a
small model is trained on random crops first (speed does not depend on its labels).
Targets on the 2-core development machine: >= 60 frames/s with every frame analysed (twice
real time); peak memory under 400 MB whatever the length.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FER = [sys.executable, "-m", "fercli"]
WIDTH, HEIGHT, FPS = 640, 480, 30.0


def bench_clip(path: Path, seconds: float) -> Path:
    """A 640x480 clip of one face wandering about the frame and growing and shrinking."""
    from clips import can_write, write_clip

    def place(index: int) -> list[tuple[float, float, float]]:
        t = index / FPS
        return [
            (
                WIDTH * (0.5 + 0.25 * math.sin(2 * math.pi * t / 8)),
                HEIGHT * (0.5 + 0.15 * math.sin(2 * math.pi * t / 5)),
                1.1 + 0.25 * math.sin(2 * math.pi * t / 6),
            )
        ]

    path = path.with_suffix(".mp4" if can_write(".mp4") else ".avi")
    return write_clip(path, round(seconds * FPS), WIDTH, HEIGHT, FPS, place)


def run_measured(args: list[str], env: dict) -> tuple[float, int, str]:
    """Wall seconds, peak resident memory in bytes (the process's ru_maxrss, kB on Linux) and
    stdout of `fer ARGS` in a new process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen([*FER, *map(str, args)], stdout=output, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        output.seek(0)
        errors.seek(0)
        if status != 0:
            raise SystemExit(f"fer {' '.join(map(str, args))} failed:\n{errors.read()}")
        return wall, usage.ru_maxrss * 1024, output.read()


def analysis(stdout: str) -> tuple[int, int, float]:
    """(frames, frames analysed, seconds of analysis) from fer predict's table title."""
    match = re.search(r": (\d+) frames, .*?, (\d+) analysed in ([\d.]+) s", stdout)
    if not match:
        raise SystemExit(f"no video summary in:\n{stdout}")
    return int(match.group(1)), int(match.group(2)), float(match.group(3))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--long", type=float, default=600, help="length of the clip for the memory figure (0: skip)"
    )
    parser.add_argument("--keep", type=Path, help="keep the clips here (and reuse them)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = options.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
            ),
        }
        env.setdefault("FER_HOME", str(Path(scratch) / "fer-home"))
        model = options.model
        if model is None:
            spec = importlib.util.spec_from_file_location(
                "bench_predict", ROOT / "bench" / "predict.py"
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            model = module.make_model(Path(scratch))
        clips = {}
        for name, seconds in (("short", options.seconds), ("long", options.long)):
            if not seconds:
                continue
            existing = sorted(folder.glob(f"bench-{seconds:g}s.*"))
            if existing:
                clips[name] = existing[0]
                continue
            started = time.perf_counter()
            clips[name] = bench_clip(folder / f"bench-{seconds:g}s", seconds)
            print(
                f"made {clips[name]} ({clips[name].stat().st_size / 1e6:.0f} MB) in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        run_measured(
            ["predict", clips["short"], "--model", model, "--every", "30"], env
        )  # warm: converts dlib's model
        for label, extra in (
            ("every frame (landmarks between detections every 5)", []),
            ("every frame, full detection on each (--detect-every 1)", ["--detect-every", "1"]),
            ("--every 3", ["--every", "3"]),
        ):
            wall, peak, stdout = run_measured(
                ["predict", clips["short"], "--model", model, *extra], env
            )
            frames, analysed, seconds = analysis(stdout)
            print(
                f"{label}: {analysed} of {frames} frames analysed in {seconds:.1f} s: "
                f"{analysed / seconds:.0f} "
                f"frames analysed/s, {frames / seconds:.0f} video frames/s "
                f"({frames / seconds / FPS:.1f}x real time); "
                f"{wall:.1f} s in all; peak {peak / 2**20:.0f} MB",
                flush=True,
            )
        for name in ("short", "long"):
            if name not in clips:
                continue
            wall, peak, _ = run_measured(["predict", clips[name], "--model", model, "--json"], env)
            print(
                f"--json on {clips[name].name}: {wall:.1f} s in all; peak {peak / 2**20:.0f} MB",
                flush=True,
            )
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
