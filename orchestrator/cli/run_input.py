"""The input of ``orchestrator run``: ``--input FILE`` (or ``-`` for stdin) and ``--set KEY=VALUE``,
read as bounded UTF-8 JSON (a FILE named ``*.yaml``/``*.yml``: YAML, without anchors/aliases)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from .exits import UsageError

# Bounds on what ``run`` accepts: a workflow's input is stored in its record and in every
# checkpoint, so a multi-megabyte value is a mistake, and a deeply nested one only crashes
# whatever walks it recursively later (the JSON decoder, pydantic, psycopg).
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_INPUT_DEPTH = 100


def _utf8(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8 text (argv smuggles undecodable bytes in as surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text") from None
    return value


def _read_input(source: str, stdin: TextIO) -> str:
    """The text of ``--input`` (a file, or ``-`` for stdin), at most MAX_INPUT_BYTES of UTF-8."""
    limit = MAX_INPUT_BYTES
    try:
        if source == "-":
            binary = getattr(stdin, "buffer", None)
            raw: bytes | str = (binary.read(limit + 1) if binary is not None
                                else stdin.read(limit + 1))
        else:
            with open(source, "rb") as fh:
                raw = fh.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --input {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # a text stdin that cannot decode what it was given
        raise UsageError(f"--input {source} is not UTF-8 text") from None
    size = len(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise UsageError(f"--input {source} is larger than {limit // (1024 * 1024)} MiB; "
                         "a workflow input holds paths and settings, not data")
    if isinstance(raw, str):
        return _utf8(raw, f"--input {source}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--input {source} is not UTF-8 text (byte {exc.start}: "
                         f"{raw[exc.start:exc.start + 1]!r})") from None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _load_json(text: str, what: str, *, lenient: bool = False) -> Any:
    """``text`` decoded as JSON, refused when it nests too deep; ``lenient``: text that is
    not JSON is returned as it is (``--set name=value``)."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        if lenient:
            return text
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder gave up: deeper than the interpreter's stack
        loaded, deep = None, True
    else:
        deep = _too_deep(loaded, MAX_INPUT_DEPTH)
    if deep:
        raise UsageError(f"{what} nests lists or objects more than {MAX_INPUT_DEPTH} levels deep")
    return loaded


def _load_yaml(text: str, what: str) -> Any:
    """``text`` read as YAML (safe types only; an alias is refused: expanded aliases can make a
    small file a huge value), refused when it nests too deep."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise UsageError(f"{what}: YAML aliases (*name) are not accepted; write the "
                                 "value out")
            return super().compose_node(parent, index)

    try:
        loaded = yaml.load(text, Loader=_NoAliases)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} is not valid YAML: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what} nests lists or objects more than {MAX_INPUT_DEPTH} levels "
                         "deep") from None
    if _too_deep(loaded, MAX_INPUT_DEPTH):
        raise UsageError(f"{what} nests lists or objects more than {MAX_INPUT_DEPTH} levels deep")
    return loaded


def parse_input(args: argparse.Namespace, stdin: TextIO) -> dict[str, Any]:
    data: dict[str, Any] = {}
    size = 0
    if args.input:
        text = _read_input(args.input, stdin)
        size += len(text)
        yaml_file = args.input.lower().endswith((".yaml", ".yml"))
        loaded = (_load_yaml if yaml_file else _load_json)(text, f"--input {args.input}")
        if not isinstance(loaded, dict):
            raise UsageError(f"--input {args.input} must hold a "
                             f"{'YAML mapping' if yaml_file else 'JSON object'}")
        data.update(loaded)
    for item in args.set:
        key, sep, raw = _utf8(item, "--set").partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item[:200]!r}")
        size += len(raw)
        data[key] = _load_json(raw, f"--set {key}", lenient=True)
    if size > MAX_INPUT_BYTES:
        raise UsageError(f"the input is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; "
                         "a workflow input holds paths and settings, not data")
    return data
