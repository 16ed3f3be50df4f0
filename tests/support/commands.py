"""Commands given to workflows: a traffic command that logs each percentage, a restart spec
for a ``service_app`` service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: ``python -c RECORD <file> <text>`` appends ``<text>`` and a newline to ``<file>``.
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def traffic_log_command(log: Path) -> list[str]:
    """A traffic command (no shell) that appends each percentage to ``log``."""
    return [sys.executable, "-c", RECORD, str(log), "{percent}"]


def lines(path: Path) -> list[str]:
    """The words of ``path`` (what RECORD wrote), or none when it does not exist."""
    return path.read_text().split() if path.exists() else []


def restart_spec(service) -> dict[str, Any]:
    """The infrastructure agent's restart spec for a ``service_app`` service."""
    return {"start": service.argv, "pid_file": str(service.pid_file),
            "log_file": str(service.log_file)}


def heal_input(service, **overrides: Any) -> dict[str, Any]:
    """A ``self_healing`` input for a ``service_app`` service, restarted by its own argv."""
    return {"service": "calc", "health_url": service.url + "/health",
            "restart": restart_spec(service), "verify_timeout": 10, **overrides}
