"""The progress line of a run on a terminal, and the log handler that writes around it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, TextIO

from orchestrator.learning.eta import describe


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's log handler: clears the progress line of its stream before a record is
    written, and draws it again after, so a warning never lands inside the progress line."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.progress: ProgressPrinter | None = None

    def emit(self, record: logging.LogRecord) -> None:
        progress = self.progress
        if progress is None:
            super().emit(record)
            return
        with progress.lock:
            progress.erase()
            super().emit(record)
            progress.draw()


class ProgressPrinter:
    """Progress on a terminal: one rewritten line per finished step, ending with the run's
    ETA when its workflow gives one (``[3/12] work models · ETA 4m05s``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.line = ""
        self.lock = threading.RLock()  # log records come from worker threads too
        self._handlers = [h for h in logging.getLogger().handlers
                          if isinstance(h, LogHandler) and h.stream is stream]
        if self.enabled:
            for handler in self._handlers:
                handler.progress = self

    def __call__(self, progress: Any) -> None:
        if not self.enabled:
            return
        count = f"[{progress.done}/{progress.total}] " if progress.total else ""
        eta = describe(getattr(progress, "eta", None), time.time())
        with self.lock:
            self.erase()
            self.line = f"{count}{progress.label}"[:100] + (f" · {eta}" if eta else "")
            self.draw()

    def draw(self) -> None:
        if self.line:
            self.stream.write("\r" + self.line)
            self.stream.flush()

    def erase(self) -> None:
        if self.line:
            self.stream.write("\r" + " " * len(self.line) + "\r")
            self.stream.flush()

    def finish(self) -> None:
        with self.lock:
            self.erase()
            self.line = ""
        for handler in self._handlers:
            if handler.progress is self:
                handler.progress = None
