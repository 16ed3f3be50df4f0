"""The repository graph of multi_repo_change: manifests read from real files, the order,
batches and bundles, and the errors for cycles and unknown names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from orchestrator.workflows.repo_graph import (
    RepoCycleError,
    manifest_dependencies,
    order_repositories,
)


def _repos(root: Path, *names: str) -> dict[str, Path]:
    out = {}
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        out[name] = root / name
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- manifests ------------------------------------------------------------------------------


def test_pep621_uv_and_poetry_path_dependencies(tmp_path) -> None:
    repos = _repos(tmp_path, "lib", "util", "service", "app", "tool", "other")
    _write(repos["service"] / "pyproject.toml", """
[project]
name = "service"
dependencies = ["lib @ file:../lib", "requests>=2", "other @ https://example.com/o.whl"]
[project.optional-dependencies]
extra = ["util[fast] @ file:///{} ; python_version >= '3.8'"]
""".format((tmp_path / "util").as_posix().lstrip("/")))
    _write(repos["app"] / "pyproject.toml", """
[project]
name = "app"
dependencies = ["service", "lib"]
[tool.uv.sources]
service = { path = "../service", editable = true }
lib = [{ path = "../lib", marker = "sys_platform == 'linux'" }, { index = "pypi" }]
""")
    _write(repos["tool"] / "pyproject.toml", """
[tool.poetry.dependencies]
python = "^3.11"
app = { path = "../app/", develop = true }
[tool.poetry.group.dev.dependencies]
util = { path = "../util" }
""")
    deps = manifest_dependencies(repos)
    assert deps == {"lib": set(), "util": set(), "other": set(),
                    "service": {"lib", "util"}, "app": {"service", "lib"},
                    "tool": {"app", "util"}}


def test_pdm_dependency_groups_and_paths_inside_another_repository(tmp_path) -> None:
    repos = _repos(tmp_path, "lib", "svc", "mono")
    (repos["mono"] / "python" / "core").mkdir(parents=True)
    _write(repos["svc"] / "pyproject.toml", """
[project]
name = "svc"
[dependency-groups]
test = ["pytest", {include-group = "lint"}, "core @ file:../mono/python/core"]
lint = ["ruff"]
[tool.pdm.dev-dependencies]
dev = ["-e file:///${PROJECT_ROOT}/../lib#egg=lib"]
""")
    assert manifest_dependencies(repos) == {"lib": set(), "mono": set(),
                                            "svc": {"lib", "mono"}}


def test_package_json_file_link_dependencies_and_workspaces(tmp_path) -> None:
    repos = _repos(tmp_path, "ui-kit", "api", "web", "shared", "docs")
    _write(repos["web"] / "package.json", json.dumps({
        "name": "web",
        "dependencies": {"react": "^18", "ui-kit": "file:../ui-kit"},
        "devDependencies": {"api": "link:../api"},
        "peerDependencies": {"x": "npm:y@1"},
    }))
    # workspaces: a glob matching another repository's top, and a member inside the
    # repository whose own package.json has a file: dependency
    _write(repos["docs"] / "package.json", json.dumps({
        "name": "docs", "workspaces": {"packages": ["../shar*", "packages/*", "!../api"]}}))
    _write(repos["docs"] / "packages" / "site" / "package.json", json.dumps({
        "name": "site", "optionalDependencies": {"kit": "file:../../../ui-kit/dist/kit.tgz"}}))
    _write(repos["api"] / "package.json", json.dumps({"name": "api", "workspaces": ["../api"]}))
    deps = manifest_dependencies(repos)
    assert deps == {"ui-kit": set(), "api": set(), "shared": set(),
                    "web": {"ui-kit", "api"}, "docs": {"shared", "ui-kit"}}


def test_uv_workspace_members_and_nested_repositories(tmp_path) -> None:
    repos = _repos(tmp_path, "outer", "outer/inner", "lib")
    _write(repos["outer"] / "pyproject.toml", """
[tool.uv.workspace]
members = ["packages/*", "inner"]
""")
    _write(repos["outer"] / "packages" / "a" / "pyproject.toml", """
[project]
name = "a"
dependencies = ["lib @ file:../../../lib"]
""")
    # the deepest repository wins: inner is its own repository inside outer
    assert manifest_dependencies(repos) == {"outer": {"outer/inner", "lib"}, "outer/inner": set(),
                                            "lib": set()}


def test_a_repository_pointing_at_itself_is_not_a_dependency(tmp_path) -> None:
    repos = _repos(tmp_path, "lib")
    _write(repos["lib"] / "package.json", json.dumps({
        "workspaces": ["."], "dependencies": {"self": "file:."}}))
    assert manifest_dependencies(repos) == {"lib": set()}


@pytest.mark.parametrize(("file", "text", "message"), [
    ("pyproject.toml", "[project\nname=1", "cannot read manifest"),
    ("package.json", "{nope", "cannot read manifest"),
    ("package.json", "[1, 2]", "not a JSON object"),
    ("pyproject.toml", "[project]\ndependencies = 'lib'", "project.dependencies must be a list"),
    ("package.json", '{"dependencies": ["lib"]}', "'dependencies' must be an object"),
    ("pyproject.toml", "[tool.uv.sources]\nlib = {path = 3}", "tool.uv.sources.lib.path"),
])
def test_an_unreadable_manifest_is_an_error_naming_the_file(tmp_path, file, text,
                                                            message) -> None:
    repos = _repos(tmp_path, "lib", "app")
    _write(repos["app"] / file, text)
    with pytest.raises(ValueError) as info:
        manifest_dependencies(repos)
    assert message in str(info.value) and str(repos["app"] / file) in str(info.value)


def test_a_missing_repository_folder_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"repository 'ghost': folder .*ghost does not exist"):
        manifest_dependencies({"ghost": tmp_path / "ghost"})


# -- ordering -------------------------------------------------------------------------------


def test_order_batches_and_depends_of_a_diamond() -> None:
    got = order_repositories({"app": {"service", "web"}, "service": {"lib"}, "web": {"lib"},
                              "lib": set(), "docs": set()}, allow_cycles=False)
    assert got.batches == [["docs", "lib"], ["service", "web"], ["app"]]
    assert got.order == ["docs", "lib", "service", "web", "app"]
    assert got.bundles == []
    assert got.depends == {"app": ["service", "web"], "docs": [], "lib": [],
                           "service": ["lib"], "web": ["lib"]}
    assert got.bundle_of("web") == ["web"]
    with pytest.raises(KeyError, match="no repository named 'nope'"):
        got.bundle_of("nope")


def test_the_order_is_the_same_whatever_the_input_order() -> None:
    a = order_repositories({"c": {"a"}, "b": {"a"}, "a": set()}, allow_cycles=False)
    b = order_repositories({"a": set(), "b": {"a"}, "c": {"a"}}, allow_cycles=False)
    assert a == b and a.order == ["a", "b", "c"]


def test_a_cycle_is_an_error_naming_every_cycle() -> None:
    depends = {"lib": {"service"}, "service": {"lib", "app"}, "app": {"service"},
               "x": {"y"}, "y": {"x"}, "z": set()}
    with pytest.raises(RepoCycleError) as info:
        order_repositories(depends, allow_cycles=False)
    assert info.value.cycles == [["app", "service"], ["lib", "service"], ["x", "y"]]
    message = str(info.value)
    for shown in ("lib -> service -> lib", "app -> service -> app", "x -> y -> x"):
        assert shown in message
    assert "allow_cycles" in message
    assert isinstance(info.value, ValueError)


def test_an_allowed_cycle_is_one_bundle_placed_as_a_unit() -> None:
    # base <- {a, m, z} (a cycle through m) <- top; b depends on base only
    depends = {"base": set(), "a": {"z", "base"}, "z": {"m"}, "m": {"a"}, "b": {"base"},
               "top": {"m"}}
    got = order_repositories(depends, allow_cycles=True)
    assert got.bundles == [["a", "m", "z"]]
    assert got.batches == [["base"], ["a", "b", "m", "z"], ["top"]]
    # members adjacent in the order, after their upstream, before their downstream
    assert got.order == ["base", "a", "m", "z", "b", "top"]
    assert got.bundle_of("z") == ["a", "m", "z"] and got.bundle_of("b") == ["b"]


@pytest.mark.parametrize(("depends", "message"), [
    ({"app": {"lib"}}, "repository 'app' depends on 'lib', which is not a repository"),
    ({"app": {"app"}}, "repository 'app' lists itself in depends_on"),
])
def test_bad_depends_on_is_an_error_naming_it(depends, message) -> None:
    with pytest.raises(ValueError, match=message):
        order_repositories(depends, allow_cycles=True)


def test_manifests_and_order_together_on_three_repositories(tmp_path) -> None:
    repos = _repos(tmp_path, "lib", "service", "app")
    _write(repos["service"] / "pyproject.toml", '[project]\ndependencies = ["lib @ file:../lib"]\n')
    _write(repos["app"] / "package.json", json.dumps({"dependencies": {"s": "file:../service"}}))
    found = manifest_dependencies(repos)
    got = order_repositories(found, allow_cycles=False)
    assert got.order == ["lib", "service", "app"]
    _write(repos["lib"] / "pyproject.toml",
           '[tool.poetry.dependencies]\napp = {path = "../app"}\n')
    with pytest.raises(RepoCycleError, match="app -> service -> lib -> app"):
        order_repositories(manifest_dependencies(repos), allow_cycles=False)
