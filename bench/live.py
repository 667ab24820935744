"""Speed of `fer live`: frames a second served, and the delay from a frame read to its
labelled frame sent, at 640x480 from a 30 frames/s source.

    python bench/live.py [--model MODEL] [--seconds 20]

Makes the 640x480, 30 frames/s clip of bench/video.py (one face wandering about the frame),
runs `fer live CLIP --loop` in a new process on a free port of 127.0.0.1, and reads its MJPEG
stream for --seconds as a browser would (after a few seconds' warm-up). Each part of the stream
carries X-Read-At, the time its frame was read; the delay is the time the part arrives minus
that. A file plays at its own frame rate, as a camera would, so 30 frames/s is the most there
can be. Targets (issue 17): >= 25 frames/s served and a delay under 150 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 5.0


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_stream(port: int, seconds: float) -> tuple[int, float, list[float]]:
    """(frames, seconds, delays in seconds) of the MJPEG stream read for seconds after warm-up."""
    delays, frames, started = [], 0, None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10) as response:
        opened = time.monotonic()
        read_at = None
        while True:
            line = response.readline()
            if not line:
                break
            if line.lower().startswith(b"x-read-at:"):
                read_at = float(line.split(b":")[1])
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line == b"\r\n" and read_at is not None:
                response.read(length)
                arrived = time.time()
                if time.monotonic() - opened >= WARM_UP:
                    started = started or time.monotonic()
                    frames += 1
                    delays.append(arrived - read_at)
                    if time.monotonic() - started >= seconds:
                        return frames, time.monotonic() - started, delays
                read_at = None
    raise SystemExit("the stream ended early")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seconds", type=float, default=20)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
            ),
        }
        env.setdefault("FER_HOME", str(Path(scratch) / "fer-home"))
        model = options.model or load_bench("predict").make_model(Path(scratch))
        clip = load_bench("video").bench_clip(Path(scratch) / "live", 30)
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fercli",
                "live",
                str(clip),
                "--model",
                str(model),
                "--port",
                str(port),
                "--loop",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            process.stdout.readline()  # the address: listening
            frames, seconds, delays = read_stream(port, options.seconds)
        finally:
            process.send_signal(2)
            process.wait(timeout=30)
    delays_ms = sorted(1000 * delay for delay in delays)
    print(
        f"640x480 at 30 frames/s, {seconds:.1f} s read: {frames / seconds:.1f} frames/s served; "
        "delay from read "
        f"to received: median {statistics.median(delays_ms):.0f} ms, 95th percentile "
        f"{delays_ms[int(0.95 * (len(delays_ms) - 1))]:.0f} ms, max {delays_ms[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()
