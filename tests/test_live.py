"""fer live as a user sees it: the command run on a clip made from the test photo, its page,
MJPEG stream and state fetched over HTTP on 127.0.0.1, its recording, and bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip(
    "starlette", reason="fer live needs the 'live' extra: pip install 'fercli[live]'"
)
pytest.importorskip("uvicorn", reason="fer live needs the 'live' extra: pip install 'fercli[live]'")

from clips import can_write, moving_face, write_clip
from fercli.cli import app
from synthetic import train_tiny_model

CLASSES = ["anger", "happiness", "surprise", "neutral"]
WIDTH, HEIGHT, FRAMES = 480, 240, 60
SRC = Path(__file__).resolve().parent.parent / "src"
runner = CliRunner()
# Every wait below is bounded: a server that does not answer fails the test, never hangs it.
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0


def scene(index: int) -> list[tuple[float, float, float]]:
    """A face moving in the left half, a second one (mirrored) at the right from frame 20,
    and no face at all in frames 40 to 47."""
    if 40 <= index < 48:
        return []
    first = moving_face(FRAMES, WIDTH // 2, HEIGHT)(index)
    return first + ([(380.0, 115.0, 0.95)] if index >= 20 else [])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    for suffix in (".avi", ".mp4"):
        if can_write(suffix):
            return write_clip(
                tmp_path_factory.mktemp("clip") / f"scene{suffix}",
                FRAMES,
                WIDTH,
                HEIGHT,
                30.0,
                scene,
            )
    pytest.skip("this OpenCV build writes no video format")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny model trained on synthetic shapes (its labels mean nothing; the tests count faces)."""
    return train_tiny_model(tmp_path_factory.mktemp("model") / "tiny.npz", tuple(CLASSES))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_live(*args) -> subprocess.Popen:
    """fer live in a subprocess, as a user runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "fercli", "live", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"fer live exited early: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail("fer live did not listen in time")


def stop(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(2)  # Ctrl-C
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("fer live did not stop on Ctrl-C")


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=HTTP_TIMEOUT) as response:
        return response.read()


def mjpeg_frames(port: int, count: int) -> list[np.ndarray]:
    """The first count frames of the MJPEG stream, decoded."""
    frames = []
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/stream.mjpg", timeout=HTTP_TIMEOUT
    ) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        for _ in range(count * 10):
            if len(frames) >= count:
                break
            line = response.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                while response.readline() not in (
                    b"\r\n",
                    b"",
                ):  # the other headers, to the blank line
                    pass
                image = cv2.imdecode(
                    np.frombuffer(response.read(length), np.uint8), cv2.IMREAD_COLOR
                )
                assert image is not None
                frames.append(image)
    return frames


@pytest.fixture(scope="module")
def server(clip, model_path):
    """fer live --loop on the clip, on a free port of 127.0.0.1."""
    port = free_port()
    process = start_live(clip, "--model", model_path, "--port", port, "--loop")
    wait_listening(process, port)
    yield port
    out, _ = stop(process)
    assert process.returncode == 0
    assert "stopped after" in out


def test_prints_the_address_and_serves_the_page(server):
    page = get(server, "/").decode()
    assert "/stream.mjpg" in page and "/static/app.js" in page
    assert b"state.json" in get(server, "/static/app.js")
    assert get(server, "/static/style.css")


def test_stream_frames_have_boxes_drawn(server, clip):
    frames = mjpeg_frames(server, 40)
    assert len(frames) == 40
    assert frames[0].shape == (HEIGHT, WIDTH, 3)
    # The clip holds greys and the photo's face; the first track's box is drawn pure green
    # (BGR 0, 200, 0), a colour the clip does not have.
    capture = cv2.VideoCapture(str(clip))
    source_green = 0
    for _ in range(FRAMES):
        ok, frame = capture.read()
        if ok:
            source_green = max(source_green, int(green_pixels(frame)))
    capture.release()
    assert max(green_pixels(frame) for frame in frames) > source_green + 100


def green_pixels(frame: np.ndarray) -> int:
    blue, green, red = (frame[..., channel].astype(int) for channel in range(3))
    return int(np.count_nonzero((green > 150) & (blue < 80) & (red < 80)))


def test_state_has_probabilities_per_track(server):
    deadline, state = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        state = json.loads(get(server, "/state.json"))
        if len(state["faces"]) == 2:
            break
        time.sleep(0.1)
    assert state["model"] == "tiny.npz" and state["classes"] == CLASSES
    assert state["status"] == "running" and state["fps"] >= 0
    assert len(state["faces"]) == 2, "the two faces of the clip were never seen together"
    tracks = {face["track"] for face in state["faces"]}
    assert len(tracks) == 2 and all(isinstance(track, int) and track >= 1 for track in tracks)
    for face in state["faces"]:
        assert set(face["probabilities"]) == set(CLASSES)
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)


def test_record_writes_the_csv_of_predict_and_ends_with_the_file(clip, model_path, tmp_path):
    record = tmp_path / "live.csv"
    port = free_port()
    process = start_live(clip, "--model", model_path, "--port", port, "--record", record)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("fer live did not end with its file")
    assert process.returncode == 0, err
    assert "ended after 60 frames" in out
    predicted = runner.invoke(app, ["predict", str(clip), "--model", str(model_path), "--csv"])
    assert predicted.exit_code == 0
    live_rows = list(csv.reader(io.StringIO(record.read_text())))
    predict_rows = list(csv.reader(io.StringIO(predicted.stdout)))
    assert live_rows[0] == predict_rows[0]
    # Same pipeline, same frames: the same faces, tracks and boxes (the probabilities are
    # compared loosely: a batch of one and a batch of many may round differently).
    key = lambda row: (int(row[1]), int(row[3]))  # noqa: E731
    live_body, predict_body = sorted(live_rows[1:], key=key), sorted(predict_rows[1:], key=key)
    assert [row[:8] for row in live_body] == [row[:8] for row in predict_body]
    for live_row, predict_row in zip(live_body, predict_body, strict=True):
        assert [float(v) for v in live_row[9:-1]] == pytest.approx(
            [float(v) for v in predict_row[9:-1]], abs=1e-4
        )
        assert live_row[-1] == predict_row[-1] == str(model_path)  # the model column


def test_smooth_averages_each_persons_last_seconds(clip, model_path, tmp_path):
    """--smooth: each face's probabilities averaged over its own track's frames of the last
    S seconds (this one included), as --record writes them beside the raw ones."""
    record = tmp_path / "smooth.csv"
    process = start_live(
        clip, "--model", model_path, "--port", free_port(), "--record", record, "--smooth", "0.2"
    )
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("fer live did not end with its file")
    assert process.returncode == 0, err
    header, *rows = list(csv.reader(io.StringIO(record.read_text())))
    raw = [header.index(f"p_{label}") for label in CLASSES]
    smoothed = [header.index(f"smoothed_p_{label}") for label in CLASSES]
    assert header[-1] == "model" and "smoothed_label" in header
    tracks: dict[str, list] = {}
    for row in rows:
        tracks.setdefault(row[3], []).append(row)
    assert len(tracks) >= 2  # the scene's two people, each averaged on their own
    for track_rows in tracks.values():
        for row in track_rows:
            time_now = float(row[2])
            window = [r for r in track_rows if time_now - 0.2 - 1e-6 <= float(r[2]) <= time_now]
            expected = np.mean([[float(r[i]) for i in raw] for r in window], axis=0)
            assert [float(row[i]) for i in smoothed] == pytest.approx(expected, abs=1e-5)
            label = row[header.index("smoothed_label")]
            assert label == CLASSES[int(np.argmax(expected))] or np.isclose(
                expected.max(), expected[CLASSES.index(label)], atol=1e-5
            )


def test_missing_file_is_one_line(model_path, tmp_path):
    result = runner.invoke(
        app,
        [
            "live",
            str(tmp_path / "nothing.avi"),
            "--model",
            str(model_path),
            "--port",
            str(free_port()),
        ],
    )
    assert result.exit_code == 1
    assert "no such file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_line(clip, model_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["live", str(clip), "--model", str(model_path), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert "in use" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(
    not shutil.which("chromium"),
    reason="no chromium on this machine (apt-get install chromium to run this test)",
)
def test_page_in_a_headless_browser_shows_bars(server):
    """The page as a browser renders it after a few seconds: a card with bars per face."""
    # The server works in real time and the browser's clock is virtual: a few tries, so that
    # a page loaded before the first face was labelled does not fail the test.
    for _ in range(6):
        result = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=4000",
                "--dump-dom",
                f"http://127.0.0.1:{server}/",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if 'class="face"' in result.stdout:
            break
        time.sleep(1)
    body = result.stdout[result.stdout.find("<body") :]
    assert 'class="face"' in body and 'class="bar"' in body, body[:3000]
    assert 'class="track-style"' in body  # each card shows its person's line style


def test_without_the_extra_says_how_to_install_it(monkeypatch, model_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn then raises ImportError
    result = runner.invoke(app, ["live", "--model", str(model_path)])
    assert result.exit_code == 1
    assert (
        "pip install 'fercli[live]'" in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


def mjpeg_source(clip: Path):
    """An HTTP server on 127.0.0.1 that streams the clip once as MJPEG, then hangs up: a
    stream that disappears while fer live reads it. Returns (server, URL)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    capture, jpegs = cv2.VideoCapture(str(clip)), []
    for _ in range(FRAMES):
        ok, frame = capture.read()
        if ok:
            jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())
    capture.release()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for jpeg in jpegs:
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    + jpeg
                    + b"\r\n"
                )
                time.sleep(1 / 30)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/clip.mjpg"


def test_a_stream_that_disappears_is_shown_and_ends_with_one_line(clip, model_path):
    source, url = mjpeg_source(clip)
    probe = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    opened = probe.isOpened()
    probe.release()
    if not opened:
        source.shutdown()
        pytest.skip("this OpenCV build does not read MJPEG over HTTP")
    port = free_port()
    process = start_live(url, "--model", model_path, "--port", port)
    try:
        wait_listening(process, port)
        deadline, state = time.monotonic() + 30, {}
        while time.monotonic() < deadline and state.get("status") != "failed":
            try:
                state = json.loads(get(port, "/state.json"))
            except OSError:
                break  # already gone: the exit code and message below still tell
            time.sleep(0.1)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        source.shutdown()
    assert state.get("status") == "failed" and "stopped giving frames" in state["error"]
    assert process.returncode == 1
    assert "stopped giving frames" in err and len(err.strip().splitlines()) == 1


# The page's script run by Node on a stand-in document: what it draws is recorded.
PAGE_HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const paths = [], texts = [];
let dash = [];
const ctx = {
  setLineDash(d) { dash = [...d]; },
  beginPath() { paths.push({dash: [...dash], points: 0, colour: null}); },
  moveTo() { paths[paths.length - 1].points++; },
  lineTo() { paths[paths.length - 1].points++; },
  stroke() { paths[paths.length - 1].colour = ctx.strokeStyle; },
  clearRect() {}, fillText(text) { texts.push(text); },
};
function element() {
  return {
    children: [], style: {}, dataset: {}, attributes: {}, width: 960, height: 200,
    append(...c) { this.children.push(...c); }, prepend(...c) { this.children.unshift(...c); },
    replaceChildren(...c) { this.children = c; }, setAttribute(k, v) { this.attributes[k] = v; },
    getContext() { return ctx; },
  };
}
const elements = {};
const document = {
  getElementById(id) { return elements[id] || (elements[id] = element()); },
  createElement: element, createElementNS: element,
};
const face = (track, p) => ({track, label: "anger", box: [0, 0, 1, 1],
                             probabilities: {anger: p, happiness: 1 - p}});
let polls = 0;
function fetch() {
  polls++;
  const state = {source: "clip", model: "m.npz", classes: ["anger", "happiness"], fps: 10,
                 latency_ms: 1, faces: [face(1, 0.8), face(2, 0.3)],
                 status: polls >= 3 ? "ended" : "running", error: null};
  return Promise.resolve({json: () => Promise.resolve(state)});
}
vm.runInNewContext(fs.readFileSync(process.argv[2], "utf8"),
                   {document, fetch, setTimeout, Date, console, Math, Map, Set, Object});
setTimeout(() => {
  const lines = paths.filter(path => path.colour !== "#eee" && path.points > 1);
  const legend = elements.tracks.children.map(item => item.textContent);
  console.log(JSON.stringify({lines, texts, legend}));
}, 1500);
"""


@pytest.mark.skipif(not shutil.which("node"), reason="no Node.js to run the page's script")
def test_the_timeline_tells_two_people_apart(tmp_path):
    """Two people's lines of one class (one colour) are drawn in different line styles,
    each person is numbered on the chart, and a legend gives each number its style."""
    harness = tmp_path / "harness.js"
    harness.write_text(PAGE_HARNESS)
    script = SRC / "fercli" / "web" / "static" / "app.js"
    result = subprocess.run(
        ["node", str(harness), str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    drawn = json.loads(result.stdout)
    by_colour: dict[str, set] = {}
    for line in drawn["lines"]:
        by_colour.setdefault(line["colour"], set()).add(tuple(line["dash"]))
    assert len(by_colour) == 2  # a colour per class
    assert all(len(styles) == 2 for styles in by_colour.values()), by_colour
    assert {"#1", "#2"} <= set(drawn["texts"])
    assert drawn["legend"] == [" #1", " #2"]
