"""Graceful interruption: the first SIGINT/SIGTERM asks the loop to save and stop; a second SIGINT exits at once."""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Optional


class StopRequest:
    """Install handlers for SIGINT and SIGTERM; ``requested`` turns true on the first signal.

    Use as a context manager so the previous handlers come back afterwards.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        del frame
        if self.requested and signum == signal.SIGINT:
            sys.stderr.write("\nSecond interrupt: exiting now without saving.\n")
            sys.stderr.flush()
            os._exit(130)
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        sys.stderr.write(f"\n{self.signal_name} received: finishing the current step, saving a checkpoint, "
                         "then exiting (press Ctrl-C again to exit at once).\n")
        sys.stderr.flush()

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
