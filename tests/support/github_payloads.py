"""GitHub webhook deliveries as GitHub sends them, for the webhook tests.

The bodies follow the example payloads of GitHub's documentation ("Webhook events and
payloads": ``pull_request``, ``issue_comment``, ``ping``), trimmed to a representative set of
fields but with the same nesting and names: ``repository.full_name``, ``pull_request.head``
(``ref``, ``sha``, ``repo``), ``issue.pull_request`` (present only when the issue is a pull
request), ``comment.user.login``, ``sender``. The headers are GitHub's: ``X-GitHub-Event``,
``X-GitHub-Delivery`` (a GUID, kept by a redelivery), ``X-GitHub-Hook-ID``,
``X-Hub-Signature-256`` (``sha256=`` + HMAC-SHA256 of the raw body with the hook's secret;
"Validating webhook deliveries"), ``User-Agent: GitHub-Hookshot/...``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

__all__ = ["sign", "delivery", "pull_request", "issue_comment", "ping"]

_HOOK_ID = 12345678


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(event: str, payload: dict[str, Any], secret: str | None, *,
             delivery_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of one delivery; ``secret=None`` sends no signature."""
    body = json.dumps(payload, indent=2).encode()  # GitHub pretty-prints; bytes are what count
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/a1b2c3d",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(_HOOK_ID),
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": "186853002",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret, body)
    return body, headers


def _user(login: str, user_id: int = 21031067) -> dict[str, Any]:
    return {
        "login": login, "id": user_id, "node_id": "MDQ6VXNlcjIxMDMxMDY3",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"https://github.com/{login}", "type": "User", "site_admin": False,
    }


def _repository(full_name: str) -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {
        "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": name,
        "full_name": full_name, "private": False, "owner": _user(owner),
        "html_url": f"https://github.com/{full_name}", "description": None, "fork": False,
        "url": f"https://api.github.com/repos/{full_name}",
        "clone_url": f"https://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git", "default_branch": "main",
        "created_at": "2019-05-15T15:19:25Z", "updated_at": "2019-05-15T15:21:03Z",
        "pushed_at": "2019-05-15T15:20:57Z",
    }


def pull_request(action: str, full_name: str, number: int, *, head_ref: str, head_sha: str,
                 base_ref: str = "main", base_sha: str = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                 sender: str = "octocat", head_repo: str | None = None,
                 before: str | None = None) -> dict[str, Any]:
    """A ``pull_request`` event (``opened``, ``synchronize``, ``reopened``...).

    ``head_repo`` names the repository the head branch lives in (a fork when it differs);
    ``before`` is the head before a ``synchronize`` push.
    """
    repository = _repository(full_name)
    head_repository = _repository(head_repo or full_name)
    payload: dict[str, Any] = {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{full_name}/pulls/{number}",
            "id": 279147437, "node_id": "MDExOlB1bGxSZXF1ZXN0Mjc5MTQ3NDM3",
            "html_url": f"https://github.com/{full_name}/pull/{number}",
            "diff_url": f"https://github.com/{full_name}/pull/{number}.diff",
            "number": number, "state": "open", "locked": False,
            "title": "Update the README with new information.", "user": _user(sender),
            "body": "This is a pretty simple change that we need to pull into main.",
            "created_at": "2019-05-15T15:20:33Z", "updated_at": "2019-05-15T15:20:33Z",
            "closed_at": None, "merged_at": None, "merge_commit_sha": None, "draft": False,
            "head": {"label": f"{head_repository['owner']['login']}:{head_ref}",
                     "ref": head_ref, "sha": head_sha,
                     "user": head_repository["owner"], "repo": head_repository},
            "base": {"label": f"{repository['owner']['login']}:{base_ref}", "ref": base_ref,
                     "sha": base_sha, "user": repository["owner"], "repo": repository},
            "author_association": "OWNER", "merged": False, "mergeable": None,
            "comments": 0, "commits": 1, "additions": 1, "deletions": 1, "changed_files": 1,
        },
        "repository": repository,
        "sender": _user(sender),
    }
    if action == "synchronize":
        payload["before"] = before or base_sha
        payload["after"] = head_sha
    return payload


def issue_comment(full_name: str, number: int, body: str, *, login: str,
                  action: str = "created", on_pull_request: bool = True,
                  comment_id: int = 492700400) -> dict[str, Any]:
    """An ``issue_comment`` event; on a pull request, ``issue.pull_request`` is present."""
    issue: dict[str, Any] = {
        "url": f"https://api.github.com/repos/{full_name}/issues/{number}",
        "html_url": f"https://github.com/{full_name}/{'pull' if on_pull_request else 'issues'}"
                    f"/{number}",
        "id": 444500041, "node_id": "MDU6SXNzdWU0NDQ1MDAwNDE=", "number": number,
        "title": "Spelling error in the README file", "user": _user("octocat"),
        "labels": [], "state": "open", "locked": False, "assignee": None, "assignees": [],
        "comments": 1, "created_at": "2019-05-15T15:20:18Z",
        "updated_at": "2019-05-15T15:20:21Z", "closed_at": None,
        "author_association": "OWNER", "body": "It looks like you accidently spelled 'commit' "
                                               "with two 't's.",
    }
    if on_pull_request:
        issue["pull_request"] = {
            "url": f"https://api.github.com/repos/{full_name}/pulls/{number}",
            "html_url": f"https://github.com/{full_name}/pull/{number}",
            "diff_url": f"https://github.com/{full_name}/pull/{number}.diff",
            "patch_url": f"https://github.com/{full_name}/pull/{number}.patch",
            "merged_at": None,
        }
    return {
        "action": action,
        "issue": issue,
        "comment": {
            "url": f"https://api.github.com/repos/{full_name}/issues/comments/{comment_id}",
            "html_url": f"https://github.com/{full_name}/pull/{number}#issuecomment-{comment_id}",
            "issue_url": issue["url"], "id": comment_id,
            "node_id": "MDEyOklzc3VlQ29tbWVudDQ5MjcwMDQwMA==", "user": _user(login, 7),
            "created_at": "2019-05-15T15:20:21Z", "updated_at": "2019-05-15T15:20:21Z",
            "author_association": "COLLABORATOR", "body": body,
        },
        "repository": _repository(full_name),
        "sender": _user(login, 7),
    }


def ping(full_name: str) -> dict[str, Any]:
    """The ``ping`` GitHub sends when a hook is created."""
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": _HOOK_ID,
        "hook": {
            "type": "Repository", "id": _HOOK_ID, "name": "web", "active": True,
            "events": ["issue_comment", "pull_request"],
            "config": {"content_type": "json", "insecure_ssl": "0",
                       "url": "https://orchestrator.example.com/hooks/github"},
            "updated_at": "2019-05-15T15:20:49Z", "created_at": "2019-05-15T15:20:49Z",
        },
        "repository": _repository(full_name),
        "sender": _user(full_name.split("/")[0]),
    }
