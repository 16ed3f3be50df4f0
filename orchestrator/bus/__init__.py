"""The event bus: agent request/response over Redis Streams, plus the broadcast events stream.

One module per role; :class:`EventBus` puts them together over one Redis client:

* ``keys`` — where everything lives in Redis (the key of each stream and stored value);
* ``wire`` — a message's stream fields, signing and verifying them, decoding a request;
* ``scripts`` — the Lua scripts (one round trip for what would take several commands);
* ``batching`` — writes made by many tasks at once go out together;
* ``requester`` — sending requests, and the one reply reader for all in-flight requests;
* ``consumer`` — consumer groups, reading requests, reclaiming those of dead consumers;
* ``claims`` — the response store and execution claims (effectively-once), answering;
* ``deadletters`` — dead letters: listing, replaying, purging;
* ``events`` — the capped broadcast events stream.

Fencing tokens are not the bus's: see :mod:`orchestrator.locks.fencing`.
"""

from .consumer import BlockingReader, Delivery
from .eventbus import EventBus
from .keys import BusKeys
from .wire import DecodeFailure, decode_request, encode

__all__ = ["EventBus", "BlockingReader", "Delivery", "BusKeys", "DecodeFailure", "decode_request", "encode"]
