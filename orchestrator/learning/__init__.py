"""Learning from outcomes: what happened is recorded, and the decisions the orchestrator
already makes read it back.

* :mod:`orchestrator.learning.store`: the outcome records (healing attempts, agent calls,
  canary stages and rollbacks, review answers; ``sql/013_outcomes.sql``), written once per
  attempt (a natural key and ``ON CONFLICT DO NOTHING``), never failing a workflow, and the
  readers of their statistics (``orchestrator learn stats``).
* :mod:`orchestrator.learning.runbooks`: the order in which ``self_healing`` tries the
  runbook's actions for an issue, from their verified successes on that service (a
  Beta-Bernoulli posterior whose prior is the runbook's own order), and the reason for each
  choice.

The other modules of the package are documented where they live. Nothing is re-exported
here: import from the module that defines a name.
"""
