"""Running many tasks on all cores: one small pool of worker processes, which preprocess,
predict and cross-validation share.

    from fercli.core.parallel import default_workers, run_tasks

    for result in run_tasks(function, tasks, default_workers(), initializer=set_up):
        ...

run_tasks yields function(task) for every task, in the tasks' order (ordered=False: as each
finishes). The worker processes are started for the call and ended by it, even when the
caller stops reading; they are this module's own (multiprocessing.Process, one pipe each),
so that stopping them never reaches into a library's private state. What a worker needs
besides its tasks goes in function itself (functools.partial(module_function, settings=...)):
it is handed to each worker once. Set-up a library needs in every worker (one OpenCV thread,
TensorFlow's threads) is the caller's initializer. Rules a caller can rely on:

- A handful of tasks (fewer than two a worker), or workers=1, run in this process, where
  starting workers would cost more than it saves (in_process=False: always in workers).
- Workers are forked where that is safe (Linux), which starts them in milliseconds and
  shares what this process has loaded (a model loaded before the call is loaded in every
  worker); elsewhere they are spawned: function, initializer and tasks must then be
  picklable (module-level functions, partials of them, never the caller's __main__).
  A spawned worker never runs the caller's script: multiprocessing would re-import it (as
  __mp_main__) in every worker, which re-runs a script without an
  `if __name__ == "__main__":` guard, fercli call and all (see _main_hidden). A forked
  worker never frees what this process left for its garbage collector (_garbage_kept_here).
- A task that raises: the same exception is raised here, once the tasks running in other
  workers have finished (finish_running=False: they are stopped at once). Ctrl-C, a caller
  that stops reading (closes the generator) and a worker that dies stop every worker at once;
  a worker that dies is FerError(WORKER_DIED), never a hang.
- Workers ignore Ctrl-C (it is the caller's to handle) and end when this process ends, even
  when it is killed (stop_with_parent).
- From inside a task, notify(message) hands message to on_message in this process (progress
  of a long task); messages of a task arrive before its result.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from multiprocessing.connection import Connection, wait
from typing import Any

WORKER_DIED = "a worker process died (killed, or out of memory); nothing more was processed"
BATCH = 16  # most items in a batch (see batches)


def default_workers() -> int:
    """One worker per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def effective_workers(task_count: int, workers: int) -> int:
    """How many processes run_tasks uses for task_count tasks: a handful of tasks run in this
    process, where starting workers would cost more than it saves."""
    return 1 if workers <= 1 or task_count < 2 * workers else min(workers, task_count)


def batches(items: list, workers: int) -> list[list]:
    """items in batches, for work that is cheaper done for several items together: few round
    trips and batches of up to BATCH items, yet enough batches to keep every worker busy to
    the end (about eight each). The batches are as many as items for a handful of items, so
    effective_workers gives the same count for either."""
    if effective_workers(len(items), workers) == 1:
        size = BATCH
    else:
        size = max(1, min(BATCH, len(items) // (workers * 8)))
    return [items[start : start + size] for start in range(0, len(items), size)]


def default_start_method() -> str:
    # fork starts a worker in milliseconds and shares what the parent has imported; only
    # Linux gets it, because fork is unsafe with macOS system libraries.
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def stop_with_parent() -> None:
    """End this worker process as soon as the process that started it has ended.

    A worker waits for tasks on a pipe, so it never sees its parent go: after `kill -9` of
    fer, or the out-of-memory killer, it would wait for ever, holding its models in memory.
    Called first thing in every worker.
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


# Where notify hands a message: on_message while a task runs in this process; in a worker,
# the pipe to the parent.
_listener: Callable[[Any], None] | None = None


def notify(message: Any) -> None:
    """From inside a task run by run_tasks: hand message (picklable) to run_tasks' on_message
    in the calling process. Does nothing where no one listens."""
    if _listener is not None:
        _listener(message)


def run_tasks(
    function: Callable[[Any], Any],
    tasks: Iterable,
    workers: int,
    initializer: Callable[[], None] | None = None,
    *,
    ordered: bool = True,
    in_process: bool = True,
    finish_running: bool = True,
    on_message: Callable[[Any], None] | None = None,
    start_method: str | None = None,
) -> Iterator:
    """Yield function(task) for every task, computed in up to workers processes (see the
    module's docstring for the rules).

    tasks: a list, or any iterable (read as workers become free, so that a long stream is
    never all in memory; one of unknown length gets workers, if workers > 1, however short it
    turns out). initializer: called once in every worker before its first task (not when the
    tasks run in this process). ordered: results in the tasks' order, with at most
    4 * workers tasks started ahead of the oldest unfinished one; False: each result as soon
    as it is ready. start_method: "fork" or "spawn"; default_start_method() if None.
    """
    count = workers
    if isinstance(tasks, Sized):
        count = effective_workers(len(tasks), workers) if in_process else min(workers, len(tasks))
    if count < 1 or (in_process and count == 1):
        return _run_here(function, tasks, on_message)
    return _run_in_workers(
        function,
        tasks,
        count,
        initializer,
        ordered,
        finish_running,
        on_message,
        start_method or default_start_method(),
    )


def _run_here(function: Callable, tasks: Iterable, on_message: Callable | None) -> Iterator:
    global _listener
    for task in tasks:
        previous, _listener = _listener, on_message
        try:
            result = function(task)
        finally:
            _listener = previous
        yield result


def _run_in_workers(
    function, tasks, count, initializer, ordered, finish_running, on_message, method
) -> Iterator:
    from fercli.core.errors import FerError

    context = multiprocessing.get_context(method)
    numbered = enumerate(tasks)
    processes: dict[Connection, multiprocessing.process.BaseProcess] = {}
    idle: list[Connection] = []
    busy: dict[Connection, int] = {}  # the task each busy worker is doing
    finished: dict[int, Any] = {}  # results not yet yielded
    started = 0  # tasks handed out
    yielded = 0  # results yielded, in order when ordered
    more = True  # tasks may remain
    stop_now = True  # unless every result was yielded, or a task failed and finish_running

    def hand_out() -> None:
        nonlocal started, more
        while idle and more and not (ordered and started >= yielded + 4 * count):
            try:
                index, task = next(numbered)
            except StopIteration:
                more = False
                return
            connection = idle.pop()
            try:
                connection.send(task)
            except OSError:
                raise FerError(WORKER_DIED) from None
            busy[connection] = index
            started += 1

    try:
        processes.update(_start_workers(context, count, function, initializer, method))
        idle.extend(processes)
        hand_out()
        while busy:
            ready = wait([*busy, *(processes[connection].sentinel for connection in busy)])
            answered = [item for item in busy if item in ready or processes[item].sentinel in ready]
            for connection in answered:
                kind, payload = _receive(connection)
                if kind == "message":
                    if on_message:
                        on_message(payload)
                    continue
                index = busy.pop(connection)
                idle.append(connection)
                if kind == "failed":
                    stop_now = not finish_running
                    raise payload
                finished[index] = payload
            hand_out()
            for index in _in_order(finished, yielded) if ordered else list(finished):
                yield finished.pop(index)
                yielded += 1
            hand_out()
        stop_now = False
    finally:
        _stop(processes, busy, stop_now)


def _start_workers(context, count: int, function, initializer, method: str) -> dict:
    """count worker processes serving function, each with its end of a pipe: {our end: process}."""
    processes = {}
    with _threads_stopped_for_fork(method), _garbage_kept_here(method), _main_hidden(method):
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(theirs, function, initializer), daemon=True
            )
            process.start()
            theirs.close()
            processes[ours] = process
    return processes


@contextlib.contextmanager
def _main_hidden(method: str) -> Iterator[None]:
    """While workers spawn: a stand-in for the caller's __main__, so that multiprocessing does
    not tell them to import the caller's script (spawn.get_preparation_data reads the main
    module's __spec__ and __file__ as the process starts). Nothing a worker runs comes from
    the caller's script, and re-running it would run its fercli call again in every worker:
    without the guard, workers that start workers, and a caller that hangs or fails."""
    if method == "fork":
        yield
        return
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = main


def _in_order(finished: dict[int, Any], next_index: int) -> list[int]:
    """The indexes of finished results that can be yielded in order from next_index on."""
    indexes = []
    while next_index in finished:
        indexes.append(next_index)
        next_index += 1
    return indexes


@contextlib.contextmanager
def _threads_stopped_for_fork(method: str) -> Iterator[None]:
    """A forked child inherits OpenCV's thread pool without its threads and can hang for ever
    in its first OpenCV call if this process had used them: stop them while workers fork."""
    cv2 = sys.modules.get("cv2") if method == "fork" else None
    if cv2 is None:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


@contextlib.contextmanager
def _garbage_kept_here(method: str) -> Iterator[None]:
    """A forked child inherits this process's garbage too: objects in reference cycles that
    the collector has not freed yet. Freed in the child, an OpenCV video reader left by
    earlier work waits for ever on its FFmpeg threads, which the child does not have (seen:
    a video's workers hung in sws_freeContext when their first collection ran). Frozen while
    workers fork, everything that exists now is left to this process's collector."""
    if method != "fork":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _receive(connection: Connection) -> tuple[str, Any]:
    """What a worker sent next; FerError(WORKER_DIED) if it ended without sending anything."""
    from fercli.core.errors import FerError

    try:
        if connection.poll():
            return connection.recv()
    except (EOFError, OSError):
        pass
    raise FerError(WORKER_DIED) from None


def _stop(processes: dict, busy: dict, stop_now: bool) -> None:
    """End every worker: at once (terminate), or after the tasks they are doing."""
    for connection in busy if not stop_now else ():
        try:
            # Its result is not wanted (the run has failed), only its end.
            kind = "message"
            while kind == "message":
                wait([connection, processes[connection].sentinel])
                kind, _ = _receive(connection)
        except Exception:
            stop_now = True  # it died meanwhile
            break
    for connection, process in processes.items():
        if stop_now:
            process.terminate()
        else:
            try:
                connection.send(_Stop)
            except OSError:
                pass
    for connection, process in processes.items():
        process.join()
        connection.close()


class _Stop:
    """Sent to a worker instead of a task: end."""


def _serve(connection: Connection, function: Callable, initializer: Callable | None) -> None:
    """A worker's life: set up, then do the tasks that come through connection until told to
    stop, replying ("done", result) or ("failed", exception) to each."""
    global _listener
    stop_with_parent()
    # Ctrl-C is the parent's to handle: it stops the workers and says how far it got.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def tell_parent(message: Any) -> None:
        connection.send(("message", message))

    _listener = tell_parent
    set_up_failed = None
    try:
        if initializer is not None:
            initializer()
    except Exception as error:
        set_up_failed = error
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is _Stop:
            return
        try:
            if set_up_failed is not None:
                raise set_up_failed
            reply = ("done", function(task))
        except Exception as error:
            reply = ("failed", _sendable(error))
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # a result that cannot be pickled
            unsent = RuntimeError(f"a task's result cannot be passed on: {error}")
            data = pickle.dumps(("failed", unsent))
        try:
            connection.send_bytes(data)
        except OSError:
            return


def _sendable(error: Exception) -> Exception:
    """error, or an error with its message if it would not arrive whole in the parent."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
