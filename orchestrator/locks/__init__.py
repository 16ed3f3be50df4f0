"""Named resource locks in PostgreSQL, with fencing tokens.

* ``manager`` — :class:`ResourceLockManager`: acquire, renew, release, for one block of code
  or (``hold``) across a workflow's steps;
* ``waiting`` — waking waiters in arrival order (a release here, ``LISTEN``/``NOTIFY`` from
  other processes), never busy-polling;
* ``holding`` — the ``async with`` of one block's locks;
* ``fencing`` — fencing tokens: issued by the statements that take a lock, carried in the
  request, checked by the agent that changes the resource;
* ``held`` — locks a workflow holds across steps, from a graph node (``hold_lock``).
"""

from .manager import Lease, LockInfo, ResourceLockManager

__all__ = ["Lease", "LockInfo", "ResourceLockManager"]
