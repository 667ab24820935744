"""Cost of explanation maps (fercli.infer.explain, `fer predict --explain`).

    python bench/explain.py [--model MODEL] [--ensemble MODEL] [--repeats 7] [--faces 32]

1. Per face: CPU time of occlusion_maps (8x8 grey patch, stride 2: 169 occluded copies and
   the crop in one batched call) with a single network and with a 10-network ensemble.
2. One face (what `fer predict photo --explain` has), its networks on one thread and on two
   (infer.explain.EXPLAIN_THREADS), taking turns: medians of wall and CPU time.
3. End to end, cold start included: `fer predict PHOTO` and `fer predict PHOTO --explain DIR`
   in fresh processes, the two taking turns within every repeat (so that both see the same
   machine load), medians over the repeats; the difference is what --explain costs.

Without --model and --ensemble, models are trained on synthetic crops first (one epoch, as
bench/predict.py does: speed does not depend on what they learnt). The photo is the
public-domain test photo (one face). Goal (issue 27): --explain costs at most 0.3 s more
than predict alone on one photo.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))

from predict import PHOTO, make_model, timed  # noqa: E402  (bench/predict.py)


def per_face(model_path: Path, faces: int) -> tuple[float, int]:
    """(CPU seconds per face, network inputs per face) of occlusion_maps on the test photo's
    crop, shifted a little for each face so that no two are the same."""
    from fercli.infer.explain import PATCH, STRIDE, explain_crops, patch_positions
    from fercli.infer.model import load_model

    model = load_model(model_path)
    [face] = model.explain(PHOTO)
    rng = np.random.default_rng(0)
    crops = np.stack(
        [np.roll(face.crop, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1)) for _ in range(faces)]
    )
    explain_crops(model, crops[:2], [face.box] * 2)  # the network's first pass prepares it
    started = time.process_time()
    explain_crops(model, crops, [face.box] * faces)
    seconds = (time.process_time() - started) / faces
    return seconds, len(patch_positions(crops.shape[1], PATCH, STRIDE)) ** 2 + 1


def threads_in_turns(model_path: Path, repeats: int) -> dict[int, tuple[float, float]]:
    """{threads: (median wall, median CPU seconds)} of one face's maps, the networks on one
    thread and on two, in turns."""
    from fercli.infer.explain import grey_crop, occlusion_maps
    from fercli.infer.model import load_model

    model = load_model(model_path)
    [face] = model.explain(PHOTO)
    crops = face.crop[np.newaxis]
    grey = grey_crop([member.mean for member in model.networks], crops.shape[1], model.per_image)
    runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for repeat in range(repeats):
        for threads in (1, 2) if repeat % 2 == 0 else (2, 1):
            wall, cpu = time.perf_counter(), time.process_time()
            occlusion_maps(lambda batch: model.predict_proba(batch, threads=threads), crops, grey)
            runs[threads].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        threads: (statistics.median(w for w, _ in value), statistics.median(c for _, c in value))
        for threads, value in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a single-network model (default: made here)")
    parser.add_argument(
        "--ensemble", type=Path, help="a model of several networks (default: 10, made here)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--faces", type=int, default=32, help="faces for the per-face figure")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = dict(os.environ, FER_HOME=str(scratch / "home"), PYTHONPATH=str(ROOT / "src"))
        models = {
            "1 network": options.model or make_model(scratch / "single.npz", 1),
            "10 networks": options.ensemble or make_model(scratch / "ensemble.npz", 10),
        }
        print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for name, path in models.items():
            seconds, inputs = per_face(path, options.faces)
            print(
                f"per face, {name}: {seconds * 1000:.0f} ms of CPU "
                f"({inputs} network inputs a face; the mean of {options.faces} faces in one call)"
            )
        turns = threads_in_turns(models["10 networks"], 3 * options.repeats)
        print(
            "one face, 10 networks, in turns: "
            + "; ".join(
                f"{threads} thread{'s' if threads > 1 else ''} {wall * 1000:.0f} ms wall, "
                f"{cpu * 1000:.0f} ms cpu"
                for threads, (wall, cpu) in turns.items()
            )
        )
        for name, path in models.items():
            plain = ["predict", str(PHOTO), "--model", str(path), "--json"]
            for _ in range(2):  # warm the OS file cache
                timed(plain, env)
            runs: dict[str, list[tuple[float, float]]] = {"predict": [], "--explain": []}
            for repeat in range(options.repeats):
                runs["predict"].append(timed(plain, env)[:2])
                folder = scratch / f"why-{name.replace(' ', '')}-{repeat}"
                runs["--explain"].append(timed([*plain, "--explain", str(folder)], env)[:2])
            walls = {key: statistics.median(w for w, _ in value) for key, value in runs.items()}
            cpus = {key: statistics.median(c for _, c in value) for key, value in runs.items()}
            print(
                f"one photo, new process, {name}: predict {walls['predict']:.2f} s wall "
                f"({cpus['predict']:.2f} s cpu), with --explain {walls['--explain']:.2f} s "
                f"({cpus['--explain']:.2f} s cpu): --explain costs "
                f"{walls['--explain'] - walls['predict']:+.2f} s wall, "
                f"{cpus['--explain'] - cpus['predict']:+.2f} s cpu "
                f"(medians of {options.repeats} runs in turns)"
            )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
