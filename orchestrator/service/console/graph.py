"""A workflow's graph drawn on the server as SVG, each node coloured by its live state.

The nodes and edges are LangGraph's own (``compiled.get_graph()``); the layout is a plain
layered one: a node's layer is its longest distance from ``__start__`` along forward edges
(edges that close a loop are drawn as arcs on the side), nodes of a layer side by side. No
script draws it, so the page is complete as served and a fragment swap redraws it.

A node's state comes from the checkpoints: the nodes a checkpoint was about to run, for every
checkpoint but the latest, have run (``done``); the latest checkpoint's next nodes are
``running``, ``waiting`` (an interrupt) or ``failed`` as the workflow's status says; the
rest are ``pending``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Drawing", "DrawnNode", "DrawnEdge", "draw", "node_states"]

_W, _H, _GAP_X, _GAP_Y, _PAD = 150, 34, 24, 46, 16
START, END = "__start__", "__end__"


@dataclass(frozen=True)
class DrawnNode:
    name: str
    label: str
    state: str
    x: int
    y: int


@dataclass(frozen=True)
class DrawnEdge:
    path: str
    conditional: bool
    back: bool


@dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    nodes: list[DrawnNode]
    edges: list[DrawnEdge]
    node_w: int = _W
    node_h: int = _H


def node_states(nodes: Iterable[str], history_next: Sequence[Sequence[str]], status: str,
                failed_nodes: Iterable[str] = ()) -> dict[str, str]:
    """Each node's state (``done|running|pending|failed|waiting``).

    Args:
        history_next: each checkpoint's next nodes, oldest first.
        status: the workflow's status.
        failed_nodes: nodes a ``step.failed`` event named.
    """
    names = list(nodes)
    states = dict.fromkeys(names, "pending")
    ran = {n for step in history_next[:-1] for n in step}
    for name in ran:
        if name in states:
            states[name] = "done"
    current = list(history_next[-1]) if history_next else []
    if history_next:
        states[START] = "done"
    live = {"running": "running", "interrupted": "waiting", "failed": "failed"}.get(status)
    for name in current:
        if name in states and live:
            states[name] = live
    if status == "failed":
        for name in failed_nodes:
            if name in states:
                states[name] = "failed"
    if status == "completed" and END in states:
        states[END] = "done"
    return states


def draw(graph: Any, states: dict[str, str]) -> Drawing:
    """The SVG geometry of a LangGraph drawable graph (``get_graph()``)."""
    names = list(graph.nodes)
    edges = [(e.source, e.target, bool(e.conditional)) for e in graph.edges]
    back = _back_edges(names, edges)
    layer = _layers(names, [(s, t) for s, t, _ in edges if (s, t) not in back])
    rows: dict[int, list[str]] = {}
    for name in names:
        rows.setdefault(layer[name], []).append(name)
    widest = max((len(r) for r in rows.values()), default=1)
    width = _PAD * 2 + widest * _W + (widest - 1) * _GAP_X + 60  # room for loop arcs
    place: dict[str, tuple[int, int]] = {}
    for depth, row in sorted(rows.items()):
        span = len(row) * _W + (len(row) - 1) * _GAP_X
        left = _PAD + (widest * _W + (widest - 1) * _GAP_X - span) // 2
        for i, name in enumerate(row):
            place[name] = (left + i * (_W + _GAP_X), _PAD + depth * (_H + _GAP_Y))
    height = _PAD * 2 + (max(rows, default=0) + 1) * (_H + _GAP_Y) - _GAP_Y
    drawn_edges = []
    for source, target, conditional in edges:
        (sx, sy), (tx, ty) = place[source], place[target]
        if (source, target) in back:
            # an arc on the right from the source's side up to the target's side
            x1, y1, x2, y2 = sx + _W, sy + _H // 2, tx + _W, ty + _H // 2
            bend = max(x1, x2) + 40
            path = f"M{x1},{y1} C{bend},{y1} {bend},{y2} {x2},{y2}"
        else:
            x1, y1, x2, y2 = sx + _W // 2, sy + _H, tx + _W // 2, ty
            mid = (y1 + y2) // 2
            path = f"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}"
        drawn_edges.append(DrawnEdge(path, conditional, (source, target) in back))
    nodes = [DrawnNode(n, _label(graph.nodes[n], n), states.get(n, "pending"), *place[n])
             for n in names]
    return Drawing(width, height, nodes, drawn_edges)


def _label(node: Any, name: str) -> str:
    return {START: "start", END: "end"}.get(name, str(getattr(node, "name", name) or name))


def _back_edges(names: list[str], edges: list[tuple[str, str, bool]]) -> set[tuple[str, str]]:
    """The edges that close a cycle in a depth-first walk from ``__start__``."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for s, t, _ in edges:
        out.setdefault(s, []).append(t)
    back: set[tuple[str, str]] = set()
    seen: set[str] = set()
    on_path: set[str] = set()
    roots = [START] + [n for n in names if n != START]
    for root in roots:
        if root in seen:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        seen.add(root)
        on_path.add(root)
        while stack:
            node, i = stack[-1]
            if i < len(out.get(node, [])):
                stack[-1] = (node, i + 1)
                nxt = out[node][i]
                if nxt in on_path:
                    back.add((node, nxt))
                elif nxt not in seen:
                    seen.add(nxt)
                    on_path.add(nxt)
                    stack.append((nxt, 0))
            else:
                on_path.discard(node)
                stack.pop()
    return back


def _layers(names: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest distance from a source along an acyclic set of edges (Kahn's order)."""
    incoming = {n: 0 for n in names}
    out: dict[str, list[str]] = {n: [] for n in names}
    for s, t in edges:
        out[s].append(t)
        incoming[t] += 1
    layer = dict.fromkeys(names, 0)
    ready = [n for n in names if incoming[n] == 0]
    while ready:
        node = ready.pop(0)
        for nxt in out[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
            incoming[nxt] -= 1
            if incoming[nxt] == 0:
                ready.append(nxt)
    if END in layer:  # the end goes last even when a short path reaches it
        layer[END] = max(layer.values(), default=0) if len(names) > 1 else 0
        if any(layer[n] == layer[END] for n in names if n != END):
            layer[END] += 1
    return layer
