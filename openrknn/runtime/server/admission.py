"""Which connections the server keeps: two separate budgets, so that peers who never authenticate can never take the
place of real clients.

- pending: connections still in the handshake (at most max_pending). When a new one arrives and the budget is full,
  the one that has waited longest is dropped: every newcomer gets its chance to authenticate, and a flood of idle or
  trickling peers only ever displaces its own kind (each is also cut at --auth-timeout).
- clients: authenticated connections (at most max_clients); a client that authenticates when they are all taken is
  answered ServerBusy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict


class Admission:
    PROMOTED, EVICTED, FULL = "promoted", "evicted", "full"

    def __init__(self, max_pending: int, max_clients: int):
        self.max_pending, self.max_clients = max_pending, max_clients
        self._pending: "OrderedDict[int, Callable[[], None]]" = OrderedDict()  # number -> how to evict it
        self._clients = 0
        self._evicted = 0
        self._lock = threading.Lock()

    def enter(self, number: int, evict: Callable[[], None]) -> None:
        """A new connection starts its handshake; may evict the longest-waiting pending one (outside the lock)."""
        victim = None
        with self._lock:
            if len(self._pending) >= self.max_pending:
                _, victim = self._pending.popitem(last=False)
                self._evicted += 1
            self._pending[number] = evict
        if victim is not None:
            victim()

    def leave_pending(self, number: int) -> None:
        with self._lock:
            self._pending.pop(number, None)

    def promote(self, number: int) -> str:
        """After a successful handshake: PROMOTED (holds a client slot until leave_client), EVICTED (it was dropped
        for a newcomer meanwhile) or FULL (every client slot is taken)."""
        with self._lock:
            if self._pending.pop(number, None) is None:
                return self.EVICTED
            if self._clients >= self.max_clients:
                return self.FULL
            self._clients += 1
            return self.PROMOTED

    def leave_client(self) -> None:
        with self._lock:
            self._clients -= 1

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return {"pending_connections": len(self._pending), "authenticated_connections": self._clients,
                    "evicted_pending": self._evicted}
