"""Webhooks of ``orchestrator serve``: GitHub pull requests and comments, and a generic hook.

The hooks file (``orchestrator serve --hooks FILE``, YAML; read once at start-up, where a
wrong file stops the server with the key at fault)::

    github:
      secret: "a random string of 16+ characters, the webhook's secret on GitHub"
      repos:
        "acme/shop":                      # repository.full_name (case does not matter)
          path: /srv/clones/shop          # the local clone pr_deployment works in
          target: main                    # optional: merge into; default: the PR's base
          test_command: "python -m pytest -q"   # optional: pr_deployment's default
          approval: required              # optional: required (default) | auto
          reviewers: [alice, bob]         # GitHub logins whose /approve, /reject count
          fetch_from: origin              # optional: where a head the clone lacks is fetched
    generic:
      secret: "another random string of 16+ characters"
      workflows: [parallel_docs]          # the workflows the generic hook may start

Either section may be left out (its route is not served then).

``POST /hooks/github`` (a repository webhook, content type ``application/json`` or
``application/x-www-form-urlencoded``, events "Pull requests" and "Issue comments"):

* ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with ``github.secret``) is checked,
  in constant time, before the body is parsed: missing or wrong, the answer is 401 and nothing
  is read, stored or started.
* ``X-GitHub-Delivery`` is claimed in ``hook_deliveries`` before anything starts: a redelivery
  (GitHub keeps the id) gets the first answer again and starts nothing. A refused delivery
  (4xx: the clone not fetched yet, an input pr_deployment refuses) or an internal error
  releases its claim, so a redelivery after the fix is processed anew.
* ``pull_request`` ``opened``, ``synchronize``, ``reopened`` of a configured repository queue
  ``pr_deployment`` (:meth:`RunService.submit`) with ``repo`` = ``path``, ``source`` = the
  head branch, ``target``, ``test_command``, ``approval``, on thread
  ``<namespace>:github:<owner>:<name>:pr<N>:<sha12>``. The thread id holds the head commit,
  so a second delivery of the same head starts nothing (``already_started``), and a push
  starts a new run. On ``synchronize`` the
  runs of the pull request's older heads that are still queued, running or waiting for
  approval are cancelled first: the workflow merges the *branch*, so approving an old run
  would merge code its tests never saw. It is refused (nothing started) when the head branch
  lives in a fork (its code is never run unreviewed: submit it through the API), when the PR
  targets another branch than ``target``, and when the clone's branch is not at the PR's head
  commit even after fetching it from the repository's ``fetch_from`` remote (default
  ``origin``; ``null`` never fetches; the fetch is bounded to 7 s, inside GitHub's delivery
  timeout): 409, fetch it there, then redeliver. Other actions are ignored (200).
* ``issue_comment`` ``created`` on a pull request whose run waits for approval: a comment
  that starts with ``/approve [comment]`` or ``/reject [reason]`` from one of the
  repository's ``reviewers`` answers it (:meth:`RunService.resume`, ``by="github:<login>"``;
  the answer is pr_deployment's ``ApprovalAnswer``). Anyone else's command is refused (200,
  audited); other comments are ignored (200).
* ``ping``: 200. An unknown repository: 404 with the reason; never a 5xx for what GitHub sent.

``POST /hooks/generic/{workflow}`` starts ``workflow`` (one of ``generic.workflows``) with the
body (a JSON object) as its input. The body is signed like GitHub's:
``X-Orchestrator-Signature-256: sha256=<hex HMAC-SHA256 of the body with generic.secret>``.
An optional ``X-Orchestrator-Delivery: <id>`` (1-100 of ``A-Za-z0-9._:-``) makes it
idempotent: the thread is ``<namespace>:hook:<workflow>:<id>`` and a second delivery of the id starts
nothing. The signature proves who wrote the body, not that it is fresh: send it over HTTPS
and with a delivery id. Example::

    body='{"package": "json", "output": "docs"}'
    sig=$(printf %s "$body" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)
    curl -X POST -H "X-Orchestrator-Signature-256: sha256=$sig" \\
         -H "X-Orchestrator-Delivery: nightly-2026-01-05" -d "$body" \\
         http://127.0.0.1:8420/hooks/generic/parallel_docs

Answers are JSON: ``{"status": "queued", "thread_id", "run_id"}`` (202) when a run was queued,
``{"status": "ignored" | "duplicate" | "already_started" | "pong", "reason"...}`` (200), and
``{"error": {"code", "message"}}`` for 400 (``bad_request``), 401 (``unauthorized``), 404
(``unknown_repository``, ``unknown_workflow``), 409 (``stale_clone``), 413
(``payload_too_large``), 422 (``invalid_input``, ``invalid_answer``). Every run started,
cancelled or answered, and every refused command, is written to the audit trail with source
``github:<delivery id>`` (the generic hook: ``hook:<delivery id>`` or the client's address).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from psycopg.types.json import Jsonb
from pydantic import (
    SecretStr,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.contracts.repos import (
    RepositoryError,
    commit_of,
    run_git,
)
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.service import audit
from orchestrator.service.hook_config import (
    GenericHooks,
    GitHubHooks,
    GitHubRepo,
    HooksConfig,
    load_hooks,
)

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext
    from orchestrator.state.db import Database

__all__ = ["HooksConfig", "GitHubHooks", "GitHubRepo", "GenericHooks", "load_hooks", "routes",
           "signature_ok"]

log = logging.getLogger(__name__)

MAX_BODY = 25 * 1024 * 1024
"""GitHub caps a delivery at 25 MB; a larger body is refused before it is signed or read on."""
#: how long a webhook waits for a fetch of a pull request's head, seconds
_FETCH_TIMEOUT = 7.0

_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
_ACTIVE = ("queued", "running", "interrupted")
_COMMAND = re.compile(r"^/(approve|reject)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


# --- signatures, bodies, replies ------------------------------------------------------------


def signature_ok(secret: SecretStr, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is ``sha256=`` + the HMAC-SHA256 of ``body`` with ``secret``
    (GitHub's ``X-Hub-Signature-256``), compared in constant time."""
    if not header:
        return False
    digest = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={digest}".encode(), header.strip().encode())


@dataclass(frozen=True)
class _Reply:
    """An answer to a delivery. A success or an ignored event is kept for redeliveries; a
    refusal (4xx) releases the delivery's claim, so a redelivery, after the fix, is processed
    again (a pull request's thread id still keeps it from starting a second run)."""

    status: int
    body: dict[str, Any]
    subject: str | None = None
    thread_id: str | None = None

    @property
    def final(self) -> bool:
        return self.status < 400

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


def _error(status: int, code: str, message: str) -> _Reply:
    return _Reply(status, {"error": {"code": code, "message": message}})


def _ignored(reason: str, status: int = 200) -> _Reply:
    return _Reply(status, {"status": "ignored", "reason": reason})


async def _body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than :data:`MAX_BODY`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(request: Request, body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object (GitHub's form encoding carries it in ``payload``)."""
    try:
        if request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            body = parse_qs(body.decode(), strict_parsing=True)["payload"][0].encode()
        data = json.loads(body)
    except (ValueError, KeyError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- deliveries -----------------------------------------------------------------------------


class _Deliveries:
    """The ``hook_deliveries`` table of one namespace (sql/008_hook_deliveries.sql)."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    async def claim(self, source: str, delivery_id: str, event: str) -> _Reply | None:
        """Claim the delivery: None when it is new, else what it was answered."""
        row = await self.db.fetchone(
            "INSERT INTO hook_deliveries (namespace, source, delivery_id, event) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING delivery_id",
            (self.namespace, source, delivery_id, event))
        if row is not None:
            return None
        first = await self.db.fetchone(
            "SELECT status, response FROM hook_deliveries "
            "WHERE namespace = %s AND source = %s AND delivery_id = %s",
            (self.namespace, source, delivery_id))
        if first is None or first["status"] is None:  # in flight (or released meanwhile)
            return _Reply(202, {"status": "duplicate", "delivery": delivery_id,
                                "reason": "this delivery is being processed"})
        return _Reply(first["status"], {**first["response"], "duplicate": True})

    async def settle(self, source: str, delivery_id: str, reply: _Reply) -> None:
        if not reply.final:
            await self.release(source, delivery_id)
            return
        await self.db.execute(
            "UPDATE hook_deliveries SET status = %s, response = %s, subject = %s, thread_id = %s "
            "WHERE namespace = %s AND source = %s AND delivery_id = %s",
            (reply.status, Jsonb(reply.body), reply.subject, reply.thread_id,
             self.namespace, source, delivery_id))

    async def release(self, source: str, delivery_id: str) -> None:
        await self.db.execute(
            "DELETE FROM hook_deliveries "
            "WHERE namespace = %s AND source = %s AND delivery_id = %s",
            (self.namespace, source, delivery_id))

    async def threads(self, subject: str) -> list[str]:
        """The threads deliveries about ``subject`` started, newest first."""
        rows = await self.db.fetch(
            "SELECT thread_id, max(received_at) AS last FROM hook_deliveries "
            "WHERE namespace = %s AND subject = %s AND thread_id IS NOT NULL "
            "GROUP BY thread_id ORDER BY last DESC",
            (self.namespace, subject))
        return [r["thread_id"] for r in rows]


async def _handle(deliveries: _Deliveries, source: str, delivery_id: str, event: str,
                  work: Any) -> _Reply:
    """Run ``work()`` under the delivery's claim; a repeated delivery gets the first answer."""
    earlier = await deliveries.claim(source, delivery_id, event)
    if earlier is not None:
        return earlier
    try:
        reply = await work()
    except InvalidInput as exc:
        reply = _error(422, str(exc.code), str(exc))
    except OrchestratorError as exc:  # busy, a lost race...: may pass; a redelivery retries
        reply = _error(409, str(exc.code), str(exc))
    except BaseException:
        await asyncio.shield(deliveries.release(source, delivery_id))
        raise
    await deliveries.settle(source, delivery_id, reply)
    return reply


# --- GitHub ---------------------------------------------------------------------------------


@dataclass
class _GitHub:
    ctx: ServerContext
    config: GitHubHooks
    deliveries: _Deliveries
    source: str = ""  # github:<delivery id>
    actor: str = ""  # github:<login>

    async def record(self, action: str, target: str, detail: dict[str, Any]) -> None:
        await audit.record(self.ctx.orch.runtime.db, actor=self.actor, action=action,
                           target=target, detail=detail, source=self.source,
                           namespace=self.ctx.orch.settings.namespace)

    async def pull_request(self, payload: dict[str, Any]) -> _Reply:
        full_name = payload["repository"]["full_name"]
        repo = self.config.repo(full_name)
        if repo is None:
            return _unknown_repository(full_name)
        action = payload.get("action")
        if action not in _PR_ACTIONS:
            return _ignored(f"pull_request action {action!r} starts nothing "
                            f"(only {', '.join(sorted(_PR_ACTIONS))})")
        pr = payload["pull_request"]
        number, head, base = int(pr["number"]), pr["head"], pr["base"]
        if ((head.get("repo") or {}).get("full_name") or "").lower() != full_name.lower():
            return _ignored(f"the head of #{number} is in a fork: its code is not run "
                            "unreviewed; submit it through the API once reviewed")
        target = repo.target or base["ref"]
        if base["ref"] != target:
            return _ignored(f"#{number} targets {base['ref']!r}; this hook delivers into "
                            f"{target!r} only")
        subject = f"{full_name.lower()}#{number}"
        thread_id = _pr_thread(self.ctx.orch.settings.namespace, full_name, number,
                               head["sha"])
        if await self.ctx.orch.runtime.workflows.find(thread_id) is not None:
            return _Reply(200, {"status": "already_started", "thread_id": thread_id},
                          subject=subject, thread_id=thread_id)
        local = await asyncio.to_thread(_branch_at, repo, head["ref"], head["sha"])
        if local != head["sha"]:
            return _error(409, "stale_clone", (
                f"the clone {repo.path} has {head['ref']!r} at {local or 'nothing'}, the pull "
                f"request's head is {head['sha']}"
                + (f" (not on {repo.fetch_from!r} either)" if repo.fetch_from else "")
                + ": fetch it there, then redeliver"))
        await self.supersede(subject, thread_id)
        spec: dict[str, Any] = {"repo": repo.path, "source": head["ref"], "target": target}
        spec.update({k: v for k in ("test_command", "approval")
                     if (v := getattr(repo, k)) is not None})
        try:
            run = await self.ctx.runs.submit("pr_deployment", spec, thread_id, by=self.actor)
        except InvalidInput:
            if await self.ctx.orch.runtime.workflows.find(thread_id) is not None:  # a race
                return _Reply(200, {"status": "already_started", "thread_id": thread_id},
                              subject=subject, thread_id=thread_id)
            raise
        await self.record("github.pull_request.start", thread_id,
                          {"pull_request": subject, "action": action, "head": head["sha"],
                           "input": spec, "run_id": run.run_id})
        return _Reply(202, {"status": "queued", "thread_id": thread_id, "run_id": run.run_id},
                      subject=subject, thread_id=thread_id)

    async def supersede(self, subject: str, keep: str) -> None:
        """Cancel the runs of the pull request's older heads that are still active."""
        for thread_id in await self.deliveries.threads(subject):
            record = await self.ctx.orch.runtime.workflows.find(thread_id)
            if thread_id == keep or record is None or record.status not in _ACTIVE:
                continue
            await self.ctx.runs.cancel(thread_id, by=self.actor)
            await self.record("github.pull_request.supersede", thread_id,
                              {"pull_request": subject, "was": record.status})

    async def issue_comment(self, payload: dict[str, Any]) -> _Reply:
        full_name = payload["repository"]["full_name"]
        repo = self.config.repo(full_name)
        if repo is None:
            return _unknown_repository(full_name)
        issue, comment = payload["issue"], payload["comment"]
        if payload.get("action") != "created":
            return _ignored(f"issue_comment action {payload.get('action')!r} answers nothing")
        if not issue.get("pull_request"):
            return _ignored(f"#{issue['number']} is an issue, not a pull request")
        command = _COMMAND.match((comment.get("body") or "").strip())
        if command is None:
            return _ignored("not a command (a comment starting with /approve [comment] or "
                            "/reject [reason])")
        login = comment["user"]["login"]
        subject = f"{full_name.lower()}#{int(issue['number'])}"
        verb, rest = command.group(1).lower(), (command.group(2) or "").strip()
        detail = {"pull_request": subject, "comment_id": comment.get("id"), "command": verb}
        if login.lower() not in repo.reviewers:
            await self.record("github.answer.refused", subject,
                              {**detail, "reason": "not a reviewer"})
            return _ignored(f"{login} is not a reviewer of {full_name}; the question stays "
                            "pending")
        thread_id = await self.waiting(subject)
        if thread_id is None:
            return _ignored(f"no run of {subject} waits for approval")
        value = {"approve": verb == "approve", "by": self.actor,
                 "comment": rest[:4000] or None}
        run = await self.ctx.runs.resume(thread_id, value, by=self.actor)
        await self.record(f"github.{verb}", thread_id,
                          {**detail, "answer": value, "run_id": run.run_id})
        return _Reply(202, {"status": "queued", "thread_id": thread_id, "run_id": run.run_id,
                            "answer": value})

    async def waiting(self, subject: str) -> str | None:
        """The newest thread of ``subject`` with an approval question pending and no answer
        queued yet."""
        for thread_id in await self.deliveries.threads(subject):
            record = await self.ctx.orch.runtime.workflows.find(thread_id)
            if record is None or record.status != "interrupted":
                continue
            details = await self.ctx.orch.get(thread_id)
            kinds = {(i.get("value") or {}).get("kind") for i in details.interrupts}
            if "approval" in kinds and not await self.ctx.runs.runs(thread_id=thread_id,
                                                                    status="queued"):
                return thread_id
        return None


def _branch_at(repo: GitHubRepo, branch: str, sha: str) -> str | None:
    """The commit ``branch`` names in the clone, after fetching it from ``repo.fetch_from``
    when it is not at ``sha`` yet (a push GitHub announces before anyone fetched it). The fetch
    is bounded well inside GitHub's 10 s delivery timeout; a branch checked out in the clone
    is not updated (git refuses), and a failed fetch leaves the clone as it was."""
    try:
        local: str | None = commit_of(repo.path, branch)
    except RepositoryError:
        local = None
    if local == sha or repo.fetch_from is None:
        return local
    if run_git(repo.path, "check-ref-format", "--branch", branch).returncode != 0:
        return local  # not a branch name git accepts (a refspec must not be smuggled in)
    try:
        done = run_git(repo.path, "fetch", "--no-tags", "--quiet", "--", repo.fetch_from,
                       f"+refs/heads/{branch}:refs/heads/{branch}", timeout=_FETCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("fetching %s from %s into %s took over %ss", branch, repo.fetch_from,
                    repo.path, _FETCH_TIMEOUT)
        return local
    if done.returncode != 0:
        log.warning("fetching %s from %s into %s failed: %s", branch, repo.fetch_from,
                    repo.path, done.stderr.strip()[-500:])
        return local
    try:
        return commit_of(repo.path, branch)
    except RepositoryError:
        return None


def _pr_thread(namespace: str, full_name: str, number: int, sha: str) -> str:
    """The thread of a pull request's head: thread ids are unique across the namespaces
    sharing a database, so the namespace is part of it; a repository name too long for the
    200 characters of a thread id is shortened to a digest."""
    repo = full_name.lower().replace("/", ":")
    thread_id = f"{namespace}:github:{repo}:pr{number}:{sha[:12]}"
    if len(thread_id) > 200:
        repo = hashlib.sha256(repo.encode()).hexdigest()[:16]
        thread_id = f"{namespace}:github:{repo}:pr{number}:{sha[:12]}"
    return thread_id


def _unknown_repository(full_name: str) -> _Reply:
    return _error(404, "unknown_repository",
                  f"{full_name} is not in the hooks file's github.repos; add it (path, "
                  "reviewers...) and restart the server, or remove the webhook")


def _github_route(ctx: ServerContext, config: GitHubHooks, deliveries: _Deliveries) -> Route:
    async def github_hook(request: Request) -> JSONResponse:
        """GitHub webhook (pull_request, issue_comment, ping), signed by X-Hub-Signature-256."""
        body = await _body(request)
        if body is None:
            return _error(413, "payload_too_large", f"bodies over {MAX_BODY} bytes are "
                          "refused").response()
        if not signature_ok(config.secret, body, request.headers.get("x-hub-signature-256")):
            log.warning("github hook: missing or wrong X-Hub-Signature-256 from %s",
                        _client(request))
            return _error(401, "unauthorized", "missing or wrong X-Hub-Signature-256: set "
                          "the webhook's secret to github.secret of the hooks file").response()
        event = request.headers.get("x-github-event", "")
        delivery_id = request.headers.get("x-github-delivery", "")
        payload = _json_object(request, body)
        if payload is None or not _DELIVERY.match(delivery_id) or not event:
            return _error(400, "bad_request", "a GitHub delivery has X-GitHub-Event, "
                          "X-GitHub-Delivery and a JSON object body").response()
        if event == "ping":
            return JSONResponse({"status": "pong", "zen": payload.get("zen")})
        sender = ((payload.get("sender") or {}).get("login")) or "unknown"
        hook = _GitHub(ctx, config, deliveries, source=f"github:{delivery_id}",
                       actor=f"github:{sender}")
        handlers = {"pull_request": hook.pull_request, "issue_comment": hook.issue_comment}
        if event not in handlers:
            return _ignored(f"event {event!r} is not handled (pull_request, issue_comment, "
                            "ping)").response()
        if event == "issue_comment":
            login = (((payload.get("comment") or {}).get("user") or {}).get("login"))
            hook.actor = f"github:{login or sender}"

        async def work() -> _Reply:
            try:
                return await handlers[event](payload)
            except (KeyError, TypeError, ValueError) as exc:  # a payload not shaped as documented
                return _error(400, "bad_request", f"the {event} payload lacks what GitHub's "
                              f"documentation gives it ({type(exc).__name__}: {exc})")

        return (await _handle(deliveries, "github", delivery_id, event, work)).response()

    return Route("/hooks/github", github_hook, methods=["POST"], name="github_hook")


# --- the generic signed hook ----------------------------------------------------------------


def _generic_route(ctx: ServerContext, config: GenericHooks, deliveries: _Deliveries) -> Route:
    async def generic_hook(request: Request) -> JSONResponse:
        """Start a workflow with the body as its input, signed by X-Orchestrator-Signature-256."""
        body = await _body(request)
        if body is None:
            return _error(413, "payload_too_large", f"bodies over {MAX_BODY} bytes are "
                          "refused").response()
        if not signature_ok(config.secret, body,
                            request.headers.get("x-orchestrator-signature-256")):
            log.warning("generic hook: missing or wrong X-Orchestrator-Signature-256 from %s",
                        _client(request))
            return _error(401, "unauthorized", "missing or wrong X-Orchestrator-Signature-256: "
                          "sha256=<hex HMAC-SHA256 of the body with generic.secret>").response()
        workflow = request.path_params["workflow"]
        if workflow not in config.workflows:
            return _error(404, "unknown_workflow", f"the generic hook may not start {workflow!r}; "
                          f"it may start: {', '.join(config.workflows)}").response()
        data = _json_object(request, body)
        delivery_id = request.headers.get("x-orchestrator-delivery")
        if data is None or (delivery_id is not None and not _DELIVERY.match(delivery_id)):
            return _error(400, "bad_request", "the body must be a JSON object (the workflow's "
                          "input) and X-Orchestrator-Delivery 1-100 of A-Za-z0-9._:-").response()
        source = f"hook:{delivery_id}" if delivery_id else _client(request)
        namespace = ctx.orch.settings.namespace
        thread_id = f"{namespace}:hook:{workflow}:{delivery_id}" if delivery_id else None

        async def work() -> _Reply:
            run = await ctx.runs.submit(workflow, data, thread_id, by="hook:generic")
            await audit.record(ctx.orch.runtime.db, actor="hook:generic", action="hook.start",
                               target=run.thread_id, detail={"workflow": workflow,
                                                             "run_id": run.run_id},
                               source=source, namespace=ctx.orch.settings.namespace)
            return _Reply(202, {"status": "queued", "thread_id": run.thread_id,
                                "run_id": run.run_id}, thread_id=run.thread_id)

        if delivery_id is None:
            try:
                return (await work()).response()
            except InvalidInput as exc:
                return _error(422, str(exc.code), str(exc)).response()
        return (await _handle(deliveries, "generic", delivery_id, workflow, work)).response()

    return Route("/hooks/generic/{workflow}", generic_hook, methods=["POST"],
                 name="generic_hook")


def routes(ctx: ServerContext) -> list[Route]:
    """The webhook routes of ``ctx.hooks``'s sections (none without a hooks file).

    They carry no bearer token: each request is authenticated by its body's signature.
    """
    config: HooksConfig | None = ctx.hooks
    if config is None:
        return []
    deliveries = _Deliveries(ctx.orch.runtime.db, ctx.orch.settings.namespace)
    found = []
    if config.github is not None:
        found.append(_github_route(ctx, config.github, deliveries))
    if config.generic is not None:
        found.append(_generic_route(ctx, config.generic, deliveries))
    return found
