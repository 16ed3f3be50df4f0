"""Built-in agents. Each module defines one agent type; the runtime finds them through the
``orchestrator.agents`` entry points, never by importing this package directly."""
