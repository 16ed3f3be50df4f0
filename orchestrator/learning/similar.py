"""Similarity of failure texts without embeddings: trigram sets compared by Jaccard.

A text is normalised first (:func:`failure_key`: lower case, the repository's path and
numbers that stand alone dropped, so "line 12" and "line 40" or "in 0.23s" and "in 1.5s" of
one failure agree), then cut
into words (runs of letters and digits) and each word, padded with two spaces in front
and one behind, into its three-character pieces: the trigram set of PostgreSQL's ``pg_trgm``.
The similarity of two texts is the size of the intersection of their sets over the size of
the union (Jaccard), which is what ``pg_trgm``'s ``similarity()`` computes, so both backends
give the same figure (``tests/test_learning_similar.py`` checks it where the extension can be
installed). :func:`rank` does it in Python over candidates read from the database (a few
thousand past failures of one repository is milliseconds); :func:`trgm_available` says whether
the database can do it instead (``orchestrator.learning.fixes`` uses it when it can). No
vector extension and no model is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Scored", "failure_key", "jaccard", "rank", "similarity", "trigrams",
           "trgm_available"]

T = TypeVar("T")

#: words as pg_trgm cuts them: runs of letters and digits (``_`` separates, as there)
_WORD = re.compile(r"[^\W_]+")
#: a number standing alone (not part of a word such as ``E501``), with a unit of time
#: (``0.23s``: a test run's duration), or an address (``0x7f3a...``)
_NUMBER = re.compile(r"(?<![^\W_])(?:0x[0-9a-f]+|[0-9]+(?:\.[0-9]+)?(?:ms|s)?)(?![^\W_])")
_KEY_CHARS = 8_000


def failure_key(text: str, *, repo: str | None = None) -> str:
    """``text`` normalised for comparison: lower case, the repository's path removed, numbers
    standing alone dropped (line numbers, counts, timings such as ``0.23s``, addresses),
    whitespace collapsed, at most 8,000
    characters. ``E501`` or ``py311`` keep their digits: they are part of a word."""
    if repo:
        text = text.replace(repo.rstrip("/") + "/", "").replace(repo, "")
    lowered = _NUMBER.sub(" ", text.lower())
    return " ".join(lowered.split())[:_KEY_CHARS]


def trigrams(text: str) -> frozenset[str]:
    """The trigram set of ``text`` (already a :func:`failure_key`, or any lower-case text):
    each word padded ``"  word "`` and cut into overlapping three-character pieces."""
    found: set[str] = set()
    for word in _WORD.findall(text.lower()):
        padded = f"  {word} "
        found.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return frozenset(found)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|; 0.0 when both are empty."""
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def similarity(a: str, b: str) -> float:
    """The trigram similarity of two texts (each normalised by :func:`failure_key`)."""
    return jaccard(trigrams(failure_key(a)), trigrams(failure_key(b)))


@dataclass(frozen=True)
class Scored(Generic[T]):
    """A candidate and its similarity to the query (0..1)."""

    item: T
    score: float


def rank(query: str, candidates: Iterable[T], *, text: Callable[[T], str], limit: int = 3,
         min_score: float = 0.25) -> list[Scored[T]]:
    """The ``limit`` candidates most similar to ``query`` with at least ``min_score``, most
    similar first (ties: the earlier candidate first, so pass the newest first).

    Args:
        query: a normalised text (:func:`failure_key`).
        candidates: anything; ``text(candidate)`` is its normalised text.
        min_score: below it a candidate is not similar, whatever else there is: a failure
            sharing only the words every failure has (``failed``, ``assert``) stays out.
    """
    wanted = trigrams(query)
    scored = [Scored(c, jaccard(wanted, trigrams(text(c)))) for c in candidates]
    best = sorted((s for s in scored if s.score >= min_score),
                  key=lambda s: -s.score)  # sorted() is stable: ties keep their order
    return best[:limit]


async def trgm_available(db: Any) -> bool:
    """Whether the database has ``pg_trgm`` installed (it is never installed by us: an
    operator may, and then similarity is computed where the rows are)."""
    row = await db.fetchone("SELECT 1 AS ok FROM pg_extension WHERE extname = 'pg_trgm'")
    return row is not None
