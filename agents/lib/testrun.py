"""Reading a test run's output: pytest's and unittest's counts and failed tests."""

from __future__ import annotations

import re

__all__ = ["parse_test_counts", "test_failures"]

_PYTEST_COUNT = re.compile(
    r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def parse_test_counts(output: str) -> dict[str, int]:
    """Test counts from the last summary line of pytest or unittest output."""
    counts: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        found = _PYTEST_COUNT.findall(line)
        if found and (" in " in line or line.startswith("=")):
            for number, word in found:
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(number)
            return counts
    ran = re.search(r"^Ran (\d+) tests?", output, re.M)
    if ran:  # unittest: "Ran N tests" then "OK" or "FAILED (failures=1, errors=2)"
        total = int(ran.group(1))
        bad = {k: int(v) for k, v in re.findall(r"(failures|errors|skipped)=(\d+)", output)}
        counts = {"failed": bad.get("failures", 0), "errors": bad.get("errors", 0),
                  "skipped": bad.get("skipped", 0)}
        counts["passed"] = total - sum(counts.values())
    return counts


_UNITTEST_HEADER = re.compile(
    r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^()\s]+)\)(.*)$")
_RULE = re.compile(r"^(=|-){20,}$")


def test_failures(output: str) -> list[str]:
    """The failed tests named in pytest's or unittest's output: ``<test id> - <error>``.

    pytest: its short summary (``FAILED tests/test_x.py::test_y - assert ...``). unittest:
    each ``FAIL: test_y (tests.test_x.Case.test_y)`` block, as ``tests.test_x.Case.test_y``
    (the id ``python -m unittest`` takes) with the last line of its traceback.
    """
    failures: list[str] = []
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(("FAILED ", "ERROR ")):
            rest = line.split(" ", 1)[1]
            if not rest.startswith("("):  # not unittest's "FAILED (failures=1)"
                failures.append(rest)
            continue
        header = _UNITTEST_HEADER.match(line)
        if header is None or index == 0 or not _RULE.match(lines[index - 1]):
            continue
        kind, name, where, rest = header.groups()
        if where.startswith("unittest.") or where == name or where.endswith(f".{name}"):
            test_id = name if where.startswith("unittest.") else where  # (import failure: name)
        else:  # Python before 3.11 names the class only
            test_id = f"{where}.{name}"
        test_id += rest.rstrip()  # a subtest's " [message] (i=1)"
        message = ""
        for body in lines[index + 2:]:  # after the "-----" rule, up to the next rule
            if _RULE.match(body):
                break
            if body.strip():
                message = body.strip()
        if kind == "UNEXPECTED SUCCESS":
            message = "unexpected success"
        failures.append(f"{test_id} - {message}" if message else test_id)
    return failures
