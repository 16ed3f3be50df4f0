"""The pipelines, one module per graph. Graphs reach agents only over the bus
(``orchestrator.call_agent``); they never import ``agents``."""
