"""run_staged: work that needs a slow-to-load model only part of the way.

Workers start the first stage at once while this process loads (prepare); the second stage
runs in workers started after prepare, which see what it loaded. Every task's result comes
back exactly once, whatever stage finished it.
"""

from __future__ import annotations

import os

import pytest

from fercli.errors import FerError
from fercli.parallel import Pending, run_staged

LOADED: dict[str, int] = {}  # what prepare loaded, and in which process


def prepare() -> None:
    LOADED["by"] = os.getpid()
    LOADED["calls"] = LOADED.get("calls", 0) + 1


def first(task: int, shared: int) -> tuple:
    if task % 3 == 0:
        return Pending(task * shared)  # needs the model
    return ("first", task, os.getpid())


def second(items: list[tuple[int, object]], shared: int) -> list[tuple]:
    results = []
    for task, value in items:
        found = first(task, shared) if value is None else Pending(value)
        if not isinstance(found, Pending):
            results.append(found)
            continue
        results.append(("second", task, found.value, LOADED.get("by"), len(items)))
    return results


@pytest.fixture(autouse=True)
def nothing_loaded():
    LOADED.clear()
    yield
    LOADED.clear()


def test_every_task_once_and_the_second_stage_sees_what_prepare_loaded():
    results = list(run_staged(first, second, prepare, list(range(60)), 10, workers=2))

    assert sorted(result[1] for result in results) == list(range(60))
    assert LOADED == {"by": os.getpid(), "calls": 1}  # loaded once, here
    seconds = [result for result in results if result[0] == "second"]
    assert [result[1] for result in sorted(seconds)] == list(range(0, 60, 3))
    # Found by the first stage, finished by workers forked after prepare.
    assert all(result[2] == result[1] * 10 and result[3] == os.getpid() for result in seconds)
    firsts = [result for result in results if result[0] == "first"]
    assert firsts and all(result[2] != os.getpid() for result in firsts)  # ran in workers


@pytest.mark.parametrize("workers", [1, 2])
def test_the_second_stage_gets_tasks_in_batches(workers):
    # Batches let the second stage do some work for several tasks at once (landmarks).
    results = list(run_staged(first, second, prepare, list(range(300)), 10, workers=workers))

    assert sorted(result[1] for result in results) == list(range(300))
    batch_sizes = [result[4] for result in results if result[0] == "second"]
    assert len(batch_sizes) == 100 and max(batch_sizes) > 1
    assert max(batch_sizes) <= 16


@pytest.mark.parametrize("workers", [1, 2])
def test_quick_loading_needs_no_first_stage_and_no_prepare(workers):
    # What prepare would load maps from disk in milliseconds: every task goes straight to
    # second, in workers that load what they need themselves.
    results = list(run_staged(first, second, prepare, list(range(60)), 10, workers=workers, quick=True))

    assert sorted(result[1] for result in results) == list(range(60))
    assert LOADED == {}
    seconds = [result for result in results if result[0] == "second"]
    assert [result[1] for result in sorted(seconds)] == list(range(0, 60, 3))
    assert all(result[2] == result[1] * 10 and result[3] is None for result in seconds)
    worker_pids = {result[2] for result in results if result[0] == "first"}
    assert (os.getpid() in worker_pids) == (workers == 1)


def test_prepare_is_not_called_when_nothing_is_pending():
    results = list(run_staged(first, second, prepare, [1, 2, 4, 5, 7, 8, 10, 11], 1, workers=2))

    assert sorted(result[1] for result in results) == [1, 2, 4, 5, 7, 8, 10, 11]
    assert {result[0] for result in results} == {"first"}
    assert LOADED == {}


def test_one_process_when_there_are_few_tasks():
    results = list(run_staged(first, second, prepare, [0, 1, 2], 5, workers=2))

    assert sorted(results) == [("first", 1, os.getpid()), ("first", 2, os.getpid()), ("second", 0, 0, os.getpid(), 1)]


def fails_once(task: int, shared: str) -> tuple:
    if task == 5 and os.getpid() != int(shared):
        raise ValueError("only in a first-stage worker")
    return ("first", task, os.getpid())


def finish_any(items: list[tuple[int, object]], shared: str) -> list[tuple]:
    return [("second", task, value, os.getpid()) for task, value in items]


def test_a_task_whose_first_stage_failed_is_done_again_by_the_second():
    tasks = list(range(20))

    results = list(run_staged(fails_once, finish_any, prepare, tasks, str(os.getpid()), workers=2))

    assert sorted(result[1] for result in results) == tasks
    # The failed task and the rest of that worker's share, done whole by the second stage.
    redone = [result for result in results if result[0] == "second"]
    assert 5 in {result[1] for result in redone}
    assert all(result[2] is None for result in redone)


def dies(task: int, shared: None) -> tuple:
    if task == 3:
        os._exit(3)  # as if killed
    return ("first", task)


def test_a_first_stage_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(FerError, match="worker process died"):
        list(run_staged(dies, finish_any, prepare, list(range(20)), None, workers=2))
