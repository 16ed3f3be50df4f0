"""Libraries the built-in agents share, none of them an agent: dependency analysis
(``depgraph``), health judging (``health``), Python API docs (``apidocs``: a package's pages,
with griffe; ``docs_markdown``: module discovery, the index and writing the pages), child
processes and git (``proc``), atomic file writes (``files``), ruff (``ruff``) and test output
(``testrun``)."""
