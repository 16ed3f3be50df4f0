"""A fast simulated service for the runbook-learning simulations (issue 17, item 5).

Usage: python -m tests.support.healing_sim SERVICE SEED INCIDENTS [P_B] (settings from
ORCHESTRATOR_* variables): runs the incidents through self_healing in that process.

Each incident makes the service slow (``latency``) and draws, from the simulation's seeded
generator, which runbook action cures it: ``B`` with probability ``p_b`` (0.9), else ``A``.
So ``B`` fixes latency in 90% of incidents and ``A`` in 10%, and within one incident the other
action does work once the first did not: the runbook A, B takes 0.1 * 1 + 0.9 * 2 = 1.9
attempts on average, the learned order B, A 1.1.

:func:`sim_agent` is an ``infrastructure`` stand-in serving ``probe`` (the simulated health:
one sample, no HTTP) and ``fix`` (applying the named action to the simulated service) for any
number of simulated services at once, keyed by the URL's host; ``diagnose`` stays the built-in
agent's rules. Everything else of a ``self_healing`` run is real: the graph, the bus, the
checkpoints, the outcome records in PostgreSQL and the ordering that reads them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from orchestrator.state.schema import now_iso

from orchestrator.agent import Agent, RequestContext
from orchestrator.contracts.health import Sample
from orchestrator.contracts.infrastructure import Fix, FixResult, Probe, ProbeResult
from orchestrator.testing import stand_in

RUNBOOK = {"latency": [{"name": "A", "type": "wait", "seconds": 0},
                       {"name": "B", "type": "wait", "seconds": 0.001}]}


@dataclass
class SimService:
    """One simulated service: healthy, or slow until ``cure`` is applied."""

    name: str
    rng: random.Random
    p_b: float = 0.9
    cure: str | None = None
    fixes: list[str] = field(default_factory=list)

    def incident(self) -> str:
        """Make it slow; returns the action that will cure this incident."""
        self.cure = "B" if self.rng.random() < self.p_b else "A"
        return self.cure

    @property
    def healthy(self) -> bool:
        return self.cure is None

    def apply(self, action: str) -> None:
        self.fixes.append(action)
        if action == self.cure:
            self.cure = None


class SimServices(dict[str, SimService]):
    """The simulated services by name; :meth:`agent` serves them all."""

    def add(self, name: str, seed: int, p_b: float = 0.9) -> SimService:
        self[name] = SimService(name, random.Random(seed), p_b)
        return self[name]

    def heal_input(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A ``self_healing`` input for the simulated service ``name``."""
        return {"service": name, "health_url": f"http://{name}.sim.invalid/health",
                "runbook": RUNBOOK, "max_attempts": 3, "verify_timeout": 0,
                "restart": None, **overrides}

    def agent(self) -> Agent:
        async def probe(payload: Probe, ctx: RequestContext) -> dict[str, Any]:
            service = self[urlsplit(payload.health_url).hostname.split(".")[0]]  # type: ignore[union-attr]
            sample = Sample(status="healthy" if service.healthy else "unhealthy",
                            issue=None if service.healthy else "latency", http_status=200,
                            response_ms=5.0 if service.healthy else 900.0, error_rate=None,
                            p95_ms=None, detail="" if service.healthy else "slow: 900 ms",
                            at=now_iso())
            return ProbeResult(healthy=service.healthy,
                               issues=[] if service.healthy else ["latency"], attempts=1,
                               samples=[sample]).model_dump(mode="json")

        async def fix(payload: Fix, ctx: RequestContext) -> dict[str, Any]:
            # the agent gets the action without its runbook name: A waits 0 s, B 0.001 s
            action = "A" if payload.action.seconds == 0 else "B"
            self[payload.service].apply(action)
            return FixResult(action="wait", ok=True,
                             detail=f"applied {action}").model_dump(mode="json")

        return stand_in("infrastructure", {"probe": _typed(Probe, probe),
                                           "fix": _typed(Fix, fix)}, keep_builtin=True)


def _typed(model: type, handler: Any) -> Any:
    """A handler taking the payload as ``model`` (stand-ins get the raw dict)."""
    async def run(payload: dict[str, Any], ctx: RequestContext) -> Any:
        return await handler(model.model_validate(payload), ctx)
    return run


async def _main(service: str, seed: int, incidents: int, p_b: float = 0.9) -> None:
    """Run ``incidents`` incidents of a simulated service through ``self_healing`` in this
    process (settings from ``ORCHESTRATOR_*``), printing each run's first choice as JSON."""
    import json

    from orchestrator.agent import builtin_agents
    from orchestrator.facade import Orchestrator
    from orchestrator.settings import Settings

    sims = SimServices()
    sims.add(service, seed, p_b)
    agents = {**builtin_agents(), "infrastructure": sims.agent()}
    async with Orchestrator(Settings.from_env(), agents=list(agents.values())) as orch:
        for _ in range(incidents):
            sims[service].incident()
            result = await orch.run("self_healing", sims.heal_input(service))
            healing = (await orch.get(result.thread_id)).values["healing"]
            print(json.dumps({"thread_id": result.thread_id,
                              "outcome": result.final_result["outcome"],
                              "attempts": result.final_result["attempts"],
                              "first": healing["choices"][0]}), flush=True)


if __name__ == "__main__":
    import asyncio
    import sys

    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                      *(float(a) for a in sys.argv[4:5])))
