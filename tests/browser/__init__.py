"""The console in a real browser: Playwright driving the system's Chromium against a real
``orchestrator serve`` process (issue 14, item 4)."""
