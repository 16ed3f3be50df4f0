"""Fuzzing message decoding: nothing crashes, everything bad is dead-lettered, never run."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.bus import DecodeFailure, decode_request, encode
from orchestrator.messages import AgentRequest
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in

VALID = AgentRequest(source="fuzzer", target="fz", request_type="x", reply_to="r",
                     payload={"a": 1})
VALID_JSON = json.loads(VALID.model_dump_json())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
mutated = st.builds(
    lambda key, value, drop: json.dumps(
        {k: v for k, v in {**VALID_JSON, key: value}.items() if k != drop}).encode(),
    st.sampled_from(sorted(VALID_JSON)),
    json_values,
    st.sampled_from([*sorted(VALID_JSON), None]),
)
entries = st.dictionaries(
    st.sampled_from([b"m", b"s", b"x"]) | st.binary(max_size=4),
    st.binary(max_size=200) | mutated | st.just(VALID.model_dump_json().encode()),
    max_size=3,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(entries, st.sampled_from([None, b"secret"]))
def test_decoding_anything_returns_a_request_or_a_decode_failure(fields, secret) -> None:
    try:
        request = decode_request(fields, secret)
    except DecodeFailure as exc:
        assert str(exc)  # always a reason
        return
    assert isinstance(request, AgentRequest)
    assert b"m" in fields
    if secret:
        assert fields.get(b"s") is not None  # only a signed message gets through


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=64))
def test_a_signed_message_with_any_other_signature_is_refused(sig) -> None:
    good = encode(VALID, b"k")
    if sig == good[b"s"]:
        return
    try:
        decode_request({b"m": good[b"m"], b"s": sig}, b"k")
    except DecodeFailure:
        return
    raise AssertionError("a wrong signature was accepted")


def _garbage(rng: random.Random, n: int) -> list[dict[bytes, bytes]]:
    raw = VALID.model_dump_json().encode()
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:  # truncated JSON
            out.append({b"m": raw[: rng.randrange(1, len(raw) - 1)]})
        elif kind == 1:  # flipped bytes
            data = bytearray(raw)
            for _ in range(3):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            out.append({b"m": bytes(data)})
        elif kind == 2:  # random bytes
            out.append({b"m": rng.randbytes(rng.randrange(0, 300))})
        elif kind == 3:  # wrong field
            out.append({b"payload": raw})
        else:  # a required field with a wrong type
            doc = dict(VALID_JSON, request_id=str(i), attempt="many")
            out.append({b"m": json.dumps(doc).encode()})
    return out


async def test_a_worker_fed_garbage_dead_letters_it_and_keeps_serving(
    orchestrator_settings,
) -> None:
    executed: Counter[str] = Counter()

    async def handler(payload, ctx):
        executed[ctx.request.request_id] += 1
        return "ok"

    rng = random.Random(20261121)
    bad = [g for g in _garbage(rng, 100) if not _decodes(g)]
    assert len(bad) >= 95
    async with Runtime.open(orchestrator_settings, agents=[stand_in("fz", handler)]) as rt:
        for fields in bad:
            await rt.redis.xadd(rt.bus.keys.requests("fz", "normal"), fields)
        deadline = time.monotonic() + 20
        while len(await rt.bus.dead_letters("fz", 1000)) < len(bad):
            assert time.monotonic() < deadline, "not every bad message was dead-lettered"
            await asyncio.sleep(0.05)
        ok = await rt.bus.request(rt.bus.new_reply_stream_request(target="fz", request_type="x"),
                                  10)
        assert ok.status == "success"
        assert sum(executed.values()) == 1  # only the valid request ran
        pending = await rt.redis.xpending(rt.bus.keys.requests("fz", "normal"), "fz")
        assert pending["pending"] == 0  # every bad entry was acknowledged, none left to retry


def _decodes(fields: dict[bytes, bytes]) -> bool:
    try:
        decode_request(fields)
    except DecodeFailure:
        return False
    return True
