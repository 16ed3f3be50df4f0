"""Webhooks of ``orchestrator serve``: GitHub deliveries (signed by the test, in the formats of
GitHub's documentation) start pr_deployment and answer its approval; the generic signed hook
starts a workflow. The app runs in-process (httpx's ASGI transport) on the test's PostgreSQL
and Redis; the approval flow is executed by a real runner on a real git repository."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from orchestrator.errors import InvalidConfiguration
from orchestrator.service import audit
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.hooks import load_hooks, signature_ok
from orchestrator.service.queue import RunQueue
from orchestrator.service.runner import Runner
from orchestrator.service.runs import RunService

from .support import github_payloads as gh
from .support.fixture_repo import add_branch, git
from .support.service_app import free_port

SECRET = "s3cret-for-the-github-hook"
GENERIC_SECRET = "s3cret-for-the-generic-hook"
REPO = "Acme/Calc"  # GitHub's case; the hooks file names it in lower case


def hooks_yaml(repo: Path, **repo_keys: str) -> str:
    extra = "".join(f"      {k}: {v}\n" for k, v in repo_keys.items())
    return (f"github:\n  secret: {SECRET}\n  repos:\n    acme/calc:\n      path: {repo}\n"
            f"      reviewers: [Alice]\n{extra}"
            f"generic:\n  secret: {GENERIC_SECRET}\n  workflows: [pr_deployment]\n")


class Hooks:
    """The app with a hooks file for ``fixture_repo``, and what the tests look at."""

    def __init__(self, orch: Any, runs: RunService, client: httpx.AsyncClient, repo: Path):
        self.orch, self.runs, self.client, self.repo = orch, runs, client, repo

    async def github(self, event: str, payload: dict[str, Any], *, secret: str | None = SECRET,
                     delivery_id: str | None = None) -> httpx.Response:
        body, headers = gh.delivery(event, payload, secret, delivery_id=delivery_id)
        return await self.client.post("/hooks/github", content=body, headers=headers)

    def opened(self, branch: str = "feature-pass", number: int = 7,
               action: str = "opened", **kw: Any) -> dict[str, Any]:
        return gh.pull_request(action, REPO, number, head_ref=branch,
                               head_sha=git(self.repo, "rev-parse", branch), **kw)

    async def workflows(self) -> list[Any]:
        return await self.orch.list_workflows(limit=1000)

    async def deliveries(self) -> int:
        row = await self.orch.runtime.db.fetchone(
            "SELECT count(*) AS n FROM hook_deliveries WHERE namespace = %s",
            (self.orch.settings.namespace,))
        return row["n"]

    async def audit(self) -> list[audit.AuditEntry]:
        return await audit.entries(self.orch.runtime.db, self.orch.settings.namespace)


@pytest.fixture
async def make_hooks(orchestrator, fixture_repo,
                     tmp_path) -> AsyncIterator[Callable[..., Awaitable[Hooks]]]:
    """``await make_hooks(**repo_keys)``: the app with a hooks file for ``fixture_repo``."""
    clients: list[httpx.AsyncClient] = []

    async def ready() -> bool:
        return True

    async def make(**repo_keys: str) -> Hooks:
        path = tmp_path / f"hooks-{len(clients)}.yaml"
        path.write_text(hooks_yaml(fixture_repo, **repo_keys))
        runs = RunService(orchestrator)
        app = create_app(ServerContext(orch=orchestrator, runs=runs, hooks=load_hooks(path),
                                       ready=ready))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver")
        clients.append(client)
        return Hooks(orchestrator, runs, client, fixture_repo)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def hooks(make_hooks) -> Hooks:
    """No target in the hooks file: a pull request merges into its base branch."""
    return await make_hooks()


@pytest.fixture
async def runner(orchestrator) -> AsyncIterator[Callable[[], Awaitable[Runner]]]:
    """``await runner()`` starts a runner in this process; drained after the test."""
    started: list[Runner] = []

    async def start() -> Runner:
        queue = RunQueue(orchestrator.runtime.db, orchestrator.settings)
        one = Runner(RunService(orchestrator), queue, concurrency=2,
                     run_lease=orchestrator.settings.run_lease, poll_interval=0.2)
        await one.start()
        started.append(one)
        return one

    yield start
    for one in started:
        await one.drain(0)


async def settled(orch: Any, thread_id: str, statuses: set[str], timeout: float = 90.0) -> Any:
    """Poll the workflow row until its status is one of ``statuses`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        record = await orch.runtime.workflows.get(thread_id)
        if record.status in statuses:
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"{thread_id} stayed {record.status}, expected one of {statuses}")
        await asyncio.sleep(0.1)


# --- the hooks file -------------------------------------------------------------------------


def test_the_signature_is_githubs(tmp_path) -> None:
    """GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!"."""
    from pydantic import SecretStr

    secret = SecretStr("It's a Secret to Everybody")
    documented = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_ok(secret, b"Hello, World!", documented)
    assert gh.sign("It's a Secret to Everybody", b"Hello, World!") == documented
    assert not signature_ok(secret, b"Hello, World?", documented)
    assert not signature_ok(secret, b"Hello, World!", documented.replace("sha256=", "sha1="))
    assert not signature_ok(secret, b"Hello, World!", None)
    assert not signature_ok(secret, b"Hello, World!", "sha256=\u00e9")  # not ASCII: refused


def test_a_good_hooks_file_loads(tmp_path, fixture_repo) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(hooks_yaml(fixture_repo, target="main", approval="auto",
                               test_command='"python -m pytest -q -x"'))
    config = load_hooks(path)
    repo = config.github.repo("ACME/calc")  # GitHub names are case-insensitive
    assert repo is not None and repo.reviewers == ["alice"]
    assert (repo.path, repo.target, repo.approval, repo.test_command) == (
        str(fixture_repo), "main", "auto", "python -m pytest -q -x")
    assert config.generic.workflows == ["pr_deployment"]
    assert SECRET not in repr(config)  # the secrets never show in a log line


@pytest.mark.parametrize(("text", "expected"), [
    ("github: [unclosed\n", "is not valid YAML at line 2"),
    ("- just\n- a list\n", "must be a mapping with a github and/or a generic section"),
    ("{}\n", "neither a github nor a generic section"),
    ("github:\n  secret: short\n  repos: {a/b: {path: REPO}}\n",
     "hooks.github.secret: Value error, a secret has at least 16 characters"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {a/b: {path: REPO, reviewer: [x]}}\n",
     "hooks.github.repos.a/b.reviewer: Extra inputs are not permitted"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {a/b: {path: /nonexistent/clone}}\n",
     "hooks.github.repos.a/b.path: Value error, /nonexistent/clone does not exist"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {a/b: {path: REPO, approval: maybe}}\n",
     "hooks.github.repos.a/b.approval: Input should be 'required' or 'auto'"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {a/b: {path: REPO, reviewers: [-x]}}\n",
     "hooks.github.repos.a/b.reviewers.0: String should match pattern"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {not-a-repo: {path: REPO}}\n",
     "hooks.github.repos.not-a-repo.[key]: String should match pattern"),
    ("generic:\n  secret: 0123456789abcdef\n", "hooks.generic.workflows: Field required"),
    ("github:\n  secret: 0123456789abcdef\n  repos: {a/b: {path: REPO, test_command: ''}}\n",
     "hooks.github.repos.a/b.test_command: Value error, the command is empty"),
])
def test_a_bad_hooks_file_names_the_key_and_what_to_do(tmp_path, fixture_repo, text,
                                                       expected) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(text.replace("REPO", str(fixture_repo)))
    with pytest.raises(InvalidConfiguration) as caught:
        load_hooks(path)
    message = str(caught.value)
    assert expected in message and str(path) in message
    assert "0123456789abcdef" not in message


def test_an_unreadable_hooks_file_says_so(tmp_path) -> None:
    with pytest.raises(InvalidConfiguration, match="cannot read the hooks file"):
        load_hooks(tmp_path / "missing.yaml")


async def test_serve_refuses_a_bad_hooks_file_before_it_starts(orchestrator_settings,
                                                               tmp_path) -> None:
    from orchestrator.service.server import serve

    path = tmp_path / "hooks.yaml"
    path.write_text("github:\n  secret: 0123456789abcdef\n  repo: {}\n")
    err = io.StringIO()
    with pytest.raises(InvalidConfiguration, match=r"hooks.github.repo: Extra inputs"):
        await asyncio.wait_for(serve(orchestrator_settings, host="127.0.0.1", port=free_port(),
                                     concurrency=1, hooks_file=path, err=err), timeout=30)
    assert "listening" not in err.getvalue()


# --- signatures -----------------------------------------------------------------------------


async def test_a_forged_or_missing_signature_starts_nothing(hooks) -> None:
    payload = hooks.opened()
    body, headers = gh.delivery("pull_request", payload, SECRET)
    forged = {**headers, "X-Hub-Signature-256": gh.sign("not-the-secret-at-all", body)}
    missing = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    tampered = body.replace(b"feature-pass", b"feature-fail")
    for content, sent in ((body, forged), (body, missing), (tampered, headers),
                          (body, {**headers, "X-Hub-Signature-256": "sha256="})):
        answer = await hooks.client.post("/hooks/github", content=content, headers=sent)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"
    generic = await hooks.client.post("/hooks/generic/pr_deployment", content=b"{}",
                                      headers={"X-Orchestrator-Signature-256": gh.sign(SECRET, b"{}")})
    assert generic.status_code == 401  # the GitHub secret does not sign generic bodies
    assert await hooks.workflows() == []
    assert await hooks.runs.runs() == []
    assert await hooks.deliveries() == 0
    assert await hooks.audit() == []


async def test_ping_is_answered_in_either_content_type(hooks) -> None:
    answer = await hooks.github("ping", gh.ping(REPO))
    assert answer.status_code == 200
    assert answer.json() == {"status": "pong", "zen": "Keep it logically awesome."}
    # GitHub's other content type: the JSON in a form field named payload, signed as sent
    body = urlencode({"payload": json.dumps(gh.ping(REPO))}).encode()
    _, headers = gh.delivery("ping", {}, None)
    form = await hooks.client.post("/hooks/github", content=body, headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded",
        "X-Hub-Signature-256": gh.sign(SECRET, body)})
    assert form.status_code == 200 and form.json()["zen"] == "Keep it logically awesome."
    assert await hooks.workflows() == []


# --- pull requests --------------------------------------------------------------------------


async def test_an_opened_pull_request_queues_one_pr_deployment(hooks) -> None:
    sha = git(hooks.repo, "rev-parse", "feature-pass")
    answer = await hooks.github("pull_request", hooks.opened(), delivery_id="d-1")
    assert answer.status_code == 202, answer.text
    thread_id = answer.json()["thread_id"]
    assert thread_id == f"{hooks.orch.settings.namespace}:github:acme:calc:pr7:{sha[:12]}"
    [run] = await hooks.runs.runs(thread_id=thread_id)
    assert (run.kind, run.status, run.requested_by) == ("start", "queued", "github:octocat")
    assert answer.json()["run_id"] == run.run_id
    record = await hooks.orch.runtime.workflows.get(thread_id)
    assert (record.workflow_type, record.status) == ("pr_deployment", "queued")
    assert record.input["repo"] == str(hooks.repo)
    assert (record.input["source"], record.input["target"], record.input["approval"]) == (
        "feature-pass", "main", "required")

    # GitHub redelivers (same delivery id): the first answer again, nothing started
    again = await hooks.github("pull_request", hooks.opened(), delivery_id="d-1")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert again.json()["thread_id"] == thread_id
    # another delivery of the same head (reopened): the run exists already
    reopened = await hooks.github("pull_request", hooks.opened(action="reopened"))
    assert reopened.status_code == 200
    assert reopened.json() == {"status": "already_started", "thread_id": thread_id}
    assert len(await hooks.runs.runs()) == 1 and len(await hooks.workflows()) == 1
    [entry] = await hooks.audit()
    assert (entry.actor, entry.action, entry.target, entry.source) == (
        "github:octocat", "github.pull_request.start", thread_id, "github:d-1")
    assert entry.detail["head"] == sha and entry.detail["run_id"] == run.run_id


async def test_a_push_supersedes_the_run_of_the_older_head(hooks) -> None:
    first = await hooks.github("pull_request", hooks.opened())
    assert first.status_code == 202, first.text
    old_thread = first.json()["thread_id"]
    before = git(hooks.repo, "rev-parse", "feature-pass")
    git(hooks.repo, "checkout", "-q", "feature-pass")
    (hooks.repo / "calc" / "mul.py").write_text(
        '"""Multiplication."""\n\n\ndef mul(a: int, b: int) -> int:\n    return b * a\n')
    git(hooks.repo, "commit", "-q", "-am", "calc: mul, commuted")
    git(hooks.repo, "checkout", "-q", "main")
    pushed = await hooks.github("pull_request",
                                hooks.opened(action="synchronize", before=before))
    assert pushed.status_code == 202, pushed.text
    new_thread = pushed.json()["thread_id"]
    assert new_thread != old_thread
    # the old head's run will never merge the branch's new code
    old = await hooks.orch.runtime.workflows.get(old_thread)
    assert old.status == "cancelled"
    assert [r.status for r in await hooks.runs.runs(thread_id=old_thread, status="queued")] == []
    [run] = await hooks.runs.runs(thread_id=new_thread)
    assert (run.kind, run.status) == ("start", "queued")
    actions = [(e.action, e.target) for e in reversed(await hooks.audit())]
    assert actions == [("github.pull_request.start", old_thread),
                       ("github.pull_request.supersede", old_thread),
                       ("github.pull_request.start", new_thread)]


async def test_what_a_pull_request_hook_refuses(hooks, make_hooks) -> None:
    unknown = await hooks.github("pull_request", gh.pull_request(
        "opened", "someone/else", 1, head_ref="x", head_sha="0" * 40))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_repository"
    assert "someone/else is not in the hooks file" in unknown.json()["error"]["message"]
    closed = await hooks.github("pull_request", hooks.opened(action="closed"))
    assert closed.status_code == 200 and closed.json()["status"] == "ignored"
    fork = await hooks.github("pull_request", hooks.opened(head_repo="mallory/calc"))
    assert fork.status_code == 200 and "in a fork" in fork.json()["reason"]
    # without a target in the hooks file the PR's base is the target (here: no such branch)
    release = await hooks.github("pull_request", hooks.opened(base_ref="release"))
    assert release.status_code == 422
    assert "target 'release' is not a branch" in release.json()["error"]["message"]
    to_main = await make_hooks(target="main")
    elsewhere = await to_main.github("pull_request", to_main.opened(base_ref="release"))
    assert elsewhere.status_code == 200 and "targets 'release'" in elsewhere.json()["reason"]
    # the clone has not fetched the head GitHub announces: 409, and a redelivery once it has
    add_branch(hooks.repo, "feature-late", {"calc/late.py": "LATE = 1\n"})
    sha = git(hooks.repo, "rev-parse", "feature-late")
    git(hooks.repo, "branch", "-f", "feature-late", "main")  # the clone is behind
    payload = gh.pull_request("opened", REPO, 9, head_ref="feature-late", head_sha=sha)
    stale = await hooks.github("pull_request", payload, delivery_id="late-1")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_clone"
    assert await hooks.workflows() == []
    git(hooks.repo, "branch", "-f", "feature-late", sha)  # fetched
    redelivered = await hooks.github("pull_request", payload, delivery_id="late-1")
    assert redelivered.status_code == 202, redelivered.text
    assert len(await hooks.workflows()) == 1
    # an input pr_deployment refuses (target == source): 422 naming it, nothing started
    same = await hooks.github("pull_request", gh.pull_request(
        "opened", REPO, 10, head_ref="main", head_sha=git(hooks.repo, "rev-parse", "main")))
    assert same.status_code == 422, same.text
    assert "source and target are the same branch" in same.json()["error"]["message"]
    assert len(await hooks.workflows()) == 1
    bad = await hooks.client.post("/hooks/github", content=b"[1]", headers={
        "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-bad",
        "X-Hub-Signature-256": gh.sign(SECRET, b"[1]")})
    assert bad.status_code == 400
    shapeless = await hooks.github("pull_request", {"action": "opened", "repository": {
        "full_name": REPO}})
    assert shapeless.status_code == 400 and "pull_request" in shapeless.json()["error"]["message"]


# --- approval by comment --------------------------------------------------------------------


async def test_a_head_the_clone_lacks_is_fetched_from_its_remote(make_hooks, tmp_path) -> None:
    """GitHub announces a push before anyone fetched it: the hook fetches the head branch from
    the clone's ``fetch_from`` remote (default origin) and queues the run; with
    ``fetch_from: null`` it refuses (409) and the clone is left as it was."""
    hooks = await make_hooks()
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(hooks.repo), str(origin))
    git(hooks.repo, "remote", "add", "origin", str(origin))
    # a developer pushes a new branch to origin; the clone has never seen it
    elsewhere = tmp_path / "elsewhere"
    git(tmp_path, "clone", "-q", str(origin), str(elsewhere))
    add_branch(elsewhere, "feature-pushed", {"calc/pushed.py": "PUSHED = 1\n"})
    git(elsewhere, "push", "-q", "origin", "feature-pushed")
    sha = git(elsewhere, "rev-parse", "feature-pushed")
    payload = gh.pull_request("opened", REPO, 11, head_ref="feature-pushed", head_sha=sha)

    never = await make_hooks(fetch_from="null")
    refused = await never.github("pull_request", payload, delivery_id="push-0")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "stale_clone"
    assert "feature-pushed" not in git(hooks.repo, "branch", "--list", "feature-pushed")

    fetched = await hooks.github("pull_request", payload, delivery_id="push-1")
    assert fetched.status_code == 202, fetched.text
    assert git(hooks.repo, "rev-parse", "feature-pushed") == sha
    [workflow] = await hooks.workflows()
    assert workflow.input["source"] == "feature-pushed"
    # a head that is nowhere (origin does not have it either): still 409, nothing started
    ghost = gh.pull_request("opened", REPO, 12, head_ref="feature-pushed", head_sha="1" * 40)
    missing = await hooks.github("pull_request", ghost, delivery_id="push-2")
    assert missing.status_code == 409 and "not on 'origin' either" in missing.text
    assert len(await hooks.workflows()) == 1


async def test_a_reviewers_approve_comment_answers_the_question(hooks, runner) -> None:
    await runner()
    started = await hooks.github("pull_request", hooks.opened())
    thread_id = started.json()["thread_id"]
    await settled(hooks.orch, thread_id, {"interrupted", "failed", "completed"})
    details = await hooks.orch.get(thread_id)
    assert details.record.status == "interrupted", details.record.error
    assert details.interrupts[0]["value"]["kind"] == "approval"
    before = git(hooks.repo, "rev-parse", "main")

    # someone who is not a reviewer: refused, audited, the question still pending
    mallory = await hooks.github("issue_comment",
                                 gh.issue_comment(REPO, 7, "/approve", login="mallory"))
    assert mallory.status_code == 200 and mallory.json()["status"] == "ignored"
    assert "mallory is not a reviewer" in mallory.json()["reason"]
    chatter = await hooks.github("issue_comment",
                                 gh.issue_comment(REPO, 7, "LGTM, will /approve later",
                                                  login="alice"))
    assert chatter.status_code == 200 and "not a command" in chatter.json()["reason"]
    on_issue = await hooks.github("issue_comment", gh.issue_comment(
        REPO, 7, "/approve", login="alice", on_pull_request=False))
    assert on_issue.status_code == 200 and "not a pull request" in on_issue.json()["reason"]
    edited = await hooks.github("issue_comment", gh.issue_comment(
        REPO, 7, "/approve", login="alice", action="edited"))
    assert edited.status_code == 200 and edited.json()["status"] == "ignored"
    other_pr = await hooks.github("issue_comment", gh.issue_comment(REPO, 8, "/approve",
                                                                    login="alice"))
    assert other_pr.status_code == 200 and "no run of acme/calc#8" in other_pr.json()["reason"]
    assert (await hooks.orch.runtime.workflows.get(thread_id)).status == "interrupted"
    assert await hooks.runs.runs(thread_id=thread_id, status="queued") == []

    # a reviewer (logins are case-insensitive): the answer, with who gave it
    approve = await hooks.github("issue_comment", gh.issue_comment(
        REPO, 7, "/approve ship it\n\nthanks", login="ALICE"), delivery_id="c-1")
    assert approve.status_code == 202, approve.text
    assert approve.json()["answer"] == {"approve": True, "by": "github:ALICE",
                                        "comment": "ship it\n\nthanks"}
    again = await hooks.github("issue_comment", gh.issue_comment(
        REPO, 7, "/approve ship it\n\nthanks", login="ALICE"), delivery_id="c-1")
    assert again.json()["duplicate"] is True
    record = await settled(hooks.orch, thread_id, {"completed", "failed"})
    assert record.status == "completed", record.error
    assert record.result["decision"]["by"] == "github:ALICE"
    assert record.result["merged"] is True and git(hooks.repo, "rev-parse", "main") != before
    resumes = [r for r in await hooks.runs.runs(thread_id=thread_id) if r.kind == "resume"]
    assert len(resumes) == 1 and resumes[0].requested_by == "github:ALICE"
    actions = {(e.actor, e.action) for e in await hooks.audit()}
    assert ("github:mallory", "github.answer.refused") in actions
    assert ("github:ALICE", "github.approve") in actions


async def test_a_reviewers_reject_comment_fails_the_run_unmerged(hooks, runner) -> None:
    await runner()
    started = await hooks.github("pull_request", hooks.opened())
    thread_id = started.json()["thread_id"]
    assert (await settled(hooks.orch, thread_id, {"interrupted", "failed"})).status == \
        "interrupted"
    before = git(hooks.repo, "rev-parse", "main")
    reject = await hooks.github("issue_comment", gh.issue_comment(
        REPO, 7, "/reject needs a migration first", login="alice"))
    assert reject.status_code == 202, reject.text
    record = await settled(hooks.orch, thread_id, {"completed", "failed"})
    assert record.status == "failed"
    assert record.result["reasons"] == ["rejected by github:alice: needs a migration first"]
    assert git(hooks.repo, "rev-parse", "main") == before


# --- the generic hook -----------------------------------------------------------------------


async def test_the_generic_hook_starts_an_allowed_workflow_once(hooks) -> None:
    body = (b'{"repo": "' + str(hooks.repo).encode() + b'", "source": "feature-pass", '
            b'"approval": "auto"}')
    signed = {"X-Orchestrator-Signature-256": gh.sign(GENERIC_SECRET, body),
              "X-Orchestrator-Delivery": "nightly-1"}
    answer = await hooks.client.post("/hooks/generic/pr_deployment", content=body,
                                     headers=signed)
    assert answer.status_code == 202, answer.text
    thread_id = f"{hooks.orch.settings.namespace}:hook:pr_deployment:nightly-1"
    assert answer.json()["thread_id"] == thread_id
    [run] = await hooks.runs.runs(thread_id=thread_id)
    assert (run.kind, run.status, run.requested_by) == ("start", "queued", "hook:generic")
    record = await hooks.orch.runtime.workflows.get(run.thread_id)
    assert record.input["approval"] == "auto" and record.input["source"] == "feature-pass"
    again = await hooks.client.post("/hooks/generic/pr_deployment", content=body,
                                    headers=signed)
    assert again.json()["duplicate"] is True and len(await hooks.runs.runs()) == 1

    not_allowed = await hooks.client.post("/hooks/generic/parallel_docs", content=body,
                                          headers=signed)
    assert not_allowed.status_code == 404
    assert not_allowed.json()["error"]["code"] == "unknown_workflow"
    bad_input = b'{"repo": "/nonexistent"}'
    refused = await hooks.client.post("/hooks/generic/pr_deployment", content=bad_input,
                                      headers={"X-Orchestrator-Signature-256":
                                               gh.sign(GENERIC_SECRET, bad_input)})
    assert refused.status_code == 422 and "source" in refused.json()["error"]["message"]
    assert len(await hooks.workflows()) == 1
    [entry] = await hooks.audit()
    assert (entry.actor, entry.action, entry.source) == (
        "hook:generic", "hook.start", "hook:nightly-1")
