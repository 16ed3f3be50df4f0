"""What both sides of the bus agree on, one module per agent type.

Each module names an agent type's operations (:class:`Operation`: the agent type, the request
type, the pydantic model of the payload and of the result) and the locks it guards
(``repo:<path>``, ``docs:<dir>``...). Graphs and agents import the same module: a graph sends
``await OP.call(Payload(...), locks=[...])`` and reads a typed result; the agent registers
``@agent.handler(OP)``, so its handler gets the payload validated by the same model and its
answer is checked against the result model before it leaves. A field or lock name changed here
changes on both sides of the bus.
"""

from .base import Contract, Operation

__all__ = ["Contract", "Operation"]
