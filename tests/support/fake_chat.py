"""A LangChain chat model for tests (a test double; lives in tests/ only)."""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import FakeListChatModel


def latency_first() -> FakeListChatModel:
    """Always answers that latency is the issue to treat."""
    return FakeListChatModel(responses=["latency\nthe p95 is what users feel first"])


def nonsense() -> FakeListChatModel:
    """Answers with something that is not an issue kind."""
    return FakeListChatModel(responses=["reboot the universe"])


def fixes_discounts() -> FakeListChatModel:
    """Rewrites shop/discounts.py (of tests/support/fixture_plan.py) so that it passes QA."""
    return FakeListChatModel(responses=[
        "```python\nRATE = 0.1\n\n\ndef discount(amount: float) -> float:\n"
        "    return amount * RATE\n```"])
