"""Where folds train: this machine's cores, or a Ray cluster.

An engine takes the shared data of a cross-validation (crops, targets, class count) and a
list of fold tasks (fercli.learn.folds.FoldTask) and yields each task's FoldOutcome as soon as
it finishes, in completion order. Both engines run a fold through folds.train_fold in a
process with one TensorFlow thread and op determinism, so a fold gives the same numbers,
to the last digit, on either engine (on the same machine and library versions).

Ctrl-C (a KeyboardInterrupt while the caller reads results) stops the running folds at once
and propagates; what was yielded before is the caller's to keep.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from fercli.core.errors import EngineError, FerError
from fercli.core.events import Event, Progress
from fercli.core.parallel import default_workers, notify, run_tasks

if TYPE_CHECKING:
    from fercli.learn.folds import FoldOutcome, FoldTask

RAY_INSTALL = "pip install 'fercli[ray]'"


def _fold_failed(task: FoldTask, error: BaseException) -> FerError:
    return FerError(f"training fold {task.fold + 1} failed: {type(error).__name__}: {error}")


# --- this machine ---------------------------------------------------------------------


def _set_up_fold_worker() -> None:
    """The set-up of a fold worker process: one TensorFlow thread, op determinism."""
    from fercli.learn.fitting import configure_tensorflow

    configure_tensorflow(threads=1)
    _quiet_retracing()


def _quiet_retracing() -> None:
    """A worker trains fold after fold, each with its own tf.function: TensorFlow then warns
    about "retracing", which is expected here and would only clutter the terminal."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def _run_fold(
    crops: np.ndarray, targets: np.ndarray, num_classes: int, task: FoldTask
) -> FoldOutcome:
    """train_fold in a worker; its epochs go to the engine's caller as progress events."""
    from fercli.learn.folds import train_fold

    def on_epoch(
        epoch: int, loss: float, accuracy: float, validation: float | None, epochs: int
    ) -> None:
        notify(
            Event(
                "epoch",
                fold=task.fold,
                key=task.key,
                epoch=epoch,
                epochs=epochs,
                loss=loss,
                accuracy=accuracy,
                validation_accuracy=validation,
            )
        )

    try:
        return train_fold(crops, targets, num_classes, task, on_epoch)
    except Exception as error:
        raise _fold_failed(task, error) from error


class LocalEngine:
    """Folds in worker processes on this machine, one TensorFlow thread each (on a small
    network two single-threaded processes use two cores better than one with two threads)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def describe(self, task_count: int) -> dict:
        return {"name": self.name, "workers": self._count(task_count)}

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def _count(self, task_count: int) -> int:
        return max(1, min(self.workers or default_workers(), task_count or 1))

    def run(
        self,
        crops: np.ndarray,
        targets: np.ndarray,
        num_classes: int,
        tasks: list[FoldTask],
        progress: Progress | None = None,
    ) -> Iterator[FoldOutcome]:
        """Yield train_fold's FoldOutcome for every task, as each finishes."""
        if not tasks:
            return
        # spawn: TensorFlow's threads and state do not survive a fork. A fold that fails stops
        # the others at once: they write nothing, and may have minutes to go.
        yield from run_tasks(
            partial(_run_fold, crops, targets, num_classes),
            tasks,
            self._count(len(tasks)),
            _set_up_fold_worker,
            ordered=False,
            in_process=False,
            finish_running=False,
            on_message=progress,
            start_method="spawn",
        )


# --- a Ray cluster --------------------------------------------------------------------

CONNECT_SECONDS = 5.0


def code_identity() -> dict:
    """What must be the same where folds run for their numbers to compare: fercli's version
    and a digest of its code, and the versions of the libraries that compute a fold."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    from fercli.core.version import VERSION

    # Every source file of the package, subpackages and the live page's static files included,
    # by its path inside the package: a change anywhere in the code changes the digest.
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".html", ".css", ".js"):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    versions = {}
    for package in ("numpy", "keras", "tensorflow", "tensorflow-cpu", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"fercli": VERSION, "code": digest.hexdigest()[:16], **versions}


def _ray_fold(
    crops: np.ndarray, targets: np.ndarray, num_classes: int, task: FoldTask
) -> FoldOutcome:
    """A fold as a Ray task (crops and targets come from the object store)."""
    from fercli.learn.fitting import configure_tensorflow
    from fercli.learn.folds import train_fold

    configure_tensorflow(threads=1)
    _quiet_retracing()
    return train_fold(crops, targets, num_classes, task)


def _auto_address() -> str:
    """The address `ray.init(address="auto")` would use: $RAY_ADDRESS, else the cluster
    last started on this machine; EngineError if there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        address = canonicalize_bootstrap_address("auto")
    except Exception:  # a private function of Ray's: if it moves, let ray.init decide
        return ""
    if not address:
        raise EngineError(
            "--ray auto: no Ray cluster runs on this machine "
            "(start one with `ray start --head`, or give --ray HOST:PORT)"
        )
    return address


def _check_reachable(address: str, asked: str | None = None) -> None:
    """EngineError within seconds if nothing listens at host:port (ray.init would wait)."""
    if not address:
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray {address!r}: give HOST:PORT of a Ray cluster's head, or auto")
    where = f"{address} (the address of --ray {asked})" if asked else address
    try:
        with socket.create_connection(
            (host.strip("[]"), int(port)), timeout=CONNECT_SECONDS
        ) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS head answers a TLS handshake, not a plain HTTP/2 preface
            answer = _http2_answer(connection)
    except TimeoutError:
        raise EngineError(
            f"something listens at {where} but does not answer within {CONNECT_SECONDS:g} s: "
            "not a Ray cluster's head (its GCS port, 6379 by default)"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise EngineError(f"no Ray cluster answers at {where} ({reason})") from None
    if len(answer) < 9 or answer[3] != HTTP2_SETTINGS:
        raise EngineError(
            f"{where} answers, but not as a Ray cluster's head (no gRPC there): give the "
            "address `ray start --head` printed"
        )


# A Ray cluster's head (its GCS) speaks gRPC, that is HTTP/2: to a client's connection preface
# it answers with a SETTINGS frame at once. Something that accepts connections and never
# answers would keep ray.init waiting for minutes; this finds it within CONNECT_SECONDS.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_SETTINGS = 0x4
EMPTY_SETTINGS_FRAME = bytes([0, 0, 0, HTTP2_SETTINGS, 0, 0, 0, 0, 0])


def _http2_answer(connection: socket.socket) -> bytes:
    """The first bytes (up to a frame header) a server sends back to an HTTP/2 preface;
    TimeoutError if it sends nothing within the connection's timeout."""
    connection.sendall(HTTP2_PREFACE + EMPTY_SETTINGS_FRAME)
    answer = b""
    while len(answer) < 9:
        chunk = connection.recv(9 - len(answer))
        if not chunk:
            break
        answer += chunk
    return answer


class RayEngine:
    """Each fold a Ray task (num_cpus=1) on a running Ray cluster; the data goes into the
    object store once. Connects when first run; reuses a connection this process already has
    (ray.init called before, as the tests do)."""

    name = "ray"

    def __init__(self, address: str = "auto") -> None:
        self.address = address
        self._ray = None
        self._connected_here = False
        self.cpus: int | None = None

    def describe(self, task_count: int) -> dict:
        return {"name": self.name, "address": self.address, "workers": self.cpus}

    def connect(self):
        """Connect (once) and check that the cluster runs this code; returns the ray module."""
        if self._ray is not None:
            return self._ray
        if self.address != "auto":
            _check_reachable(self.address)  # before the slow import of ray
        try:
            import ray
        except ImportError:
            raise EngineError(f"--ray needs Ray: {RAY_INSTALL}") from None
        if not ray.is_initialized():
            from fercli.media.images import quiet_stderr

            if self.address == "auto":
                # Ray would wait for ever on the address a cluster that has gone left behind.
                _check_reachable(_auto_address(), asked="auto")
            try:
                with quiet_stderr():
                    ray.init(
                        address=self.address,
                        logging_level="ERROR",
                        log_to_driver=False,
                        include_dashboard=False,
                    )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise EngineError(
                    f"cannot connect to a Ray cluster at {self.address}: "
                    f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                ) from None
            self._connected_here = True
        self._ray = ray
        try:
            self._check_code(ray)
        except BaseException:
            self.close()
            raise
        self.cpus = int(ray.cluster_resources().get("CPU", 0))
        return ray

    def _check_code(self, ray) -> None:
        here = code_identity()
        probe = ray.remote(num_cpus=0)(code_identity)
        try:
            there = ray.get(probe.remote(), timeout=120)
        except Exception as error:
            raise EngineError(
                f"the Ray cluster at {self.address} cannot run fercli "
                f"({type(error).__name__}); install fercli {here['fercli']} there"
            ) from None
        if there != here:
            differences = ", ".join(
                f"{key} {there.get(key)} there, {here.get(key)} here"
                for key in sorted(set(here) | set(there))
                if here.get(key) != there.get(key)
            )
            raise EngineError(
                f"the Ray cluster at {self.address} runs other code ({differences}): "
                "its results would not be comparable; install this fercli there"
            )

    def __enter__(self) -> RayEngine:
        self.connect()  # a cluster that is not there fails the command before any work
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect, if this engine connected (a connection made before is left open)."""
        if self._ray is not None and self._connected_here:
            self._ray.shutdown()
        self._ray = None
        self._connected_here = False

    def run(
        self,
        crops: np.ndarray,
        targets: np.ndarray,
        num_classes: int,
        tasks: list[FoldTask],
        progress: Progress | None = None,
    ) -> Iterator[FoldOutcome]:
        """Yield train_fold's FoldOutcome for every task, as each finishes."""
        if not tasks:
            return
        ray = self.connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_fold)
        crops_ref, targets_ref = ray.put(crops), ray.put(targets)
        pending = {remote.remote(crops_ref, targets_ref, num_classes, task): task for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for reference in done:
                    task = pending.pop(reference)
                    try:
                        result = ray.get(reference)
                    except ray.exceptions.RayError as error:
                        cause = getattr(error, "cause", None) or error
                        raise _fold_failed(task, cause) from None
                    yield result
        finally:
            for reference in pending:
                ray.cancel(reference, force=True)


def make_engine(ray_address: str | None, workers: int | None = None):
    """The engine a command asked for: Ray at ray_address ("auto": the cluster this machine
    belongs to), else this machine with workers processes."""
    if ray_address is not None and not ray_address.strip():
        # An empty $RAY_HEAD in a script: running here instead, silently, would mislead.
        raise EngineError("--ray '': give HOST:PORT of a Ray cluster's head, or auto")
    return RayEngine(ray_address) if ray_address else LocalEngine(workers)
