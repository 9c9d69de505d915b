"""Ctrl-C during training: the first SIGINT asks the loop to stop after the current step (with a
checkpoint), a second one interrupts at once (KeyboardInterrupt)."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """First Ctrl-C (SIGINT) asks the loop to stop after the current step and write a checkpoint;
    a second one interrupts at once. A context manager: the previous handler is back on exit (only
    the main thread installs one)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
