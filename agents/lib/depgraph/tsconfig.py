"""``tsconfig.json`` / ``jsconfig.json``: the ``baseUrl`` and ``paths`` bare specifiers use,
and the ``outDir`` / ``rootDir`` that map a package's build output back to its sources.

:func:`_config_for` finds the nearest config at or above a folder (memoized per folder);
:func:`_load_config` reads one, following relative ``extends`` (a package's config lives in
``node_modules`` and is skipped), in the config dialect with comments and trailing commas
(:func:`_strip_jsonc`); :func:`_match_paths` picks the ``paths`` entry for a specifier by
TypeScript's rule.  How the result resolves a specifier is in
:mod:`orchestrator.agents.lib.depgraph.javascript`.
"""

from __future__ import annotations

import json
import posixpath

from orchestrator.agents.lib.depgraph.repo import _read_text, _Repo, _TsConfig

_EXTENDS_DEPTH = 8


def _match_paths(config: _TsConfig, spec: str) -> tuple[str, tuple[str, ...], str] | None:
    """TypeScript's rule: an exact key, else the wildcard key with the longest prefix."""
    best: tuple[str, tuple[str, ...], str] | None = None
    best_len = -1
    for pattern, targets in config.paths:
        if "*" not in pattern:
            if pattern == spec:
                return pattern, targets, ""
            continue
        head, _, tail = pattern.partition("*")
        if (len(spec) >= len(head) + len(tail) and spec.startswith(head)
                and spec.endswith(tail) and len(head) > best_len):
            best = (pattern, targets, spec[len(head):len(spec) - len(tail)])
            best_len = len(head)
    return best


def _config_for(repo: _Repo, folder: str, errors: dict[str, str]) -> _TsConfig | None:
    """The nearest tsconfig / jsconfig at or above ``folder`` (memoized per folder)."""
    chain: list[str] = []
    config: _TsConfig | None = None
    current = folder
    while True:
        if current in repo.dir_config:
            config = repo.dir_config[current]
            break
        chain.append(current)
        if current in repo.configs:
            config = _load_config(repo, repo.configs[current], errors, 0)
            break
        if not current:
            break
        current = posixpath.dirname(current)
    for visited in chain:
        repo.dir_config[visited] = config
    return config


def _load_config(repo: _Repo, rel: str, errors: dict[str, str], depth: int) -> _TsConfig | None:
    if rel in repo.config_cache:
        return repo.config_cache[rel]
    repo.config_cache[rel] = None  # guards against ``extends`` loops
    text = _read_text(repo, rel)
    if text is None:
        return None
    try:
        data = json.loads(_strip_jsonc(text))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        errors[rel] = f"cannot parse config: {exc}"
        return None
    folder = posixpath.dirname(rel)
    base_url: str | None = None
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    paths_dir = folder
    dirs: dict[str, str | None] = {"outDir": None, "rootDir": None}
    parents = data.get("extends")
    for parent in [parents] if isinstance(parents, str) else parents or []:
        if not isinstance(parent, str) or not parent.startswith("."):
            continue  # a package's config lives in node_modules
        target = posixpath.normpath(posixpath.join(folder, parent))
        if not target.endswith(".json"):
            target += ".json"
        if target.startswith("../") or depth >= _EXTENDS_DEPTH:
            continue
        inherited = _load_config(repo, target, errors, depth + 1)
        if inherited is not None:  # later ``extends`` entries override earlier ones
            if inherited.base_url is not None:
                base_url = inherited.base_url
            if inherited.paths:
                paths, paths_dir = inherited.paths, inherited.paths_dir
            for key, value in (("outDir", inherited.out_dir), ("rootDir", inherited.root_dir)):
                if value is not None:
                    dirs[key] = value
    options = data.get("compilerOptions")
    options = options if isinstance(options, dict) else {}
    if isinstance(options.get("baseUrl"), str):
        base_url = posixpath.normpath(posixpath.join(folder, options["baseUrl"]))
        base_url = "" if base_url == "." else base_url
    for key in dirs:  # relative to the config that sets them, as tsc does
        if isinstance(options.get(key), str):
            joined = posixpath.normpath(posixpath.join(folder, options[key]))
            dirs[key] = "" if joined == "." else joined
    raw_paths = options.get("paths")
    if isinstance(raw_paths, dict):
        parsed = []
        for pattern, targets in raw_paths.items():
            if isinstance(targets, str):
                targets = [targets]
            if isinstance(targets, list):
                parsed.append((pattern, tuple(t for t in targets if isinstance(t, str))))
        paths, paths_dir = tuple(parsed), folder
    config = _TsConfig(base_url=base_url, paths=paths, paths_dir=paths_dir,
                       out_dir=dirs["outDir"], root_dir=dirs["rootDir"])
    repo.config_cache[rel] = config
    return config


def _strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (tsconfig's dialect) -> strict JSON."""
    text = text.lstrip("\ufeff")
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in ``out`` of a comma that may turn out to be trailing
    while i < n:
        char = text[i]
        if char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            pending_comma = -1
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        elif char in "}]":
            if pending_comma >= 0:
                out[pending_comma] = ""
            pending_comma = -1
            out.append(char)
            i += 1
        elif char == ",":
            pending_comma = len(out)
            out.append(char)
            i += 1
        else:
            if not char.isspace():
                pending_comma = -1
            out.append(char)
            i += 1
    return "".join(out)
