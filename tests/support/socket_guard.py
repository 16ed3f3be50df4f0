"""A guard that refuses every connection off loopback, so a test that would reach a real
provider (or download a tokenizer, a price map...) fails instead of passing on the network.

``install()`` patches ``socket.socket.connect`` / ``connect_ex`` for the whole process (asyncio
and ``socket.create_connection`` go through them). Unix sockets and 127.0.0.0/8, ``::1`` and
``localhost`` pass; anything else raises :class:`OffLoopback` and is recorded in ``refused``,
so a caller that swallows the error still fails the test that installed the guard.
Processes the tests start get the same guard from ``tests/support/guard_site`` on their
``PYTHONPATH`` (:func:`subprocess_env`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

refused: list[Any] = []
_original: dict[str, Any] = {}
GUARD_SITE = Path(__file__).parent / "guard_site"


class OffLoopback(ConnectionRefusedError):
    """A connection off loopback, refused by the tests' socket guard."""


def is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already leave the machine


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
        refused.append(address)
        raise OffLoopback(f"tests allow loopback connections only; refused {address!r}")


def install() -> None:
    if _original:
        return
    _original["connect"] = socket.socket.connect
    _original["connect_ex"] = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        return _original["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return _original["connect_ex"](self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


def uninstall() -> None:
    if _original:
        socket.socket.connect = _original.pop("connect")  # type: ignore[method-assign]
        socket.socket.connect_ex = _original.pop("connect_ex")  # type: ignore[method-assign]


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the guard installed at start-up of any Python process started with it."""
    paths = [str(GUARD_SITE), env.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
