"""Which runbook action ``self_healing`` tries next: learned from verified outcomes.

For the diagnosed issue on a service, each action of the runbook's list for that issue has a
Beta-Bernoulli posterior of "verification found the service healthy after it": successes and
failures are the service's recorded attempts (:meth:`LearningStore.healing_evidence`), the
prior is the runbook's own order. The first action starts as a slight favourite,
Beta(1 + PRIOR_LEAD, 1), the last as Beta(1, 1), those between in proportion, so with no
history the order is the runbook's, and a few outcomes outweigh it.

* Deterministic by default: the actions are ordered by posterior mean, ties by their position
  in the runbook. With ``exploration={"seed": n}`` each action's score is a draw from its
  posterior (Thompson sampling) from a generator seeded by (seed, thread, attempt), so a run
  replays its choices and different runs explore.
* Only actions of the runbook's list for that issue are ever chosen; a person's rules win
  over what was learned: ``{"never": [{"service": "db", "action": "restart"}]}`` removes every
  matching action (``action`` names an action key or an action type; ``service`` and ``issue``
  narrow it, absent means any). When the rules leave nothing, nothing is chosen and the
  workflow escalates saying so.
* Within one incident an action already tried for the issue is not tried again while an
  untried one is left; once all were tried, the runbook's last allowed action repeats (as
  before learning: the last resort).

Every choice has a reason a person can read, e.g. "`reload`: 9 of 10 verified recoveries from
`latency` on `web`".
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Choice", "Exploration", "HealingRules", "NeverRule", "PRIOR_LEAD", "Ranked",
           "action_key", "allowed", "choose", "prior", "rank"]

#: Prior successes the runbook's first action has over its last one.
PRIOR_LEAD = 0.5


def action_key(action: Mapping[str, Any]) -> str:
    """The name an action is learned under: its ``name`` when the runbook gives one, else
    ``restart``, ``wait 5s`` or ``command: <argv>``."""
    if action.get("name"):
        return str(action["name"])
    kind = action.get("type", "?")
    if kind == "wait":
        return f"wait {float(action.get('seconds') or 0):g}s"
    if kind == "command":
        return "command: " + shlex.join(str(a) for a in action.get("argv") or [])
    return str(kind)


class NeverRule(BaseModel):
    """A person's rule: never take ``action`` (an action key or type) on ``service`` (any when
    absent) for ``issue`` (any when absent)."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(min_length=1, description="an action key (e.g. 'reload') or type "
                        "('restart', 'command', 'wait')")
    service: str | None = Field(None, min_length=1)
    issue: str | None = Field(None, min_length=1)

    def matches(self, service: str, issue: str, action: Mapping[str, Any]) -> bool:
        return ((self.service is None or self.service == service)
                and (self.issue is None or self.issue == issue)
                and self.action in (action_key(action), action.get("type")))

    def describe(self) -> str:
        where = f" on `{self.service}`" if self.service else ""
        what = f" for `{self.issue}`" if self.issue else ""
        return f"never `{self.action}`{where}{what}"


class HealingRules(BaseModel):
    """Rules a person set; they always win over what was learned."""

    model_config = ConfigDict(extra="forbid")

    never: list[NeverRule] = Field(default_factory=list)


class Exploration(BaseModel):
    """Thompson sampling instead of the posterior mean, from this seed."""

    model_config = ConfigDict(extra="forbid")

    seed: int


def prior(position: int, count: int) -> tuple[float, float]:
    """Beta(alpha, beta) prior of the action at ``position`` (from 0) of ``count``."""
    if count <= 1:
        return 1.0 + PRIOR_LEAD, 1.0
    return 1.0 + PRIOR_LEAD * (count - 1 - position) / (count - 1), 1.0


@dataclass(frozen=True)
class Ranked:
    """An action with its evidence, posterior and score (the mean, or a draw)."""

    key: str
    action: dict[str, Any]
    position: int
    successes: int
    failures: int
    alpha: float
    beta: float
    score: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def rank(actions: Sequence[Mapping[str, Any]], evidence: Mapping[str, tuple[int, int]], *,
         rng: random.Random | None = None) -> list[Ranked]:
    """``actions`` (a runbook's list, in its order) best first: by posterior mean, or by a
    draw from each posterior when ``rng`` is given; ties keep the runbook's order.

    ``evidence`` maps action keys to (verified successes, failures); other keys are ignored.
    """
    ranked = []
    for position, action in enumerate(actions):
        key = action_key(action)
        ok, failed = evidence.get(key, (0, 0))
        a0, b0 = prior(position, len(actions))
        alpha, beta = a0 + ok, b0 + failed
        score = rng.betavariate(alpha, beta) if rng is not None else alpha / (alpha + beta)
        ranked.append(Ranked(key, dict(action), position, ok, failed, alpha, beta, score))
    return sorted(ranked, key=lambda r: (-r.score, r.position))


def allowed(actions: Sequence[Mapping[str, Any]], *, service: str, issue: str,
            rules: HealingRules | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(the actions no rule forbids, in order; descriptions of what the rules removed)."""
    kept, removed = [], []
    for action in actions:
        rule = next((r for r in (rules.never if rules else []) if r.matches(service, issue,
                                                                            action)), None)
        if rule is None:
            kept.append(dict(action))
        else:
            removed.append(f"`{action_key(action)}` ({rule.describe()})")
    return kept, removed


@dataclass(frozen=True)
class Choice:
    """What to try next for ``issue``, and why. ``action`` is None when nothing may be tried
    (no runbook action for the issue, or the rules removed them all)."""

    issue: str
    action: dict[str, Any] | None
    action_key: str | None
    reason: str
    order: list[str]
    ranked: list[Ranked] = field(default_factory=list)
    #: the runbook actions a rule removed, each as "`key` (the rule)"
    excluded: list[str] = field(default_factory=list)

    def as_state(self, *, attempt: int, at: str) -> dict[str, Any]:
        """The entry of ``healing["choices"]`` (JSON)."""
        return {"issue": self.issue, "action": self.action, "action_key": self.action_key,
                "reason": self.reason, "order": list(self.order),
                "excluded": list(self.excluded), "attempt": attempt, "at": at, "scores": {r.key: {"verified": r.successes, "failed": r.failures,
                                             "mean": round(r.mean, 4),
                                             "score": round(r.score, 4)}
                                     for r in self.ranked}}


def _evidence_text(r: Ranked, issue: str, service: str) -> str:
    tried = r.successes + r.failures
    if not tried:
        return f"no recorded attempt at `{issue}` on `{service}` yet"
    return (f"{r.successes} of {tried} verified recoveries from `{issue}` on `{service}`")


def choose(*, service: str, issue: str, actions: Sequence[Mapping[str, Any]],
           evidence: Mapping[str, tuple[int, int]], tried: Set[str] = frozenset(),
           rules: HealingRules | None = None, exploration: Exploration | None = None,
           stream: str = "") -> Choice:
    """The action to try next for ``issue`` on ``service`` from the runbook's ``actions``.

    Args:
        evidence: (verified, failed) per action key on this service and issue.
        tried: action keys already tried for this issue in this incident.
        rules: a person's rules; they remove actions whatever was learned.
        exploration: sample the posteriors (seeded by ``exploration.seed`` and ``stream``,
            e.g. "thread|attempt") instead of ordering by their means.
    """
    usable, removed = allowed(actions, service=service, issue=issue, rules=rules)
    excluded = f"; excluded by a rule: {', '.join(removed)}" if removed else ""
    if not usable:
        why = (f"every runbook action for `{issue}` on `{service}` is excluded by a rule: "
               f"{', '.join(removed)}" if removed
               else f"the runbook has no action for `{issue}`")
        return Choice(issue, None, None, why, [], excluded=removed)
    rng = random.Random(f"{exploration.seed}|{stream}") if exploration else None
    ranked = rank(usable, evidence, rng=rng)
    order = [r.key for r in ranked]
    fresh = [r for r in ranked if r.key not in tried]
    if fresh:
        best = fresh[0]
        reason = f"`{best.key}`: {_evidence_text(best, issue, service)}"
        if best is not ranked[0]:
            reason += f"; already tried in this run: {', '.join(f'`{k}`' for k in order if k in tried)}"
        elif len(ranked) > 1:
            runner_up = ranked[1]
            tried_n = runner_up.successes + runner_up.failures
            reason += (f"; next `{runner_up.key}`: "
                       + (f"{runner_up.successes} of {tried_n}" if tried_n else "untried"))
        if rng is not None:
            reason += (f" (explored: drew {best.score:.2f} from Beta({best.alpha:g}, "
                       f"{best.beta:g}), seed {exploration.seed})")  # type: ignore[union-attr]
        elif not any(r.successes + r.failures for r in ranked):
            reason += " (the runbook's order)"
    else:
        best = max(ranked, key=lambda r: r.position)
        reason = (f"`{best.key}`: every allowed action for `{issue}` was tried in this run; "
                  f"the runbook's last one repeats ({_evidence_text(best, issue, service)})")
    return Choice(issue, best.action, best.key, reason + excluded, order, ranked, removed)
