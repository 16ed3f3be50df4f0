"""Helpers shared by the test files (plain functions and classes; the fixtures are in
``tests/conftest.py``, which pytest finds by itself and nothing imports).

* ``processes``: the orchestrator CLI command, free ports, waiting, killing and reaping
  processes started by a test;
* ``cli``: ``CLI``, the runner behind the ``cli`` fixture (``orchestrator run`` / ``resume``
  subprocesses), and what tests poll and check with it;
* ``commands``: commands given to workflows (a traffic command that logs, a restart spec);
* ``docs``: packages to document and checks of the docs written for them;
* ``servers``: throw-away servers of a test's own (a restartable ``redis-server``, a
  PostgreSQL cluster);
* ``projects``: a user's project with its own ``agents``, ``workflows`` and ``state`` packages;
* ``fixture_repo``, ``fixture_plan``: the git repositories (branches to review, test and merge;
  a plan's repository) that the fixtures and tests build;
* ``graphs_for_tests``: small graphs that call stand-in agents;
* ``fake_chat``: chat models for the developer's and infrastructure's model paths;
* ``openai_server``: an OpenAI-compatible chat completions server on loopback, scripted by the
  test (the ``model_server`` fixture), for the real ``langchain-openai`` client path;
* ``fake_models``: in-process chat models reporting ``usage_metadata`` (streamed or not);
* ``socket_guard``: refuses connections off loopback (``tests/test_llm*`` and ``no_network``
  tests; ``guard_site`` puts it in the processes they start);
* ``service_app``: an HTTP service to probe, break and restart (run as a subprocess);
* ``agent_process``, ``cli_process``: processes a test starts and kills (``python -m
  tests.support.agent_process`` / ``cli_process``).

A test file imports from here, never from another test file or from ``conftest``.
"""
