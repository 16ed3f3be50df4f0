"""Which Chromium Playwright drives, how it is launched, and how it signs in to the console
(shared by the browser tests and ``bench/browser.py``).

Playwright cannot download its own browsers here, so it drives the system's Chromium
(Debian's ``chromium``; ``.ci/run`` installs it when missing) through ``executable_path``.
``ORCHESTRATOR_TEST_CHROMIUM`` names another binary. Outside CI a machine without one skips
the browser tests, saying why; under ``CI=true`` a missing browser is a failure, so CI can
never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

__all__ = ["find_chromium", "missing_reason", "launch_args", "in_ci", "sign_in"]

_NAMES = ("chromium", "chromium-browser")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``ORCHESTRATOR_TEST_CHROMIUM``, else one on ``PATH``."""
    named = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_reason() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if find_chromium() is None:
        named = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM")
        if named:
            return f"ORCHESTRATOR_TEST_CHROMIUM={named} is not an executable file"
        return ("no Chromium found (apt-get install chromium, or set "
                "ORCHESTRATOR_TEST_CHROMIUM to a Chromium binary)")
    return None


def launch_args() -> dict[str, Any]:
    """Keyword arguments of ``playwright.chromium.launch``: the system binary, headless.
    Chromium refuses to run as root with its sandbox (containers, CI), so root drops it."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return {"executable_path": find_chromium(), "headless": True, "args": args}


async def sign_in(page: Any, base_url: str, token: str) -> None:
    """Sign in through the form at ``/login``, as a person would; lands on the console."""
    await page.goto(f"{base_url}/login")
    await page.fill("[data-testid=token]", token)
    await page.click("[data-testid=sign-in]")
    await page.wait_for_url(f"{base_url}/console/**", timeout=10_000)
