"""Spreading per-image work over the machine's cores (preprocess and predict share this)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any


def default_workers() -> int:
    """One worker per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def effective_workers(task_count: int, workers: int) -> int:
    """How many processes run_batches uses: a handful of tasks run in this process, where
    starting workers would cost more than it saves."""
    return 1 if workers <= 1 or task_count < 2 * workers else workers


def _context():
    # fork starts a worker in milliseconds and shares what the parent has imported; only
    # Linux gets it, because fork is unsafe with macOS system libraries.
    if os.uname().sysname == "Linux" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def stop_with_parent() -> None:
    """End this worker process as soon as the process that started it has ended.

    A pool's workers wait for tasks on a pipe they hold both ends of, so they never see their
    parent go: after `kill -9` of fer, or the out-of-memory killer, they would wait for ever,
    each holding its models in memory. Called first thing in every worker.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        # Once the parent has gone, this process is someone else's child.
        while os.getppid() == parent.pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


_state: dict[str, Any] = {}
BATCH = 16  # most tasks handed to a worker at a time
WORKER_DIED = "a worker process died (killed, or out of memory); nothing more was processed"


def _start(function: Callable, shared: Any) -> None:
    stop_with_parent()
    # Ctrl-C is the parent's to handle: it stops the pool and says how far it got.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    # One process per core already; OpenCV's own threads would only compete with them.
    cv2.setNumThreads(1)
    _state["function"] = function
    _state["shared"] = shared


def _call_batch(tasks: list) -> list:
    return _state["function"](tasks, _state["shared"])


def batch_size(task_count: int, workers: int) -> int:
    """Tasks handed to a worker at a time: few round trips, and batches large enough for
    work that is cheaper done together, yet even work for every worker to the end."""
    return max(1, min(BATCH, task_count // (workers * 8)))


def run_batches(function: Callable[[list, Any], list], tasks: list, shared: Any, workers: int) -> Iterator:
    """Yield the results of function(batch, shared), which returns one result for each task
    of a batch (a list of tasks), for every task, batch by batch in completion order.

    function must be a module-level function (workers find it by name); see
    effective_workers for when the tasks run in this process. FerError if a worker dies
    (killed, out of memory) rather than waiting for it for ever.
    """
    if effective_workers(len(tasks), workers) == 1:
        for start in range(0, len(tasks), BATCH):
            yield from function(tasks[start : start + BATCH], shared)
        return
    import cv2

    from fercli.errors import FerError

    # A forked worker inherits OpenCV's thread pool without its threads and can hang for
    # ever in its first OpenCV call (cv2.setNumThreads in _start) if this process had used
    # those threads. Stopping them while the pool lives gives every worker a clean,
    # single-threaded OpenCV.
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    executor = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start, initargs=(function, shared))
    stop_now = True  # Ctrl-C, or the caller stopped reading: do not wait for the workers
    try:
        size = batch_size(len(tasks), workers)
        batches = [executor.submit(_call_batch, tasks[i : i + size]) for i in range(0, len(tasks), size)]
        for batch in as_completed(batches):
            yield from batch.result()
        stop_now = False
    except BrokenProcessPool:
        raise FerError(WORKER_DIED) from None
    except Exception:
        # A task failed (a full disk): the other workers end their current batch rather than
        # being killed half-way through writing a file, which would leave it behind.
        stop_now = False
        raise
    finally:
        if stop_now:
            for process in list((getattr(executor, "_processes", None) or {}).values()):
                process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(opencv_threads)


@dataclass(frozen=True)
class Pending:
    """A first-stage result of run_staged that the second stage still has to finish."""

    value: Any


def _first_stage_worker(first: Callable, tasks: list, shared: Any, part: int, parts: int, stop, results) -> None:
    _start(first, shared)
    try:
        # Every parts-th task from this worker's number on: no counter to share, which would
        # need a file in shared memory (fer must run where no file can grow, a full disk).
        for index in range(part, len(tasks), parts):
            if stop.is_set():
                break
            results.put((index, first(tasks[index], shared)))
    except BaseException:
        # This task and the rest of this worker's share get no result, so the second stage
        # does them whole, in workers whose errors reach the caller (run_batches).
        pass
    finally:
        results.put(None)
        results.close()
        results.join_thread()


def _second_stage(items: list[tuple], shared: tuple) -> list:
    second, task_shared = shared
    return second(items, task_shared)


def run_staged(
    first: Callable[[Any, Any], Any],
    second: Callable[[list[tuple[Any, Any]], Any], list],
    prepare: Callable[[], Any],
    tasks: list,
    shared: Any,
    workers: int,
    quick: bool = False,
) -> Iterator:
    """run_batches for work that needs something slow to load (a model) only part of the way.

    first(task, shared) returns the task's result, or Pending(value) when the rest of its work
    needs what prepare() loads. Workers start on first at once; at the first Pending this
    process calls prepare() while they go on. It then stops them, and new workers, which share
    what prepare loaded instead of each loading their own, finish the rest in batches with
    second(items, shared): items is a list of (task, value), value None for a task not yet
    started, and second returns one result for each. When no task is pending (every result
    was cached), prepare is never called. Yields every task's result, in completion order;
    first and second must be module-level functions (workers find them by name).

    quick: what prepare loads is known to load quickly (a model stored in a form that maps
    from disk). Then there is no first stage to hide the wait: the workers do every task
    through second, value None, and second loads what it needs when it first needs it.
    """
    if quick:
        yield from run_batches(_second_stage, [(task, None) for task in tasks], (second, shared), workers)
        return
    if effective_workers(len(tasks), workers) == 1:
        prepared = False
        for start in range(0, len(tasks), BATCH):
            waiting = []
            for task in tasks[start : start + BATCH]:
                outcome = first(task, shared)
                if isinstance(outcome, Pending):
                    waiting.append((task, outcome.value))
                else:
                    yield outcome
            if waiting and not prepared:
                prepare()
                prepared = True
            if waiting:
                yield from second(waiting, shared)
        return
    import cv2

    from fercli.errors import FerError

    context = _context()
    stop = context.Event()
    results = context.Queue()
    helpers = [
        context.Process(
            target=_first_stage_worker, args=(first, tasks, shared, part, workers, stop, results), daemon=True
        )
        for part in range(workers)
    ]
    pending: dict[int, Any] = {}
    finished: set[int] = set()
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # see run_batches
    try:
        for helper in helpers:
            helper.start()
        running = len(helpers)
        while running:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                if any(helper.exitcode not in (None, 0) for helper in helpers):
                    raise FerError(WORKER_DIED) from None
                continue
            if item is None:
                running -= 1
                continue
            index, outcome = item
            if not isinstance(outcome, Pending):
                finished.add(index)
                yield outcome
                continue
            pending[index] = outcome.value
            if not stop.is_set():
                prepare()  # the workers go on with first meanwhile
                stop.set()
        for helper in helpers:
            helper.join()
    finally:
        for helper in helpers:
            if helper.is_alive():
                helper.terminate()
                helper.join()
        results.close()
        cv2.setNumThreads(opencv_threads)
    # Tasks not started (the whole job each) first, so that the cheap pending ones even out
    # the end between the workers.
    rest = [(task, None) for index, task in enumerate(tasks) if index not in finished and index not in pending]
    rest += [(tasks[index], value) for index, value in sorted(pending.items())]
    yield from run_batches(_second_stage, rest, (second, shared), workers)
