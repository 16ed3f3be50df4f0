"""Installs the tests' socket guard (tests/support/socket_guard.py) in a process started with
this folder on its PYTHONPATH: a subprocess of an LLM test may not leave loopback either."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_orchestrator_tests_socket_guard", Path(__file__).parent.parent / "socket_guard.py")
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)
_guard.install()
