"""A user's project whose own top-level packages bear the generic names ``agents``,
``workflows`` and ``state`` — with modules named like ours — to prove what is installed cannot be
shadowed by them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHADOWING_PACKAGES", "make_shadowing_project"]

#: package -> {module: source}; each module would break a run if it were taken for ours
SHADOWING_PACKAGES: dict[str, dict[str, str]] = {
    "agents": {
        "__init__": '"""The project\'s own agents."""\nOWNER = "user"\n',
        "docs": 'agent = "the project\'s own docs agent, not an orchestrator Agent"\n',
        "lib": 'raise ImportError("the project\'s own agents.lib was imported")\n',
    },
    "workflows": {
        "__init__": '"""The project\'s own workflows."""\nOWNER = "user"\n',
        "parallel_docs": 'workflow = "the project\'s own parallel_docs"\n',
        "studio": 'raise ImportError("the project\'s own workflows.studio was imported")\n',
    },
    "state": {
        "__init__": '"""The project\'s own state."""\nOWNER = "user"\n',
        "schema": 'raise ImportError("the project\'s own state.schema was imported")\n',
        "db": 'raise ImportError("the project\'s own state.db was imported")\n',
    },
}


def make_shadowing_project(root: Path) -> Path:
    """``root`` with the packages of :data:`SHADOWING_PACKAGES`; returns ``root``."""
    for package, modules in SHADOWING_PACKAGES.items():
        (root / package).mkdir(parents=True, exist_ok=True)
        for module, source in modules.items():
            (root / package / f"{module}.py").write_text(source)
    return root
