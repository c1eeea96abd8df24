"""The page cache: the decoded pages one process keeps, within a byte budget.

It maps a pgno to a committed :class:`~kvmm.btree.Node`. Nodes name their children by
pgno instead of holding them, so a node the cache forgets is freed at once (unless an
open transaction or cursor stands on it): the memory the cache accounts for is the
memory it holds.

Invariants:
- An entry is a committed node, never changed. A caller uses it only when its txnid
  equals the txnid of the reference it follows, so a reused pgno never serves the
  contents of an earlier page (``Pages.load`` checks it).
- After every ``put``, the nodes held weigh at most ``budget`` bytes (``node_bytes``).
- Leaves are forgotten oldest first; branches (about one page in a hundred, and on
  every descent) are passed over while they weigh less than half the budget.

Cost: ``lookup`` is one list index (``_slots``, by pgno: a descent follows a pgno to its
node with one memory access, where a dict's lookup took three, each a likely miss of the
CPU's caches at 10^6 records); ``put`` and ``drop`` are O(1) amortised: forgetting a
node is one ``popitem``, and a branch passed over moves to the young end at most once
per full turn of the cache. Memory: the nodes held, plus 8 bytes per page up to the
highest pgno cached (the slots).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .btree import Node, set_slot


def node_bytes(node: Node) -> int:
    """About the memory a decoded node takes (CPython, 64-bit): its objects, the
    tuples holding its entries, and per entry a bytes object for the key and one for
    the value (or two u64 for a branch's child); plus the bytes themselves (``size``,
    what its entries take in the page)."""
    return 400 + 90 * len(node.keys) + node.size


class PageCache:
    """Decoded committed pages by pgno, at most ``budget`` bytes of them."""

    __slots__ = ("_branch_bytes", "_lock", "_nodes", "_slots", "budget", "bytes", "lookup")

    def __init__(self, budget: int):
        self.budget = budget
        self.bytes = 0  # what the nodes held weigh
        self._branch_bytes = 0  # ... of which branches
        self._nodes: OrderedDict[int, Node] = OrderedDict()  # held, oldest first
        # The same nodes by pgno, None elsewhere; grown, cleared and changed in place
        # only, so ``lookup`` stays bound to it.
        self._slots: list[Node | None] = []
        # The hot path's lookup, pgno -> node or None; raises IndexError past the slots
        # (no node of such a pgno is held), which its callers take as a miss.
        self.lookup = self._slots.__getitem__
        # Serialises changes, so the weights stay exact under threads; lookups take
        # no lock (a list index is atomic).
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, pgno: int) -> Node | None:
        """The node of ``pgno`` held, or None."""
        slots = self._slots
        return slots[pgno] if 0 <= pgno < len(slots) else None

    def nodes(self) -> list[Node]:
        """The nodes held, oldest first (a copy)."""
        with self._lock:
            return list(self._nodes.values())

    def put(self, node: Node) -> None:
        """Hold ``node`` (replacing the entry of its pgno), then forget the oldest
        leaves until the cache weighs at most its budget. O(1) amortised."""
        weight = 400 + 90 * len(node.keys) + node.size  # node_bytes(node), inline
        with self._lock:
            nodes = self._nodes
            old = nodes.pop(node.pgno, None)
            if old is not None:
                self._forget(old)
            nodes[node.pgno] = node
            set_slot(self._slots, node.pgno, node)
            self.bytes += weight
            if node.kids is not None:
                self._branch_bytes += weight
            if self.bytes > self.budget:
                self._trim()

    def drop(self, pgno: int) -> None:
        """Forget the node of ``pgno``, if held. O(1)."""
        with self._lock:
            old = self._nodes.pop(pgno, None)
            if old is not None:
                self._forget(old)

    def drop_many(self, pgnos) -> None:
        """Forget the nodes of ``pgnos`` held. O(len(pgnos)), in C but for the nodes
        held (a large commit frees many pages, few of them cached)."""
        with self._lock:
            nodes = self._nodes
            for pgno in nodes.keys() & pgnos:
                self._forget(nodes.pop(pgno))

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()
            self._slots.clear()
            self.bytes = self._branch_bytes = 0

    def _forget(self, node: Node) -> None:
        self._slots[node.pgno] = None
        weight = node_bytes(node)
        self.bytes -= weight
        if node.kids is not None:
            self._branch_bytes -= weight

    def _trim(self) -> None:
        """Forget nodes, oldest first, until the cache weighs at most its budget;
        branches are moved to the young end instead while they weigh under half of
        it. Terminates: a full turn finds only branches, and then they alone weigh
        more than the budget, so they go too. The caller holds ``_lock``."""
        nodes = self._nodes
        spare = self.budget // 2
        passed = 0
        while self.bytes > self.budget:
            pgno, node = nodes.popitem(last=False)
            if node.kids is not None and self._branch_bytes <= spare and passed < len(nodes):
                nodes[pgno] = node
                passed += 1
                continue
            self._forget(node)
