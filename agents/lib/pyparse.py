"""The one lock every ``ast.parse`` in the agents takes.

CPython 3.11's compiler keeps its AST recursion-depth counter per interpreter, so parsing in
several threads at once fails with "SystemError: AST constructor recursion depth mismatch"
(seen with the docs agent rendering modules concurrently), and ``warnings.catch_warnings`` is
not thread-safe either. Parsing holds the GIL anyway, so serializing it costs no throughput;
it must be one lock for the whole process, whichever agent parses.
"""

from __future__ import annotations

import threading

__all__ = ["PARSE_LOCK"]

PARSE_LOCK = threading.Lock()
