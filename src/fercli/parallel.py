"""Spreading per-image work over the machine's cores (preprocess and predict share this)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any


def default_workers() -> int:
    """One worker per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _context():
    # fork starts a worker in milliseconds and shares what the parent has imported; only
    # Linux gets it, because fork is unsafe with macOS system libraries.
    if os.uname().sysname == "Linux" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_state: dict[str, Any] = {}


def _start(function: Callable, shared: Any) -> None:
    # Ctrl-C is the parent's to handle: it stops the pool and says how far it got.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    # One process per core already; OpenCV's own threads would only compete with them.
    cv2.setNumThreads(1)
    _state["function"] = function
    _state["shared"] = shared


def _call(task: Any) -> Any:
    return _state["function"](task, _state["shared"])


def run_tasks(function: Callable[[Any, Any], Any], tasks: list, shared: Any, workers: int) -> Iterator:
    """Yield function(task, shared) for every task, in completion order.

    function must be a module-level function (workers find it by name). A handful of tasks
    run in this process, where starting workers would cost more than it saves.
    """
    if workers <= 1 or len(tasks) < 2 * workers:
        for task in tasks:
            yield function(task, shared)
        return
    import cv2

    # A forked worker inherits OpenCV's thread pool without its threads and can hang for
    # ever in its first OpenCV call (cv2.setNumThreads in _start) if this process had used
    # those threads. Stopping them while the pool lives (it may fork replacements) gives
    # every worker a clean, single-threaded OpenCV.
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        pool = _context().Pool(workers, initializer=_start, initargs=(function, shared))
        try:
            chunk = max(1, min(16, len(tasks) // (workers * 8)))
            yield from pool.imap_unordered(_call, tasks, chunksize=chunk)
            pool.close()
        finally:
            pool.terminate()
            pool.join()
    finally:
        cv2.setNumThreads(opencv_threads)
