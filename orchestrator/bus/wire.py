"""The wire format of bus messages: a stream entry's fields, signing and verifying them, and
decoding a request."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import ValidationError

from ..errors import ErrorCode, OrchestratorError
from ..messages import AgentRequest, AgentResponse, Event

__all__ = ["CLAIM", "DecodeFailure", "FIELD", "SIG", "decode_request", "encode", "to_text",
           "verified"]

FIELD = b"m"
SIG = b"s"
#: set (to ``1``) on a request entry sent with its execution claim queued (see SEND_LUA)
CLAIM = b"c"


def to_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DecodeFailure(OrchestratorError):
    """A stream entry that is not a valid message (unsigned, garbled, or not a request)."""

    code = ErrorCode.UNDECODABLE_MESSAGE


def _signature(secret: bytes, raw: bytes) -> bytes:
    return hmac.new(secret, raw, hashlib.sha256).hexdigest().encode()


def encode(model: AgentRequest | AgentResponse | Event, secret: bytes | None = None) -> dict[bytes, bytes]:
    """The stream fields of ``model``: its JSON, plus an HMAC-SHA256 of it when signing."""
    raw = model.model_dump_json().encode()
    fields = {FIELD: raw}
    if secret:
        fields[SIG] = _signature(secret, raw)
    return fields


def verified(fields: dict[bytes, bytes], secret: bytes | None) -> bytes:
    raw = fields.get(FIELD)
    if raw is None:
        raise DecodeFailure(f"no {FIELD.decode()!r} field in the entry")
    if secret:
        sig = fields.get(SIG)
        if sig is None or not hmac.compare_digest(sig, _signature(secret, raw)):
            raise DecodeFailure("missing or invalid signature")
    return raw


def decode_request(fields: dict[bytes, bytes], secret: bytes | None = None) -> AgentRequest:
    """Parse and validate a request entry (checking its signature when ``secret`` is set).

    Raises:
        DecodeFailure: not a valid (or not a validly signed) request; the message says why.
    """
    raw = verified(fields, secret)
    try:
        return AgentRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DecodeFailure(f"invalid request: {where + ': ' if where else ''}{first['msg']}") from None
