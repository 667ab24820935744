"""run_tasks: many tasks over worker processes, the one pool that preprocess, predict and
cross-validation share.

Every task's result comes back once, in order; a handful of tasks run here; a task's error
comes back as itself; Ctrl-C, a caller that stops reading and a worker that dies stop every
worker at once; it works where workers are spawned rather than forked.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from fercli.core import parallel
from fercli.core.errors import FerError, StoreError
from fercli.core.parallel import batches, notify, run_tasks

SET_UP: dict[str, int] = {}  # what the initializer did, in the process that ran it


def set_up() -> None:
    SET_UP["by"] = os.getpid()


def square(task: int) -> tuple[int, int, int | None]:
    return task * task, os.getpid(), SET_UP.get("by")


def scaled(factor: int, task: int) -> int:
    return factor * task


@pytest.fixture(autouse=True)
def nothing_set_up():
    SET_UP.clear()
    yield
    SET_UP.clear()


def no_workers_left() -> bool:
    return multiprocessing.active_children() == []


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_every_result_once_in_order_from_set_up_workers(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")

    results = list(run_tasks(square, list(range(60)), 2, set_up, start_method=method))

    assert [value for value, _, _ in results] == [task * task for task in range(60)]
    workers = {pid for _, pid, _ in results}
    assert len(workers) == 2 and os.getpid() not in workers
    assert all(set_up_by == pid for _, pid, set_up_by in results)  # each worker set itself up
    assert SET_UP == {} and no_workers_left()


def test_what_a_worker_needs_goes_in_the_function():
    results = run_tasks(partial(scaled, 10), list(range(20)), 2)

    assert list(results) == [10 * task for task in range(20)]


def test_results_as_they_finish_when_order_does_not_matter():
    results = list(run_tasks(square, list(range(40)), 2, set_up, ordered=False))

    assert sorted(value for value, _, _ in results) == [task * task for task in range(40)]
    assert os.getpid() not in {pid for _, pid, _ in results}


@pytest.mark.parametrize("tasks, workers", [([1, 2, 3], 2), (list(range(40)), 1)])
def test_a_handful_of_tasks_or_one_worker_run_here_without_set_up(tasks, workers):
    results = list(run_tasks(square, tasks, workers, set_up))

    assert results == [(task * task, os.getpid(), None) for task in tasks]
    assert SET_UP == {}  # the initializer is for workers, not for this process


def test_in_process_false_always_uses_workers():
    results = list(run_tasks(square, [4], 2, set_up, in_process=False))

    assert results[0][0] == 16 and results[0][1] != os.getpid() and results[0][2] == results[0][1]


class _Cycle:
    """An object in a reference cycle whose finaliser writes the pid of the process that ran it."""

    def __init__(self, record: Path) -> None:
        self.record, self.me = record, self

    def __del__(self) -> None:
        with open(self.record, "a") as out:
            out.write(f"{os.getpid()}\n")


def _collect(_task) -> int:
    import gc

    gc.collect()
    return os.getpid()


def test_garbage_left_when_workers_fork_is_freed_here_not_in_them(tmp_path):
    # What it was not: a video reader's FFmpeg threads, freed in a worker that has none of
    # them, hung the worker for ever.
    import gc

    record = tmp_path / "freed-by"
    gc.disable()
    try:
        _Cycle(record)  # garbage at once, freed only by a collection
        workers = set(run_tasks(_collect, [1, 2], 2, start_method="fork", in_process=False))
    finally:
        gc.enable()
    assert len(workers) >= 1 and os.getpid() not in workers
    assert not record.exists()  # no worker freed it, though each collected its garbage
    gc.collect()
    assert record.read_text().split() == [str(os.getpid())]


def test_a_stream_of_tasks_is_read_as_workers_need_it():
    read = []

    def stream():
        for task in range(200):
            read.append(task)
            yield task

    results = run_tasks(square, stream(), 2)
    first = next(results)
    ahead = len(read)
    rest = list(results)

    assert [first[0]] + [value for value, _, _ in rest] == [task * task for task in range(200)]
    assert ahead <= 4 * 2 + 1  # not the whole stream at once


def fails_on(bad: int, marker: str, task: int) -> int:
    if task == bad:
        raise StoreError(f"cannot write task {task}")
    if task == bad + 1:
        time.sleep(1.0)  # still running in the other worker when the failure arrives
        Path(marker).write_text("finished")
    return task


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_task_raises_its_own_error_once_the_running_ones_finish(tmp_path, workers):
    marker = tmp_path / "finished"
    tasks = [0, 1] if workers == 1 else [0, 1, 2, 3]

    with pytest.raises(StoreError, match="cannot write task 0"):
        list(run_tasks(partial(fails_on, 0, str(marker)), tasks, workers, in_process=workers == 1))

    if workers == 2:  # the task the other worker was doing was not stopped half-way
        assert marker.read_text() == "finished"
    assert no_workers_left()


def sleeps_after(first: int, marker: str, task: int) -> int:
    if task > first:
        time.sleep(60)
        Path(marker).write_text("not stopped")
    return task


def test_a_failing_task_can_stop_the_others_at_once(tmp_path):
    marker = tmp_path / "not-stopped"

    def fails(task):
        return sleeps_after(0, str(marker), task) if task else 1 // task

    with pytest.raises(ZeroDivisionError):
        list(run_tasks(fails, [0, 1, 2, 3], 2, finish_running=False, ordered=False))

    assert no_workers_left() and not marker.exists()


def test_a_caller_that_stops_reading_stops_the_workers(tmp_path):
    marker = tmp_path / "not-stopped"
    results = run_tasks(partial(sleeps_after, 0, str(marker)), [0, 1, 2, 3], 2)

    assert next(results) == 0
    results.close()

    assert no_workers_left() and not marker.exists()


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test, whatever the runner was started with: a
    shell's background job ignores SIGINT, and Python then never raises KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_workers_at_once(tmp_path, python_sigint):
    marker = tmp_path / "not-stopped"
    results = run_tasks(partial(sleeps_after, 0, str(marker)), [0, 1, 2, 3], 2)
    # Ctrl-C arrives while this process waits for the workers (they ignore it themselves).
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        list(results)

    assert no_workers_left() and not marker.exists()


def dies(task: int) -> int:
    if task == 3:
        os._exit(3)  # as if killed
    return task


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_that_dies_is_an_error_not_a_hang(method):
    with pytest.raises(FerError, match="worker process died"):
        list(run_tasks(dies, list(range(20)), 2, start_method=method))
    assert no_workers_left()


def unsendable(task: int):
    return threading.Lock() if task == 2 else task


def test_a_result_that_cannot_be_passed_back_is_an_error():
    with pytest.raises(RuntimeError, match="cannot be passed on"):
        list(run_tasks(unsendable, list(range(8)), 2))
    assert no_workers_left()


def counts_aloud(task: int) -> int:
    for step in range(3):
        notify((task, step))
    return task


@pytest.mark.parametrize("tasks, ordered", [([5], True), (list(range(6)), False)])
def test_messages_of_a_task_arrive_before_its_result(tasks, ordered):
    received = []
    seen = []
    for result in run_tasks(counts_aloud, tasks, 2, ordered=ordered, on_message=received.append):
        seen.append(result)
        its_own = [(task, step) for task, step in received if task == result]
        assert its_own == [(result, 0), (result, 1), (result, 2)]

    assert sorted(seen) == tasks and len(received) == 3 * len(tasks)


def test_batches_keep_every_worker_busy_to_the_end():
    items = list(range(1000))

    parts = batches(items, 2)

    assert [item for part in parts for item in part] == items
    assert max(len(part) for part in parts) == parallel.BATCH and len(parts) >= 16
    assert [len(part) for part in batches(items[:10], 2)] == [1] * 10  # every worker gets some
    assert [len(part) for part in batches(items[:40], 1)] == [16, 16, 8]  # one process: large


def test_preprocess_where_workers_are_spawned_gives_what_one_process_gives(
    make_folders, tmp_path, monkeypatch
):
    # A platform without fork: the workers are new interpreters that load everything anew.
    from fercli.data.prepared import load_dataset
    from fercli.data.preprocess import preprocess_dataset

    names = [f"{index}.png" for index in range(5)]
    root = make_folders({"happy": names, "sad": names})
    write_image(root / "sad" / "blank.png", np.full((120, 120), 128, np.uint8))
    crops = {}
    for workers in (1, 2):
        monkeypatch.setenv("FER_HOME", str(tmp_path / f"home-{workers}"))
        monkeypatch.setattr(parallel, "default_start_method", lambda: "spawn")
        report = preprocess_dataset(root, workers=workers)
        assert report.workers == workers and report.aligned == 10
        assert [Path(item.path).name for item in report.skipped] == ["blank.png"]
        crops[workers] = load_dataset(report.dataset).crops

    np.testing.assert_array_equal(crops[1], crops[2])


def test_the_landmark_model_is_converted_once_here_and_shared_with_the_workers(
    make_folders, fer_home, tmp_path, monkeypatch
):
    # The first run converts dlib's model to NumPy arrays: here, before the workers fork,
    # rather than in each of them; they use what this process converted and stored.
    from fercli.data.preprocess import preprocess_dataset
    from fercli.faces import align, predictor_file

    names = [f"{index}.png" for index in range(6)]
    root = make_folders({"happy": names, "sad": names})
    conversions = tmp_path / "conversions"
    real = predictor_file.parse_shape_predictor

    def recorded(data: bytes):
        with conversions.open("a") as record:
            record.write(f"{os.getpid()}\n")
        return real(data)

    monkeypatch.setattr(predictor_file, "parse_shape_predictor", recorded)
    align.landmark_predictor.cache_clear()

    report = preprocess_dataset(root, workers=2)

    assert report.workers == 2 and report.aligned == 12
    assert conversions.read_text().split() == [str(os.getpid())]
    assert align.landmark_predictor.cache_info().currsize == 1
    stored = predictor_file.stored_paths(align.predictor_path(), fer_home / "dlib")
    assert all(path.is_file() for path in stored)


@pytest.mark.parametrize("in_process", [True, False])
def test_no_tasks_no_workers(in_process):
    results = run_tasks(square, [], 2, set_up, in_process=in_process)

    assert list(results) == [] and no_workers_left()
    results.close()  # a generator like any other: callers close it


def test_a_failing_fold_is_reported_with_its_number_and_the_other_folds_stopped():
    from fercli.core.config import TrainConfig
    from fercli.learn.engines import LocalEngine
    from fercli.learn.folds import FoldTask

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (40, 32, 32), dtype=np.uint8)
    targets = np.arange(40) % 2  # class numbers, as selections hold them
    everything = np.arange(40)
    tasks = [
        FoldTask(
            key=0,
            config=TrainConfig(epochs=100_000),
            fold=0,
            train_index=everything[:30],
            test_index=everything[30:],
        ),
        # Images that are not there: the fold fails at once.
        FoldTask(
            key=1,
            config=TrainConfig(epochs=1),
            fold=1,
            train_index=everything + 1000,
            test_index=everything[:5],
        ),
    ]

    with pytest.raises(FerError, match=r"^training fold 2 failed: IndexError"):
        list(LocalEngine(2).run(crops, targets, 2, tasks))
    assert no_workers_left()  # the endless fold was stopped, not waited for
