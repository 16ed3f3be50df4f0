"""The command line of ``orchestrator``: its commands and options, and the Settings they ask for."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Settings


def _thread_id(value: str) -> str:
    """argparse type of a thread id: 1-200 printable characters (it is shown, logged, typed)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for a new id)")
    if len(value) > 200:
        raise argparse.ArgumentTypeError(f"is {len(value)} characters long; at most 200")
    if not value.isprintable() or value != value.strip():
        raise argparse.ArgumentTypeError(
            f"{value!r} holds control characters or surrounding spaces; use printable text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not a positive number")
    return number


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langgraph-orchestrator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrator",
        description="Durable LangGraph workflows for multi-agent software delivery. "
        "Configuration comes from ORCHESTRATOR_* variables (see README); with no database "
        "or Redis URL set, embedded ones are started in ORCHESTRATOR_DATA_DIR.",
        epilog="exit codes: 0 completed, 3 interrupted (resume it), 1 failed, 2 bad usage/input, "
               "4 completed but partial, 130 stopped by Ctrl-C (resume it)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def local_agents_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-local-agents", action="store_true",
                        help="do not host the built-in agents in this process; leave agent "
                        "work to `orchestrator worker` processes")

    def server_flags(sp: argparse.ArgumentParser, detach: bool = False) -> None:
        sp.add_argument("--server", metavar="URL",
                        help="send it to `orchestrator serve` at URL (default: "
                        "ORCHESTRATOR_SERVER; unset: run here)")
        sp.add_argument("--token", help="bearer token for --server (default: ORCHESTRATOR_TOKEN)")
        if detach:
            sp.add_argument("--detach", action="store_true",
                            help="with a server: return once the run is queued (prints the "
                            "thread id) instead of waiting for it")

    run = sub.add_parser("run", help="start a workflow and run it until it ends or pauses")
    run.add_argument("workflow", help="workflow name (see `orchestrator graphs`)")
    run.add_argument("--input", metavar="FILE", help="JSON input object from FILE, or - for stdin")
    run.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                     help="set one input field (VALUE parsed as JSON when it is JSON); repeatable")
    run.add_argument("--thread-id", type=_thread_id,
                     help="thread id for the new workflow (default: a new UUID)")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object")
    local_agents_flag(run)
    server_flags(run, detach=True)

    resume = sub.add_parser("resume", help="continue a paused, crashed or failed workflow")
    resume.add_argument("thread_id")
    resume.add_argument("--value", metavar="JSON",
                        help="answer to the pending question, as JSON that fits its schema "
                        "(`orchestrator show THREAD_ID` prints the question and examples)")
    resume.add_argument("--json", action="store_true", help="print the result as one JSON object")
    local_agents_flag(resume)
    server_flags(resume, detach=True)

    recover = sub.add_parser("recover", help="continue every running workflow whose process died")
    recover.add_argument("--json", action="store_true")
    local_agents_flag(recover)

    ls = sub.add_parser("ls", help="list workflows, most recently updated first")
    ls.add_argument("--status", choices=["queued", "running", "interrupted", "completed", "failed", "cancelled"])
    ls.add_argument("--type", dest="workflow_type", help="only this workflow type")
    ls.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                    help="at most N workflows (default 50)")
    ls.add_argument("--json", action="store_true")
    server_flags(ls)

    show = sub.add_parser("show", help="show one workflow: record, state, pending interrupts")
    show.add_argument("thread_id")
    show.add_argument("--history", action="store_true", help="also list its checkpoints")
    show.add_argument("--json", action="store_true")

    prune = sub.add_parser(
        "prune", help="delete old checkpoints of finished workflows by the retention policy "
        "(ORCHESTRATOR_RETENTION_POLICY); named ones, pending questions and queued or running "
        "workflows are never touched, and a pruned workflow keeps its result")
    prune.add_argument("--dry-run", action="store_true",
                       help="only count what would be deleted; change nothing")
    prune.add_argument("--json", action="store_true")

    restore = sub.add_parser(
        "restore", help="take a paused or ended workflow back to a named checkpoint; the next "
        "`orchestrator resume` continues from there")
    restore.add_argument("thread_id")
    restore.add_argument("name", help="the checkpoint's name (`orchestrator show THREAD_ID "
                         "--history` lists them)")
    restore.add_argument("--json", action="store_true")
    server_flags(show)

    cancel = sub.add_parser("cancel", help="cancel a workflow: its queued runs, and its running "
                            "one through the server that runs it")
    cancel.add_argument("thread_id")
    cancel.add_argument("--json", action="store_true")
    server_flags(cancel)

    token = sub.add_parser("token", help="bearer tokens of the HTTP API (`orchestrator serve`)")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION")
    token_create = token_sub.add_parser("create", help="create a token and print it, once")
    token_create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"],
                              help="viewer: read; operator: also submit, answer, cancel, "
                              "replay, restore; admin: also tokens and purge")
    token_create.add_argument("--name", help="its name, shown in the audit trail (default: "
                              "<role>-<6 hex digits>)")
    token_ls = token_sub.add_parser("ls", help="list the tokens (never their secrets)")
    token_ls.add_argument("--all", action="store_true", help="include revoked tokens")
    token_ls.add_argument("--json", action="store_true")
    token_revoke = token_sub.add_parser("revoke", help="revoke a token at once")
    token_revoke.add_argument("name")

    audit = sub.add_parser("audit", help="the audit trail: who changed what, when, from where")
    audit.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                       help="the newest N entries (default 50)")
    audit.add_argument("--target", help="only entries about this thread id, run or token")
    audit.add_argument("--json", action="store_true")

    graphs = sub.add_parser("graphs", help="list the available workflows")
    graphs.add_argument("--json", action="store_true")

    agents = sub.add_parser("agents", help="list registered agent instances")
    agents.add_argument("--all", action="store_true", help="include offline instances")
    agents.add_argument("--json", action="store_true")

    worker = sub.add_parser("worker", help="host agents until SIGTERM/SIGINT")
    worker.add_argument("--agents", required=True, metavar="TYPE[,TYPE...]",
                        help="agent types to host, e.g. docs")
    worker.add_argument("--min", dest="min_concurrency", type=int, metavar="N",
                        help="handlers run at once per agent type, at least (default 2)")
    worker.add_argument("--max", dest="max_concurrency", type=int, metavar="N",
                        help="handlers run at once per agent type, at most (default 10); "
                        "the worker scales between the two on the backlog")
    worker.add_argument("--metrics-port", type=int, metavar="N",
                        help="serve Prometheus metrics on 127.0.0.1:N")

    locks = sub.add_parser("locks", help="list held resource locks")
    locks.add_argument("--all", action="store_true", help="include free locks (last token)")
    locks.add_argument("--json", action="store_true")

    dlq = sub.add_parser("dlq", help="dead-lettered agent requests")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION")
    dlq_ls = dlq_sub.add_parser("ls", help="list dead letters")
    dlq_ls.add_argument("--agent", help="only this agent type")
    dlq_ls.add_argument("--json", action="store_true")
    dlq_show = dlq_sub.add_parser("show", help="one dead letter, with its message")
    dlq_show.add_argument("agent")
    dlq_show.add_argument("id")
    dlq_replay = dlq_sub.add_parser("replay", help="queue dead letters again (all of the type "
                                    "when no id is given)")
    dlq_replay.add_argument("agent")
    dlq_replay.add_argument("ids", nargs="*", metavar="ID")
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters (all of the type when no "
                                   "id is given)")
    dlq_purge.add_argument("agent")
    dlq_purge.add_argument("ids", nargs="*", metavar="ID")

    analyze = sub.add_parser(
        "analyze", help="import dependencies of a repository (Python, JavaScript, TypeScript)",
        description="Import-dependency analysis by the planner agent, run in this process (no "
        "database or Redis needed): files, edges as [importer, imported], cycles, "
        "topological batches and the critical path.")
    analyze.add_argument("path", help="repository folder")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")

    plan = sub.add_parser(
        "plan", help="draft a plan for plan_execution from a goal with the chat model",
        description="The planner agent drafts a plan (the YAML plan_execution takes) from the "
        "goal, the repository's files and its import graph, with the chat model "
        "(ORCHESTRATOR_CHAT_MODEL); run in this process. Edit the plan before running it.")
    plan.add_argument("goal", help="what the plan should achieve, in words")
    plan.add_argument("--repo", required=True, help="the repository's folder")
    plan.add_argument("--output", metavar="FILE",
                      help="where to write the plan (default plan.yaml; never overwritten)")

    estimate = sub.add_parser(
        "estimate", help="predict a plan's model calls: tokens and cost per task and in total")
    estimate.add_argument("plan", help="the plan file (YAML or JSON)")
    estimate.add_argument("--json", action="store_true",
                          help="print {tasks: [...], total: {...}} as one JSON object")

    costs = sub.add_parser(
        "costs", help="what model calls cost, from the ledger, with recommendations",
        description="Totals of the model calls recorded in the ledger (tokens, cost; calls "
        "with no known price or usage are counted apart, never as $0), then recommendations "
        "read from the same rows (always in the text output).")
    costs.add_argument("--thread", metavar="T", help="one workflow's calls")
    costs.add_argument("--type", metavar="W", help="the calls of one workflow type")
    costs.add_argument("--since", metavar="WHEN",
                       help="a period (7d, 12h, 30m) or an ISO date; default: all")
    costs.add_argument("--by", choices=("model", "agent", "node"), default="model",
                       help="group the totals by (default model)")
    costs.add_argument("--json", action="store_true",
                       help="print the ledger's rows (thread_id, model, input_tokens, "
                       "output_tokens, cost_usd...) as one JSON array")

    learn = sub.add_parser("learn", help="what was learned from outcomes: stats, reset")
    learn_sub = learn.add_subparsers(dest="learn_command", metavar="ACTION")
    learn_stats = learn_sub.add_parser(
        "stats", help="success rates of fixes and plan tasks (by prompt version, tier, kind), "
        "healing (by service, issue, action), agent calls, canaries, review answers",
        description="A filter narrows the sections that have its dimension and leaves the "
        "others out.")
    learn_stats.add_argument("--service", metavar="S", help="one service's healing and canary")
    learn_stats.add_argument("--kind", metavar="K", help="one issue kind or task kind")
    learn_stats.add_argument("--repo", metavar="R", help="one repository's tasks and fixes")
    learn_stats.add_argument("--json", action="store_true",
                             help="print one JSON object with a key per section")
    learn_reset = learn_sub.add_parser(
        "reset", help="forget outcome records (needs --yes)",
        description="Deletes outcome records: what was learned from them goes back to the "
        "defaults (the runbook's own order, plan estimates, no past fixes).")
    forget = learn_reset.add_mutually_exclusive_group()
    forget.add_argument("--service", metavar="S", help="that service's healing records")
    forget.add_argument("--repo", metavar="R", help="that repository's task and fix records")
    forget.add_argument("--all", action="store_true", help="every record of the namespace")
    learn_reset.add_argument("--yes", action="store_true", help="really delete them")
    learn_reset.add_argument("--json", action="store_true",
                             help="print the rows deleted per table as JSON")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.add_parser("migrate", help="apply pending SQL migrations (re-running is a no-op)")

    services = sub.add_parser("services", help="the embedded PostgreSQL and Redis")
    services_sub = services.add_subparsers(dest="services_command", metavar="ACTION")
    services_sub.add_parser("status", help="are the embedded services running?")
    services_stop = services_sub.add_parser(
        "stop", help="stop the embedded services of the data dir (refused while other "
        "processes use them, unless --force)")
    services_stop.add_argument("--force", action="store_true",
                               help="stop them even under live processes (listed)")

    serve = sub.add_parser(
        "serve", help="the service: runners, the cluster's sweeper and the HTTP API, until "
        "SIGTERM (which hands unfinished runs back to the queue)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8420, help="HTTP port (default 8420)")
    serve.add_argument("--concurrency", type=_positive_int, default=4, metavar="N",
                       help="runs executed at once by this process (default 4)")
    serve.add_argument("--hooks", metavar="FILE", help="webhook configuration (YAML)")
    serve.add_argument("--local-agents", action="store_true",
                       help="host the built-in agents in this process too (default: they run "
                       "in `orchestrator worker` processes, reached over the bus)")
    return p


# -- helpers -----------------------------------------------------------------------------------


def settings_for(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "no_local_agents", False):
        overrides["local_agents"] = False
    return Settings.from_env(**overrides)
