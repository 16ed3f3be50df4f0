"""Reporting a background step whose service is gone: once, not once per retry."""

from __future__ import annotations

import logging
import time

__all__ = ["Outage"]


class Outage:
    """A background step that keeps failing (its service is gone) is reported once, as a
    warning, then at debug level, and once more (info) when it works again: a lost Redis or
    PostgreSQL is one line in the log, not one per retry."""

    def __init__(self, what: str, logger: logging.Logger | None = None) -> None:
        self.what = what
        self.since: float | None = None
        self.log = logger or logging.getLogger(__name__)

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s failed: %s (retrying; no more warnings until it works again)",
                             self.what, exc)
        else:
            self.log.debug("%s failed again: %s", self.what, exc)

    def over(self) -> None:
        if self.since is not None:
            self.log.info("%s works again after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None
