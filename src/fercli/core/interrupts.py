"""Ctrl-C while a long run finishes: held back where raising it would throw finished work
away, raised where it only stops work that can be left out.

    with Interrupts() as interrupts:
        train()                      # Ctrl-C raises KeyboardInterrupt, as usual
        interrupts.hold()            # from here on a Ctrl-C is only remembered
        with interrupts.allowed():   # ...but raised here, for work that may be skipped
            draw_pictures()
        write_files()
    if interrupts.received: ...      # a Ctrl-C came at some point

Python raises KeyboardInterrupt wherever the main thread happens to be, so a Ctrl-C at the
wrong moment (while a report is written, or a model checked) would cost everything a
cross-validation had trained. Only in the main thread and over Python's own SIGINT handler:
elsewhere (a thread, a caller with a handler of its own, SIGINT ignored) nothing changes,
and the caller's try/except around the work still sees what is raised. Within another
Interrupts (a command around the library call that holds them), `with Interrupts()` gives
that one: what the library holds stays held while the command prints its result.

Once a command has printed its outcome, a Ctrl-C must not change it: ignore_at_exit.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType


class Interrupts:
    """Ctrl-C (SIGINT) raised, held back or remembered, as the work in hand allows."""

    def __init__(self) -> None:
        self.received = False  # a Ctrl-C came (raised, held back or caught by the caller)
        self._holding = False
        self._installed = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self
        handler = signal.getsignal(signal.SIGINT)
        outer = getattr(handler, "__self__", None)
        if isinstance(outer, Interrupts):
            return outer  # one Ctrl-C, one state: the outer one's, held past this block
        if handler is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = True
        if not self._holding:
            raise KeyboardInterrupt

    def hold(self) -> None:
        """From now on a Ctrl-C is remembered (received), not raised."""
        self._holding = True

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """Within, a Ctrl-C raises KeyboardInterrupt again (work that may be left out); one
        that came before raises at once."""
        if self.received:
            raise KeyboardInterrupt
        holding, self._holding = self._holding, False
        try:
            yield
        finally:
            self._holding = holding


_ignoring_at_exit = False


def ignore_at_exit() -> None:
    """A Ctrl-C while the process exits is ignored, not turned into a death by SIGINT.

    Python puts SIGINT back to its default action (ending the process, status 130) before it
    unloads its modules, which with TensorFlow loaded takes most of a second: a Ctrl-C then
    would turn a command that has saved its work and printed its outcome into a bare 130,
    with nothing said. Called by a command once its work is saved; takes effect only at exit
    (atexit), and only over Python's own SIGINT handler, so a process that goes on (a test,
    a caller of the library) keeps its Ctrl-C.
    """
    global _ignoring_at_exit
    if not _ignoring_at_exit:
        atexit.register(_ignore_sigint)
        _ignoring_at_exit = True


def _ignore_sigint() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
