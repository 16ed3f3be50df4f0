"""Tokens (stored hashed, roles, revocation) and the audit trail, in the database and through
the CLI (``token create|ls|revoke``, ``audit``)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.errors import Forbidden, InvalidInput, Unauthorized
from orchestrator.service import audit
from orchestrator.service.auth import Identity, TokenStore, check_role


async def run_cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                  *argv: str) -> tuple[int, str, str]:
    """``orchestrator ARGV`` in this process (its own event loop, in a thread), with the
    test's settings; returns the exit code, stdout and stderr."""
    for key, value in env.items():
        if key.startswith("ORCHESTRATOR_"):
            monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_a_token_is_stored_only_as_its_hash_and_authenticates(orchestrator) -> None:
    db, ns = orchestrator.runtime.db, orchestrator.settings.namespace
    store = TokenStore(db, ns)
    info, secret = await store.create("operator", "ci", by="ana")
    assert info.name == "ci" and info.role == "operator" and info.created_by == "ana"
    assert secret.startswith("orch_") and len(secret) > 40
    rows = await db.fetch("SELECT * FROM api_tokens WHERE namespace = %s", (ns,))
    assert len(rows) == 1
    assert secret not in json.dumps(rows, default=str)  # the secret is nowhere in the table
    assert rows[0]["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()

    assert await store.authenticate(f"Bearer {secret}") == Identity("ci", "operator")
    assert await store.authenticate(f"bearer   {secret}") == Identity("ci", "operator")
    for bad in (None, "", secret, f"Basic {secret}", "Bearer ", f"Bearer {secret}x"):
        with pytest.raises(Unauthorized):
            await store.authenticate(bad)
    # another namespace's server does not know it
    with pytest.raises(Unauthorized):
        await TokenStore(db, ns + "x").authenticate(f"Bearer {secret}")


async def test_a_revoked_token_is_refused_and_its_name_can_be_used_again(orchestrator) -> None:
    store = TokenStore(orchestrator.runtime.db, orchestrator.settings.namespace)
    _, old = await store.create("admin", "ops")
    with pytest.raises(InvalidInput, match="exists"):
        await store.create("viewer", "ops")
    assert await store.revoke("ops") is True
    assert await store.revoke("ops") is False  # nothing active by that name any more
    with pytest.raises(Unauthorized, match="revoked"):
        await store.authenticate(f"Bearer {old}")
    info, new = await store.create("viewer", "ops")
    assert info.role == "viewer" and info.revoked_at is None
    with pytest.raises(Unauthorized):
        await store.authenticate(f"Bearer {old}")
    assert (await store.authenticate(f"Bearer {new}")).role == "viewer"
    assert [t.name for t in await store.list()] == ["ops"]


async def test_bad_roles_and_names_are_refused(orchestrator) -> None:
    store = TokenStore(orchestrator.runtime.db, orchestrator.settings.namespace)
    with pytest.raises(InvalidInput, match="role 'root'"):
        await store.create("root")
    for name in ("", " x", "a\nb", "x" * 101):
        with pytest.raises(InvalidInput, match="token name"):
            await store.create("viewer", name)
    info, _ = await store.create("viewer")
    assert info.name.startswith("viewer-")


def test_roles_are_ordered_viewer_operator_admin() -> None:
    viewer, operator, admin = (Identity(r, r) for r in ("viewer", "operator", "admin"))
    check_role(admin, "admin")
    check_role(operator, "viewer")
    check_role(viewer, "viewer")
    with pytest.raises(Forbidden, match="role viewer; this needs operator"):
        check_role(viewer, "operator")
    with pytest.raises(Forbidden):
        check_role(operator, "admin")


async def test_audit_entries_are_kept_per_namespace_newest_first(orchestrator) -> None:
    db, ns = orchestrator.runtime.db, orchestrator.settings.namespace
    first = await audit.record(db, actor="ana", action="run.submit", target="t1",
                               detail={"workflow": "x"}, source="10.0.0.1", namespace=ns)
    second = await audit.record(db, actor="bob", action="run.cancel", target="t2", detail={},
                                source="cli@h", namespace=ns)
    await audit.record(db, actor="eve", action="run.cancel", target="t3", detail={},
                       source="x", namespace=ns + "other")
    found = await audit.entries(db, ns)
    mine = [e for e in found if e.namespace == ns]
    assert [e.id for e in mine] == [second, first]
    assert mine[1].to_dict()["detail"] == {"workflow": "x"} and mine[1].source == "10.0.0.1"
    assert "eve" not in {e.actor for e in found}
    assert [e.target for e in await audit.entries(db, ns, target="t1")] == ["t1"]


async def test_cli_token_create_ls_revoke_and_audit(orchestrator, service_env,
                                                    monkeypatch) -> None:
    code, out, err = await run_cli(service_env, monkeypatch, "token", "create", "--role",
                                   "operator", "--name", "deploy-bot")
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("orch_") and "shown this once" in err
    store = TokenStore(orchestrator.runtime.db, orchestrator.settings.namespace)
    assert await store.authenticate(f"Bearer {secret}") == Identity("deploy-bot", "operator")

    code, out, _ = await run_cli(service_env, monkeypatch, "token", "ls", "--json")
    listed: list[dict[str, Any]] = json.loads(out)
    assert [(t["name"], t["role"]) for t in listed] == [("deploy-bot", "operator")]
    assert secret not in out

    code, out, err = await run_cli(service_env, monkeypatch, "token", "revoke", "nobody")
    assert code == 2 and "no active token named 'nobody'" in err
    code, out, _ = await run_cli(service_env, monkeypatch, "token", "revoke", "deploy-bot")
    assert code == 0 and "revoked deploy-bot" in out
    with pytest.raises(Unauthorized):
        await store.authenticate(f"Bearer {secret}")

    code, out, _ = await run_cli(service_env, monkeypatch, "audit", "--json")
    assert code == 0
    entries = [(e["action"], e["target"], e["source"]) for e in json.loads(out)]
    host = socket.gethostname()
    assert entries[:2] == [("token.revoke", "deploy-bot", f"cli@{host}"),
                           ("token.create", "deploy-bot", f"cli@{host}")]
    code, out, _ = await run_cli(service_env, monkeypatch, "audit", "--limit", "1")
    assert code == 0 and "token.revoke" in out and "token.create" not in out
