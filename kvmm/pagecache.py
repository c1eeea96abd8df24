"""The page cache: the decoded pages one process keeps, within a byte budget.

It maps a pgno to a committed :class:`~kvmm.btree.Node`. Nodes name their children by
pgno instead of holding them, so a node the cache forgets is freed at once (unless an
open transaction or cursor stands on it): the memory the cache accounts for is the
memory it holds.

Invariants:
- An entry is a committed node, never changed. A caller uses it only when its txnid
  equals the txnid of the reference it follows, so a reused pgno never serves the
  contents of an earlier page (``Pages.load`` checks it).
- After every ``put`` and ``replace``, the nodes held weigh at most ``budget`` bytes (``node_bytes``).
- Leaves are forgotten oldest first; branches (about one page in a hundred, and on
  every descent) are passed over while they weigh less than half the budget.
- Every node held has its pgno in ``_order`` (after any earlier entry of that pgno).
- A node held is linked (``Node.ch``/``Node.up``) from at most one branch, with
  the txnid that branch names for it; a node not held, from none (``_forget``
  unlinks it): links keep nothing alive that the cache forgot.

Cost: ``lookup`` is one list index (``_slots``, by pgno: a descent follows a pgno to its
node with one memory access, where a dict's lookup took three, each a likely miss of the
CPU's caches at 10^6 records); ``put``, ``drop`` and each page of ``replace`` are
O(1) amortised and touch the slot and the node only: the age order is a queue of pgnos
(``_order``), where an entry whose node was dropped is skipped when it comes up (and
the queue is rebuilt without such entries when they outnumber the nodes held). A
one-put commit at 10^6 records drops and puts four nodes, each slot a likely miss: an
OrderedDict's hash table and links were three more (12-25 us per commit). A branch
passed over moves to the young end at most once per full turn of the cache. Memory:
the nodes held, plus 8 bytes per page up to the highest pgno cached (the slots) and
8-16 per entry of the queue.
"""

from __future__ import annotations

import threading
from collections import deque

from .btree import NO_LINKS, Node, set_slot
from .format import LEAF_ENTRY_COST


def node_bytes(node: Node) -> int:
    """About the memory a decoded node takes (CPython, 64-bit): its objects, the
    tuples holding its entries, and per entry a bytes object for the key and one for
    the value (or two u64 for a branch's child); plus the bytes themselves (``size``,
    what its entries take in the page)."""
    return 400 + 90 * len(node.keys) + node.size


def heaviest_node_bytes(page_size: int) -> int:
    """The most ``node_bytes`` of a node of pages of ``page_size`` bytes: a page full of
    the smallest entries (a one-byte key, an empty value)."""
    return 400 + 90 * (page_size // (LEAF_ENTRY_COST + 1)) + page_size


class PageCache:
    """Decoded committed pages by pgno, at most ``budget`` bytes of them."""

    __slots__ = ("_branch_bytes", "_count", "_lock", "_order", "_slots", "budget", "bytes",
                 "lookup")

    def __init__(self, budget: int):
        self.budget = budget
        self.bytes = 0  # what the nodes held weigh
        self._branch_bytes = 0  # ... of which branches
        self._count = 0  # nodes held
        # The nodes held by pgno, None elsewhere; grown, cleared and changed in place
        # only, so ``lookup`` stays bound to it.
        self._slots: list[Node | None] = []
        self._order: deque[int] = deque()  # pgnos in the order put, oldest first
        # The hot path's lookup, pgno -> node or None; raises IndexError past the slots
        # (no node of such a pgno is held), which its callers take as a miss.
        self.lookup = self._slots.__getitem__
        # Serialises changes, so the weights stay exact under threads; lookups take
        # no lock (a list index is atomic).
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def get(self, pgno: int) -> Node | None:
        """The node of ``pgno`` held, or None."""
        slots = self._slots
        return slots[pgno] if 0 <= pgno < len(slots) else None

    def nodes(self) -> list[Node]:
        """The nodes held, by pgno (a copy)."""
        with self._lock:
            return [node for node in self._slots if node is not None]

    def put(self, node: Node) -> None:
        """Hold ``node`` (replacing the entry of its pgno), then forget the oldest
        leaves until the cache weighs at most its budget. O(1) amortised."""
        self.replace((), (node,))

    def replace(self, freed, nodes) -> None:
        """Forget the nodes of pgnos ``freed``, hold ``nodes`` (each replacing the
        entry of its pgno), then forget the oldest leaves until the cache weighs at
        most its budget: a commit's change, under one taking of the lock. O(1)
        amortised per pgno and node."""
        with self._lock:
            slots = self._slots
            forget = self._forget
            end = len(slots)
            for pgno in freed:
                if pgno < end:
                    old = slots[pgno]
                    if old is not None:
                        forget(old)
            order = self._order
            append = order.append
            added = branches = 0
            for node in nodes:
                pgno = node.pgno
                if pgno < len(slots):
                    old = slots[pgno]
                    if old is not None:
                        forget(old)
                    slots[pgno] = node
                else:
                    set_slot(slots, pgno, node)
                append(pgno)
                weight = 400 + 90 * len(node.keys) + node.size  # node_bytes(node), inline
                added += weight
                if node.kids is not None:
                    branches += weight
            self.bytes += added
            self._branch_bytes += branches
            self._count += len(nodes)
            if self.bytes > self.budget:
                self._trim()
            elif len(order) > 2 * self._count + 1024:
                self._compact()

    def link(self, parent: Node, i: int, kid: Node) -> None:
        """Let branch ``parent`` reach its child ``i``, ``kid``, without a lookup
        (``parent.ch[i]``), when the cache holds both; a link ``kid`` had from another
        branch (an older version of ``parent``) goes. O(1); made once per child and
        version of a branch."""
        slots = self._slots
        with self._lock:
            try:
                if slots[parent.pgno] is not parent or slots[kid.pgno] is not kid:
                    return
            except IndexError:  # past the slots: not held
                return
            ch = parent.ch
            if ch is NO_LINKS:
                ch = parent.ch = [None] * len(parent.kids)
            up = kid.up
            if up is not None:
                up[0][up[1]] = None
            ch[i] = kid
            kid.up = (ch, i)

    def drop(self, pgno: int) -> None:
        """Forget the node of ``pgno``, if held. O(1)."""
        with self._lock:
            node = self.get(pgno)
            if node is not None:
                self._forget(node)

    def clear(self) -> None:
        with self._lock:
            for node in self._slots:
                if node is not None:
                    node.ch = NO_LINKS
                    node.up = None
            self._slots.clear()
            self._order.clear()
            self.bytes = self._branch_bytes = self._count = 0

    def _forget(self, node: Node) -> None:
        up = node.up
        if up is not None:  # no branch reaches it by a link any more
            up[0][up[1]] = None
            node.up = None
        self._slots[node.pgno] = None
        self._count -= 1
        weight = node_bytes(node)
        self.bytes -= weight
        if node.kids is not None:
            self._branch_bytes -= weight

    def _trim(self) -> None:
        """Forget nodes, oldest first, until the cache weighs at most its budget;
        branches are moved to the young end instead while they weigh under half of
        it. Terminates: a full turn finds only branches, and then they alone weigh
        more than the budget, so they go too. The caller holds ``_lock``."""
        order = self._order
        slots = self._slots
        spare = self.budget // 2
        passed = 0
        while self.bytes > self.budget:
            pgno = order.popleft()
            node = slots[pgno]
            if node is None:
                continue  # dropped since it was put
            if node.kids is not None and self._branch_bytes <= spare and passed < self._count:
                order.append(pgno)
                passed += 1
                continue
            self._forget(node)

    def _compact(self) -> None:
        """Rebuild the queue without the pgnos of nodes dropped since they were put
        (a pgno put again keeps its oldest entry). O(len(queue)), once per as many
        puts. The caller holds ``_lock``."""
        slots = self._slots
        self._order = deque(dict.fromkeys(p for p in self._order if slots[p] is not None))
