"""Where the bus keeps things in Redis: the key of each stream and stored value.

Keys (all under the settings' namespace ``ns``):

* ``ns:req:<agent_type>:<priority>`` — request streams; the consumer group is named after the
  agent type, so every instance of a type shares the load.
* ``ns:reply:<process_id>`` — one reply stream per requesting process, read by one reader
  task for all in-flight requests (no blocked connection per request).
* ``ns:resp:<request_id>`` — the stored *success*, kept for the retention period, so that a
  redelivered or re-sent request is answered from the store instead of executed again, by
  every later attempt of its workflow too.
* ``ns:err:<attempt>:<request_id>`` — a stored response of any other status, kept as long, but
  answering only deliveries of that same attempt (``AgentRequest.attempt``): a later attempt
  (a resume after the cause was fixed) runs the request again.
* ``ns:inflight:<request_id>`` — a short-lived claim while one consumer executes a request.
* ``ns:dlq:<agent_type>`` — dead letters, with their reason.
* ``ns:events`` — the capped broadcast events stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..messages import AgentResponse, Priority

__all__ = ["BusKeys", "REPLY_MAXLEN", "REPLY_TTL_S"]

#: Cap and time to live of each reply stream (refreshed by every reply written to it).
REPLY_MAXLEN = 100_000
REPLY_TTL_S = 3600


@dataclass(frozen=True)
class BusKeys:
    namespace: str

    def requests(self, agent_type: str, priority: Priority) -> str:
        return f"{self.namespace}:req:{agent_type}:{priority}"

    def reply(self, process_id: str) -> str:
        return f"{self.namespace}:reply:{process_id}"

    def response(self, request_id: str) -> str:
        """Where a request's *success* is stored (it answers every attempt)."""
        return f"{self.namespace}:resp:{request_id}"

    def error_response(self, request_id: str, attempt: int) -> str:
        """Where a request's other answer (error, timeout, rejected) is stored: it answers
        deliveries of that attempt only."""
        return f"{self.namespace}:err:{attempt}:{request_id}"

    def stored_for(self, response: AgentResponse, attempt: int) -> str:
        """The key ``response`` to a request of ``attempt`` is stored under."""
        if response.status == "success":
            return self.response(response.request_id)
        return self.error_response(response.request_id, attempt)

    def inflight(self, request_id: str) -> str:
        return f"{self.namespace}:inflight:{request_id}"

    def dead_letters(self, agent_type: str) -> str:
        return f"{self.namespace}:dlq:{agent_type}"


    @property
    def events(self) -> str:
        return f"{self.namespace}:events"
