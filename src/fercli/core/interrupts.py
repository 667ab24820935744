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
and the caller's try/except around the work still sees what is raised.
"""

from __future__ import annotations

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
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
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
