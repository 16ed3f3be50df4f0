"""The service a team runs: ``orchestrator serve``.

A PostgreSQL run queue (start, resume, recover, cancel), runners that claim runs under a
fenced lease on any number of machines, the sweepers (dead runners, retention), the HTTP API
with tokens, roles and an audit trail, and webhooks. See README "Running as a service".
"""
