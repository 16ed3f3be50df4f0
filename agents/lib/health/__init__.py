"""Health sampling of a running service, for canary stages and self-healing.

A :class:`~orchestrator.agents.lib.health.probe.Prober` takes one
:class:`~orchestrator.contracts.health.Sample` of a service at a time;
:func:`~orchestrator.agents.lib.health.probe.observe` takes a few samples some time apart and
:func:`~orchestrator.agents.lib.health.judge.judge` turns them into one verdict. Every probe is
bounded by ``HealthSource.timeout`` (the whole request: connect, send, read the body), so
nothing here waits for ever and nothing blocks the event loop.

* :mod:`~orchestrator.agents.lib.health.probe`: probing a URL (``kind="http"`` or
  ``"prometheus"``), what an answer says, and :func:`observe`;
* :mod:`~orchestrator.agents.lib.health.prometheus`: a metrics page's counters and latency
  histogram, and the window between two scrapes (error rate, p95, resets);
* :mod:`~orchestrator.agents.lib.health.judge`: the thresholds that make a sample degraded or
  unhealthy, and the verdict over several samples.

The models (:class:`~orchestrator.contracts.health.HealthSource`,
:class:`~orchestrator.contracts.health.Thresholds`, ``Sample``, ``Observation``) cross the bus,
so they live in the contract :mod:`orchestrator.contracts.health`.
"""
