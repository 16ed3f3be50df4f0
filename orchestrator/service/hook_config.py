"""The hooks file of ``orchestrator serve --hooks FILE`` (YAML): its model and its loader.

:mod:`orchestrator.service.hooks` documents the format and serves the routes it configures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from orchestrator.contracts.base import problems
from orchestrator.contracts.cicd import Command
from orchestrator.contracts.repos import GitRef, repository_top
from orchestrator.errors import InvalidConfiguration

__all__ = ["GenericHooks", "GitHubHooks", "GitHubRepo", "HooksConfig", "load_hooks"]


def _repository(path: str) -> str:
    repository_top(path)  # RepositoryError (a ValueError) names what is wrong
    return path


def _lower(value: str) -> str:
    return value.lower()


def _strong(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < 16:
        raise ValueError("a secret has at least 16 characters; make one with python -c "
                         "'import secrets; print(secrets.token_hex(32))' and give the same to "
                         "the sender")
    return value


Secret = Annotated[SecretStr, AfterValidator(_strong)]
Login = Annotated[str, Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$"),
                  AfterValidator(_lower)]
RepoName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"),
                     AfterValidator(_lower)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitHubRepo(_Closed):
    """One repository: its local clone and what ``pr_deployment`` does with its PRs."""

    path: Annotated[str, Field(min_length=1), AfterValidator(_repository)]
    target: GitRef | None = None
    test_command: Command | None = None
    approval: Literal["required", "auto"] | None = None
    reviewers: list[Login] = Field(default_factory=list)
    #: the remote a pull request's head is fetched from when the clone does not have it yet
    #: (``null``: never fetch; the delivery is refused with 409 until the clone has it)
    fetch_from: GitRef | None = "origin"


class GitHubHooks(_Closed):
    secret: Secret
    repos: dict[RepoName, GitHubRepo] = Field(min_length=1)

    def repo(self, full_name: str) -> GitHubRepo | None:
        return self.repos.get(full_name.lower())


class GenericHooks(_Closed):
    secret: Secret
    workflows: list[str] = Field(min_length=1)


class HooksConfig(_Closed):
    github: GitHubHooks | None = None
    generic: GenericHooks | None = None

    @model_validator(mode="after")
    def _some(self) -> HooksConfig:
        if self.github is None and self.generic is None:
            raise ValueError("neither a github nor a generic section: give at least one")
        return self


def load_hooks(path: str | Path) -> HooksConfig:
    """Read and check the hooks file (the format is in this module's docstring).

    Raises:
        InvalidConfiguration: the file cannot be read, is not YAML, or a key is missing,
            unknown or wrong; the message names each key and what to do.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfiguration(
            f"cannot read the hooks file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise InvalidConfiguration(
            f"the hooks file {path} is not valid YAML{at}: "
            f"{getattr(exc, 'problem', None) or exc}; fix it and start again") from None
    if not isinstance(data, dict):
        raise InvalidConfiguration(
            f"the hooks file {path} must be a mapping with a github and/or a generic section, "
            f"not {type(data).__name__}")
    try:
        return HooksConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfiguration(
            f"the hooks file {path} is wrong: {problems(exc, 'hooks')}; fix these keys (the "
            "format: the docstring of orchestrator/service/hooks.py, README 'Running as a "
            "service') and start again") from None
