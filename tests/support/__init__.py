"""Helpers shared by the test files (plain functions and classes; the fixtures are in
``tests/conftest.py``, which pytest finds by itself and nothing imports).

* ``processes``: the orchestrator CLI command, free ports, waiting, killing and reaping
  processes started by a test;
* ``cli``: ``CLI``, the runner behind the ``cli`` fixture (``orchestrator run`` / ``resume``
  subprocesses), and what tests poll and check with it;
* ``commands``: commands given to workflows (a traffic command that logs, a restart spec);
* ``docs``: packages to document and checks of the docs written for them;
* ``servers``: throw-away servers of a test's own (a restartable ``redis-server``, a
  PostgreSQL cluster).

A test file imports from here, never from another test file or from ``conftest``.
"""
