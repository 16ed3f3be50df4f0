"""Libraries the built-in agents share, none of them an agent: dependency analysis
(``depgraph``), health judging (``health``), Markdown API docs (``docs_markdown``), child
processes and git (``proc``), atomic file writes (``files``), ruff (``ruff``) and test output
(``testrun``)."""
