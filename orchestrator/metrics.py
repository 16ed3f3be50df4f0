"""Prometheus metrics for every component, on the default registry.

Expose them with ``orchestrator worker --metrics-port N`` or :func:`start_metrics_server`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "CLAIM_RENEWAL_FAILURES",
    "CLAIMS_LOST",
    "FENCED_WRITES_REFUSED",
    "BUS_REQUESTS",
    "BUS_LATENCY",
    "BUS_HANDLED",
    "BUS_DEAD_LETTERS",
    "WORKFLOW_RUNS",
    "WORKFLOW_STEP_SECONDS",
    "LIVE_AGENTS",
    "WORKER_CONCURRENCY",
    "WORKER_BACKLOG",
    "LOCK_ACQUISITIONS",
    "LOCK_WAIT_SECONDS",
    "LOCKS_HELD",
    "LOCK_CONTENTION",
    "CANARY_STAGE",
    "CANARY_ROLLBACKS",
    "HEALING_ATTEMPTS",
    "HEALING_OUTCOMES",
    "TASK_CACHE",
    "EVENTS_DROPPED",
    "MODEL_CALLS",
    "MODEL_TOKENS",
    "MODEL_COST",
    "MODEL_CALLS_UNPRICED",
    "MODEL_BUDGET_REMAINING",
    "start_metrics_server",
]

BUS_REQUESTS = Counter(
    "orchestrator_bus_requests_total",
    "Agent requests sent, by target agent type and response status",
    ["agent_type", "status"],
)
BUS_LATENCY = Histogram(
    "orchestrator_bus_request_seconds",
    "Round trip of an agent request, from send to response, by agent type and status",
    ["agent_type", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUS_HANDLED = Counter(
    "orchestrator_agent_requests_handled_total",
    "Requests handled by agents in this process, by agent type and outcome",
    ["agent_type", "outcome"],
)
BUS_DEAD_LETTERS = Counter(
    "orchestrator_bus_dead_letters_total",
    "Requests moved to a dead-letter stream, by agent type and reason",
    ["agent_type", "reason"],
)
WORKFLOW_RUNS = Counter(
    "orchestrator_workflow_runs_total",
    "Workflow invocations (run or resume) that ended, by workflow type and resulting status",
    ["workflow_type", "status"],
)
WORKFLOW_STEP_SECONDS = Histogram(
    "orchestrator_workflow_step_seconds",
    "Duration of graph steps, by workflow type and node",
    ["workflow_type", "node"],
)
LIVE_AGENTS = Gauge(
    "orchestrator_live_agents",
    "Live agent instances hosted by this process, by agent type",
    ["agent_type"],
)
WORKER_CONCURRENCY = Gauge(
    "orchestrator_worker_concurrency",
    "Handler concurrency limit of this process's worker, by agent type (autoscaled)",
    ["agent_type"],
)
WORKER_BACKLOG = Gauge(
    "orchestrator_worker_backlog",
    "Requests waiting or unacknowledged for an agent type, as last seen by this worker",
    ["agent_type"],
)
LOCK_ACQUISITIONS = Counter(
    "orchestrator_lock_acquisitions_total",
    "Resource lock acquisitions, by outcome (acquired, taken_over, timeout, refused)",
    ["outcome"],
)
LOCK_WAIT_SECONDS = Histogram(
    "orchestrator_lock_wait_seconds",
    "Time spent waiting for a resource lock",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
LOCK_CONTENTION = Counter(
    "orchestrator_lock_contention_total",
    "Lock acquisitions that found the resource held and had to wait",
)
LOCKS_HELD = Gauge("orchestrator_locks_held", "Resource locks held by this process")


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a background thread."""
    start_http_server(port, addr=addr)

CANARY_STAGE = Gauge(
    "orchestrator_canary_stage_percent",
    "Traffic percentage of each deployment's canary rollout (0 after a rollback)",
    ["deployment"],
)
CANARY_ROLLBACKS = Counter(
    "orchestrator_canary_rollbacks_total",
    "Canary rollbacks, by deployment and mode (automatic, manual)",
    ["deployment", "mode"],
)
HEALING_ATTEMPTS = Counter(
    "orchestrator_healing_attempts_total",
    "Self-healing fix attempts, by service, issue kind and action",
    ["service", "issue", "action"],
)
HEALING_OUTCOMES = Counter(
    "orchestrator_healing_outcomes_total",
    "Self-healing runs by service and outcome (healthy, healed, escalated, gave_up)",
    ["service", "outcome"],
)
TASK_CACHE = Counter(
    "orchestrator_task_cache_total",
    "Plan tasks answered from the result cache (hit) or carried out (miss)",
    ["result"],
)
EVENTS_DROPPED = Counter(
    "orchestrator_events_dropped_total",
    "Events of the events stream never written, by reason: full (queue full while Redis was "
    "down or slow), unsent (Redis refused or did not answer), closed, invalid",
    ["reason"],
)
CLAIM_RENEWAL_FAILURES = Counter(
    "orchestrator_claim_renewal_failures_total",
    "Rounds of renewing a worker's execution claims (claims) or keeping its handled stream "
    "entries pending (pending) that failed (Redis unreachable or too slow)",
    ["what"],
)
CLAIMS_LOST = Counter(
    "orchestrator_claims_lost_total",
    "Execution claims found expired or taken over while their handler still ran",
)
FENCED_WRITES_REFUSED = Counter(
    "orchestrator_fenced_writes_refused_total",
    "Checkpoint and workflow writes of `orchestrator serve` runners refused because the runner "
    "no longer held the run's lease, by what was written (checkpoint, workflow)",
    ["what"],
)
MODEL_CALLS = Counter(
    "orchestrator_model_calls_total",
    "Chat model calls made by agents in this process, by model and agent type",
    ["model", "agent_type"],
)
MODEL_TOKENS = Counter(
    "orchestrator_model_tokens_total",
    "Tokens of model calls whose provider reported usage, by model, agent type and kind "
    "(input, cached, output, reasoning; cached and reasoning are part of input and output)",
    ["model", "agent_type", "kind"],
)
MODEL_COST = Counter(
    "orchestrator_model_cost_usd_total",
    "Cost in USD of the priced model calls, by model and agent type",
    ["model", "agent_type"],
)
MODEL_CALLS_UNPRICED = Counter(
    "orchestrator_model_calls_unpriced_total",
    "Model calls with no cost: no price known for the model, or no usage reported",
    ["model", "why"],
)
MODEL_BUDGET_REMAINING = Gauge(
    "orchestrator_model_budget_remaining_usd",
    "What is left of today's budget after the last reservation or settlement seen by this "
    "process, by scope (namespace, agent:<type>)",
    ["scope"],
)
