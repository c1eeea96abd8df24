"""The copy-on-write B+tree: pages decoded into nodes, and the edits on them.

A tree is reached from a database record (root pgno and the root's writer txnid). Its
pages decode into :class:`Node` objects; a committed node is shared, cached and never
changed. A write transaction edits a tree by *touching* the path from the root down to
a leaf: each committed node on it is copied to a dirty node with a fresh pgno, and its
old pgno is freed. Dirty nodes are edited in place and serialised once, at commit.

Invariants (``kvmm.check`` verifies each of them on disk):
- Keys inside a node are strictly increasing.
- In a branch, child ``i`` holds keys ``K(i) <= k < K(i+1)``; ``K(0)`` is stored empty
  and bounded by the branch's own lower bound.
- All leaves are at the same depth; a non-root leaf holds at least one entry and
  every branch at least two children (so an emptied leaf always has a sibling to
  merge with; a tail split therefore leaves a branch's last two children together).
- No node's size exceeds the page capacity; a leaf entry never exceeds half of it
  (larger values go to overflow pages), so an overfull node always splits into two
  that fit.
- A branch stores, beside each child's pgno, the txnid that wrote the child: a read
  checks it against the child's header, so a lost or misplaced write is caught.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from .errors import CorruptedError
from .format import BRANCH_ENTRY_COST, LEAF_ENTRY_COST, MAX_PAGE_SIZE, u64_array

# A dirty page changed in place in at most this many entries is written by patching
# its source page; past it, encoding it whole is cheaper (a value copy costs more than
# a child pointer). Past it, ``Node.patched`` is dropped.
PATCH_LEAF_MAX = 4
PATCH_BRANCH_MAX = 32

__all__ = [
    "DbState",
    "Node",
    "append_leaf",
    "child",
    "delete_in_place",
    "descend",
    "dirty_leaf",
    "first_path",
    "fresh_copies",
    "insert",
    "last_path",
    "put_in_place",
    "remove_at",
    "remove_range",
    "replace_at",
]


# The links (``Node.ch``) of a node not linked to any child yet: None for every child
# of the largest branch, so a descent indexes ``ch`` without first asking whether
# there is one. Shared and never written (``PageCache.link`` makes a list instead).
NO_LINKS = (None,) * (MAX_PAGE_SIZE // BRANCH_ENTRY_COST + 1)


class Node:
    """One page, decoded: a leaf (keys, stored values, flags) or a branch (keys, kids).

    ``flags`` is None when no entry of a leaf has flags, else one flag word per entry.
    A node holds no reference to another node but its links (``ch``, ``up``): a
    branch names its children by pgno and txnid, and a descent looks each one up
    (the page cache, or a write transaction's dirty pages), then links the two: a
    committed branch while the cache holds both (a link lasts only while the cache
    holds the child, so a node the cache forgets is freed at once unless a
    transaction or cursor still stands on it), a dirty branch to its dirty children
    until its commit.
    ``size`` is the node's encoded size without the page header; it is kept up to date
    on dirty nodes only. A branch holds ``kids`` and ``ktxn`` as u64 arrays. A
    committed node holds its keys, values and flags as tuples (never changed; tuples
    of bytes are left alone by the cyclic GC); a dirty copy holds lists, but for a
    dirty branch's keys: they stay its source's tuple until a child is added or
    removed (see ``_own_keys``).
    """

    __slots__ = ("__weakref__", "ch", "flags", "keys", "kids", "ktxn", "own", "patched",
                 "pgno", "size", "src", "txnid", "up", "vals")

    def __init__(self, pgno, txnid, keys, vals=None, flags=None, kids=None, ktxn=None):
        self.pgno = pgno
        self.txnid = txnid
        self.keys = keys
        self.vals = vals
        self.flags = flags
        self.kids = kids
        self.ktxn = ktxn
        self.size = -1
        # A dirty copy remembers its committed source page and which entries changed
        # in place (a child pointer, a value of the same length), so the commit can
        # patch the source's bytes instead of encoding the page anew. ``patched`` is
        # None once anything else changed.
        self.src = 0
        self.patched = None
        # A leaf a write transaction decoded for itself, which nothing else holds (not
        # the cache): made dirty, it is taken over rather than copied (see ``dirtied``).
        self.own = False
        # Links, made by descents, so a descent needs no lookup: a committed branch's
        # ``ch[i]`` is its child ``i`` while the page cache holds both (PageCache.link),
        # and the child's ``up`` is (that list, i), cleared when the cache forgets it.
        # A dirty branch's ``ch[i]`` is its dirty child ``i`` (``link_dirty``): every
        # edit that moves or replaces its children clears or fixes them, and ``freeze``
        # drops them. NO_LINKS until then.
        self.ch: Any = NO_LINKS  # a list, or the tuple NO_LINKS
        self.up: tuple | None = None

    @property
    def is_leaf(self) -> bool:
        return self.kids is None

    def measure(self) -> int:
        """Compute ``size`` from the entries. O(n)."""
        keys = self.keys
        if self.kids is None:
            self.size = LEAF_ENTRY_COST * len(keys) + sum(map(len, keys)) + sum(
                map(len, self.vals)
            )
        else:
            self.size = BRANCH_ENTRY_COST * len(keys) + sum(map(len, keys))
        return self.size

    def copy(self, pgno: int, txnid: int) -> Node:
        """A dirty copy of this node under a new pgno. O(n)."""
        if self.kids is None:
            flags = None if self.flags is None else list(self.flags)
            n = Node(pgno, txnid, list(self.keys), list(self.vals), flags)
        else:
            # The keys are shared and the arrays copied whole: no key or child number
            # is touched (such objects are the least likely to be in the CPU's
            # caches).
            n = Node(pgno, txnid, self.keys, kids=self.kids[:], ktxn=self.ktxn[:])
        # A committed node never changes, so its size is measured once and kept.
        n.size = self.size if self.size >= 0 else self.measure()
        n.src = self.pgno
        n.patched = set()
        return n

    def dirtied(self, pgno: int, txnid: int) -> Node:
        """This node made dirty under a new pgno: itself when it is its transaction's
        own (no copy: its entries were just decoded, and are in the CPU's caches),
        else a copy. O(n)."""
        if not self.own:
            return self.copy(pgno, txnid)
        self.own = False
        self.src = self.pgno
        self.pgno = pgno
        self.txnid = txnid
        self.keys = list(self.keys)
        self.vals = list(self.vals)
        if self.flags is not None:
            self.flags = list(self.flags)
        self.patched = set()
        return self

    def freeze(self) -> None:
        """This dirty node was committed and is never changed again: hold tuples, as
        decoded nodes do, which the cyclic GC stops tracking (a large write otherwise
        leaves every leaf's lists for each collection to walk), and which a dirty copy
        of a branch may share (``copy``)."""
        if self.kids is None:
            self.keys = tuple(self.keys)
            self.vals = tuple(self.vals)
            if self.flags is not None:
                self.flags = tuple(self.flags)
        else:
            self.ch = NO_LINKS  # its links to dirty children are the writer's
            if type(self.keys) is list:  # else still its source's keys (see copy)
                self.keys = fresh_copies(self.keys)
        self.patched = None

    def entry_size(self, i: int) -> int:
        if self.kids is None:
            return LEAF_ENTRY_COST + len(self.keys[i]) + len(self.vals[i])
        return BRANCH_ENTRY_COST + (len(self.keys[i]) if i else 0)

    def __repr__(self) -> str:
        kind = "leaf" if self.kids is None else "branch"
        return f"<Node {kind} pgno={self.pgno} txnid={self.txnid} n={len(self.keys)}>"


def set_slot(slots: list, pgno: int, node) -> None:
    """``slots[pgno] = node``, growing ``slots`` in place (by half its length at least,
    so a growing file costs O(1) amortised per page)."""
    if pgno >= len(slots):
        slots.extend([None] * max(pgno + 1 - len(slots), len(slots)))
    slots[pgno] = node


def link_dirty(parent: Node, i: int, kid: Node) -> None:
    """Let dirty branch ``parent`` reach its dirty child ``i``, ``kid``, by link."""
    ch = parent.ch
    if ch is NO_LINKS:
        ch = parent.ch = [None] * len(parent.kids)
    ch[i] = kid


def stale_links(node: Node, dirty, txnid: int) -> bool:
    """Whether dirty branch ``node`` has a link that is not its dirty child of that
    position (in ``dirty``, written by ``txnid``): the invariant of ``link_dirty``,
    which the strict mode checks at every commit."""
    ch = node.ch
    if node.kids is None or ch is NO_LINKS:
        return False
    if len(ch) != len(node.kids):
        return True
    return any(kid is not None and (kid is not dirty.get(node.kids[i])
                                    or node.ktxn[i] != txnid)
               for i, kid in enumerate(ch))


class DirtyPages(dict):
    """A write transaction's dirty nodes by pgno (a dict), each also in ``slots``, a
    list indexed by pgno that the environment's write transactions take turns using:
    ``lookup(pgno)`` finds a node with one list index where a dict's lookup takes
    three memory accesses, each a likely miss of the CPU's caches in a large
    transaction (it raises IndexError past the slots).

    Invariant: the slots hold exactly this map's nodes while it is in use and only
    None once it is ``release``d, so the next write transaction starts on empty
    slots without making a list as long as the file. A nested transaction shares its
    parent's map (kvmm.nested)."""

    __slots__ = ("lookup", "slots")

    def __init__(self, slots: list):
        super().__init__()
        self.slots = slots
        self.lookup = slots.__getitem__

    def __setitem__(self, pgno: int, node: Node) -> None:
        dict.__setitem__(self, pgno, node)
        slots = self.slots
        if pgno < len(slots):
            slots[pgno] = node
        else:
            set_slot(slots, pgno, node)

    def __delitem__(self, pgno: int) -> None:
        dict.__delitem__(self, pgno)
        self.slots[pgno] = None

    def clear(self) -> None:
        self.release()
        dict.clear(self)

    def release(self) -> None:
        """Empty the slots this map filled (the map itself is left as it is)."""
        slots = self.slots
        for pgno in self:
            slots[pgno] = None


class DbState:
    """A database record as a transaction sees and edits it."""

    __slots__ = (
        "branch_pages",
        "changed",
        "depth",
        "entries",
        "flags",
        "leaf_pages",
        "overflow_pages",
        "root",
        "root_txnid",
    )

    def __init__(self, record: tuple):
        (self.root, self.root_txnid, self.depth, self.flags, self.entries,
         self.branch_pages, self.leaf_pages, self.overflow_pages) = record
        self.changed = False

    def record(self) -> tuple:
        return (self.root, self.root_txnid, self.depth, self.flags, self.entries,
                self.branch_pages, self.leaf_pages, self.overflow_pages)


# --- reading ------------------------------------------------------------------------


def descend(load, db: DbState, key: bytes) -> list | None:
    """The path [[node, index], ...] from the root to the leaf where ``key`` is or
    would go; the leaf's index is ``bisect_left``. None for an empty tree. O(log n)."""
    if not db.root:
        return None
    node = load(db.root, db.root_txnid)
    path: list = []
    append = path.append
    # A hit in the page cache, or in a write transaction's dirty pages (txnid ``mine``),
    # spares the call to load.
    cached, dirty, mine = load.cached, load.dirty, load.mine
    left = db.depth  # levels from ``node`` down, the leaf's included
    while node.kids is not None:
        left -= 1
        if left <= 0:
            _bad_depth(db)
        i = bisect_right(node.keys, key) - 1
        append([node, i])
        kid = node.ch[i]  # the cache's links (see Node)
        if kid is not None:
            node = kid
            continue
        pgno = node.kids[i]
        txnid = node.ktxn[i]
        if txnid == mine:  # the dirty pages hold only nodes of this txnid
            try:
                kid = dirty(pgno)
            except IndexError:  # past the slots: not dirty (load says what is wrong)
                kid = None
            if kid is None:
                kid = load(pgno, txnid)
            link_dirty(node, i, kid)  # ``node`` names a dirty child: it is dirty too
            node = kid
            continue
        try:
            kid = cached(pgno)
        except IndexError:  # past the slots: not held
            kid = None
        if kid is not None and kid.txnid == txnid:
            if mine < 0:  # a reader's: a writer's branches change as it commits
                load.link(node, i, kid)
            node = kid
        else:
            node = load(pgno, txnid)
    if left != 1:
        _bad_depth(db)
    append([node, bisect_left(node.keys, key)])
    return path


def child(load, node: Node, i: int) -> Node:
    """Child ``i`` of branch ``node``."""
    return load(node.kids[i], node.ktxn[i])


def _bad_depth(db: DbState):
    """A tree whose pages do not stack up to its record's depth: a branch pointing
    back up (a loop) or a leaf at the wrong level. Checked on every descent, so a
    damaged file never hangs a read."""
    raise CorruptedError(f"tree of root page {db.root}: pages do not match depth {db.depth}")


# A key above every tree key: plain keys, free-list keys and dupsort pairs (at most
# an escaped 511-byte key and a 511-byte value) are all shorter.
_ABOVE_ALL = b"\xff" * 2048


def first_path(load, db: DbState, last: bool = False) -> list | None:
    """The path to the first (or last) entry of the tree; None when empty."""
    if not last:
        return descend(load, db, b"")
    path = descend(load, db, _ABOVE_ALL)
    if path is not None:
        path[-1][1] -= 1  # past the last entry: step back onto it
    return path


def last_path(load, db: DbState) -> list | None:
    return first_path(load, db, last=True)


def fresh_copies(keys) -> tuple:
    """Copies of ``keys`` made one after another, so they lie together in memory (as
    a decoded page's do), as a tuple. A committed branch keeps such copies: the
    separators it was given are other nodes' keys, or a caller's objects, each
    somewhere else, and every descent compares a handful of them (at 10^6 records,
    readrandom 2.3-2.4 -> 1.9-2.0 us per get in the process that wrote the tree)."""
    blob = b"".join(keys)
    out = []
    at = 0
    for key in keys:
        end = at + len(key)
        out.append(blob[at:end])
        at = end
    return tuple(out)


# --- writing ------------------------------------------------------------------------


def touch_path(txn, db: DbState, path: list) -> None:
    """Make every node on ``path`` dirty, re-pointing parents (and the root) at the
    copies. Nodes already dirty in this transaction are kept as they are."""
    txnid = txn.txnid
    parent = None
    for step in path:
        node = step[0]
        if node.txnid != txnid:
            node = txn._touch(node, db)
            step[0] = node
            if parent is None:
                db.root = node.pgno
                db.root_txnid = txnid
            else:
                _repoint(parent[0], parent[1], node)
        parent = step


def dirty_leaf(txn, db: DbState, key: bytes) -> Node | None:
    """The leaf where ``key`` is or would go, when it and every branch above it are
    already dirty in ``txn`` and it has no flags: an edit that keeps it within its size
    bounds then copies no page and needs no path (what most edits of a large write
    transaction find). None otherwise: the caller takes the general path."""
    txnid = txn.txnid
    if db.root_txnid != txnid:
        return None
    dirty = txn._dirty
    node = dirty.get(db.root)  # None: a damaged meta (the general path says so)
    if node is None:
        return None
    # A dirty tree was reached by a checked descent before it was copied: its depth
    # is right, and a child named with this txnid is in the dirty pages' slots.
    lookup = dirty.lookup
    for _ in range(db.depth - 1):
        i = bisect_right(node.keys, key) - 1
        kid = node.ch[i]  # a dirty branch's links name dirty children only
        if kid is None:
            if node.ktxn[i] != txnid:
                return None
            try:
                kid = lookup(node.kids[i])
            except IndexError:  # not dirty after all: a damaged file (the general path)
                return None
            if kid is None:
                return None
            link_dirty(node, i, kid)
        node = kid
    return node if node.flags is None else None


def put_in_place(txn, db: DbState, key: bytes, value: bytes, overwrite: bool) -> bool | None:
    """:func:`insert` or :func:`replace_at` of an inline ``value``, done in a
    :func:`dirty_leaf` without a path when the leaf stays within its size bounds and
    ``key`` does not go past its end (where fills that arrive in order are handled).
    Returns as ``put`` does; None when it cannot tell or do it so (nothing changed)."""
    entry = LEAF_ENTRY_COST + len(key) + len(value)
    if entry > txn._max_entry:
        return None
    leaf = dirty_leaf(txn, db, key)
    if leaf is None:
        return None
    keys = leaf.keys
    i = bisect_left(keys, key)
    if i == len(keys):
        return None
    cap = txn.capacity
    if keys[i] == key:
        if not overwrite:
            return False
        vals = leaf.vals
        old = len(vals[i])
        size = leaf.size + len(value) - old
        if size > cap or size < cap // 4:
            return None
        if leaf.patched is not None:
            if len(value) == old:
                _patched(leaf, i, PATCH_LEAF_MAX)
            else:
                leaf.patched = None
        vals[i] = value
    else:
        size = leaf.size + entry
        if size > cap:
            return None
        leaf.patched = None
        keys.insert(i, key)
        leaf.vals.insert(i, value)
        db.entries += 1
    leaf.size = size
    db.changed = True
    return True


def append_leaf(txn, db: DbState, path: list, key: bytes, value: bytes) -> bool:
    """Start a new rightmost leaf holding only ``key`` and inline ``value``, when the
    rightmost leaf at the end of ``path`` (all of it dirty, and rightmost at every
    level) is too full to take them and its parent has room for the separator: what
    :func:`insert` does there (a split that leaves every entry in place and moves the
    new one right, see ``_split_point``), without its general steps. False when it
    cannot (nothing changed)."""
    if len(path) < 2:
        return False
    parent = path[-2][0]
    if (parent.txnid != txn.txnid
            or parent.size + BRANCH_ENTRY_COST + len(key) > txn.capacity):
        return False
    leaf = txn._new_node(db, leaf=True)
    leaf.keys.append(key)
    leaf.vals.append(value)
    leaf.size = LEAF_ENTRY_COST + len(key) + len(value)
    db.entries += 1
    db.changed = True
    _branch_insert(parent, len(parent.keys), key, leaf)
    path[-2][1] = len(parent.keys) - 1
    path[-1] = [leaf, 0]
    return True


def delete_in_place(txn, db: DbState, key: bytes) -> bool | None:
    """:func:`remove_at` of ``key``, done in a :func:`dirty_leaf` without a path when
    the leaf stays at least a quarter full. True when deleted, False when ``key`` is
    absent; None when it cannot tell or do it so (nothing changed)."""
    leaf = dirty_leaf(txn, db, key)
    if leaf is None:
        return None
    keys = leaf.keys
    i = bisect_left(keys, key)
    if i == len(keys) or keys[i] != key:
        return False
    size = leaf.size - (LEAF_ENTRY_COST + len(key) + len(leaf.vals[i]))
    if size < txn.capacity // 4 or len(keys) == 1:
        return None
    leaf.patched = None
    del keys[i]
    del leaf.vals[i]
    leaf.size = size
    db.entries -= 1
    db.changed = True
    return True


def insert(txn, db: DbState, path: list | None, key: bytes, stored: bytes, flag: int,
           append: bool) -> None:
    """Insert a new entry where ``path`` (from :func:`descend`) points."""
    db.changed = True
    db.entries += 1
    if path is None:
        leaf = txn._new_node(db, leaf=True)
        db.root, db.root_txnid, db.depth = leaf.pgno, leaf.txnid, 1
        path = [[leaf, 0]]
    else:
        touch_path(txn, db, path)
    leaf, i = path[-1]
    leaf.patched = None
    leaf.keys.insert(i, key)
    leaf.vals.insert(i, stored)
    if flag or leaf.flags is not None:
        if leaf.flags is None:
            leaf.flags = [0] * (len(leaf.keys) - 1)
        leaf.flags.insert(i, flag)
    leaf.size += LEAF_ENTRY_COST + len(key) + len(stored)
    if leaf.size > txn.capacity:
        _rebalance_up(txn, db, path, append, False)


def replace_at(txn, db: DbState, path: list, stored: bytes, flag: int) -> None:
    """Replace the stored value of the entry ``path`` points at."""
    db.changed = True
    touch_path(txn, db, path)
    leaf, i = path[-1]
    old = leaf.vals[i]
    if leaf.patched is not None:
        if len(stored) == len(old) and flag == (0 if leaf.flags is None else leaf.flags[i]):
            _patched(leaf, i, PATCH_LEAF_MAX)
        else:
            leaf.patched = None
    leaf.size += len(stored) - len(old)
    leaf.vals[i] = stored
    if flag or leaf.flags is not None:
        if leaf.flags is None:
            leaf.flags = [0] * len(leaf.keys)
        leaf.flags[i] = flag
    cap = txn.capacity
    if leaf.size > cap or leaf.size < cap // 4:
        _rebalance_up(txn, db, path, False, True)


def remove_at(txn, db: DbState, path: list) -> None:
    """Remove the entry ``path`` points at, rebalancing the tree."""
    remove_range(txn, db, path, path[-1][1] + 1)


def remove_range(txn, db: DbState, path: list, end: int) -> None:
    """Remove the leaf entries from the one ``path`` points at up to ``end`` (not
    included), rebalancing the tree. The caller frees their overflow runs."""
    db.changed = True
    touch_path(txn, db, path)
    leaf, i = path[-1]
    leaf.patched = None
    n = end - i
    db.entries -= n
    leaf.size -= (LEAF_ENTRY_COST * n + sum(map(len, leaf.keys[i:end]))
                  + sum(map(len, leaf.vals[i:end])))
    del leaf.keys[i:end]
    del leaf.vals[i:end]
    if leaf.flags is not None:
        del leaf.flags[i:end]
    if leaf.size < txn.capacity // 4 or not leaf.keys:
        _rebalance_up(txn, db, path, False, True)


def _rebalance_up(txn, db: DbState, path: list, append: bool, shrinking: bool) -> None:
    """Restore the size invariants from the bottom of ``path`` up: split an overfull
    node, merge or refill an underfull one (only when entries were removed or made
    smaller: an insert leaves a node at least as full as it was), and let the root
    grow or shrink."""
    cap = txn.capacity
    low = cap // 4
    level = len(path) - 1
    ins = path[level][1]  # where this level's node received an entry, or -1
    while level > 0:
        node = path[level][0]
        parent, pidx = path[level - 1]
        n = len(node.keys)
        if node.size > cap:
            # Entries arriving in order at the right edge fill pages fully.
            tail = ins == n - 1 and (append or all(
                i == len(p.keys) - 1 for p, i in path[:level]))
            sep, right = _split(txn, db, node, tail)
            _branch_insert(parent, pidx + 1, sep, right)
            ins = pidx + 1
        elif shrinking and (node.size < low or n < (1 if node.kids is None else 2)):
            if len(parent.keys) > 1:
                _refill(txn, db, parent, pidx, node)
            ins = -1
        else:
            return
        level -= 1
    root = path[0][0]
    _fix_root(txn, db, root, ins == len(root.keys) - 1)


def _fix_root(txn, db: DbState, root: Node, tail: bool) -> None:
    """Let the root grow or shrink; ``tail``: an overfull root received its last
    entry (a split then fills pages in order, as below the root)."""
    while True:
        if root.size > txn.capacity:
            sep, right = _split(txn, db, root, tail)
            new = txn._new_node(db, leaf=False)
            new.keys = [b"", sep]
            new.kids = u64_array((root.pgno, right.pgno))
            new.ktxn = u64_array((root.txnid, right.txnid))
            new.measure()
            db.root, db.root_txnid = new.pgno, new.txnid
            db.depth += 1
            root = new
        elif root.kids is not None and len(root.kids) == 1:
            child = _child(txn.load, root, 0)
            txn._free_node(root, db)
            db.root, db.root_txnid = child.pgno, child.txnid
            db.depth -= 1
            root = child
        elif root.kids is None and not root.keys:
            txn._free_node(root, db)
            db.root = db.root_txnid = db.depth = 0
            return
        else:
            return


def _split_point(node: Node, tail: bool) -> int:
    n = len(node.keys)
    if tail:
        return n - 1 if node.kids is None else n - 2
    # Left takes m entries: the count that leaves the larger half smallest (the
    # smallest such count). The larger half only shrinks towards where the halves
    # cross, so start in the middle and step towards it. With entries of at most
    # half a page, both halves then fit. O(n), mostly the left half's lengths in C.
    total = node.size
    m = n // 2
    keys = node.keys
    if node.kids is None:
        left = LEAF_ENTRY_COST * m + sum(map(len, keys[:m])) + sum(map(len, node.vals[:m]))
    else:
        left = BRANCH_ENTRY_COST * m + sum(map(len, keys[:m]))
    while m < n - 1:
        e = node.entry_size(m)
        if max(left + e, total - left - e) >= max(left, total - left):
            break
        left += e
        m += 1
    while m > 1:
        e = node.entry_size(m - 1)
        if max(left - e, total - left + e) > max(left, total - left):
            break
        left -= e
        m -= 1
    return m


def _split(txn, db: DbState, node: Node, tail: bool) -> tuple[bytes, Node]:
    """Move the upper part of overfull ``node`` to a new right sibling; return the
    separator and the sibling."""
    m = _split_point(node, tail)
    node.patched = None
    _own_keys(node)
    right = txn._new_node(db, leaf=node.kids is None)
    right.keys = node.keys[m:]
    del node.keys[m:]
    if node.kids is None:
        right.vals = node.vals[m:]
        del node.vals[m:]
        if node.flags is not None:
            right.flags = node.flags[m:]
            del node.flags[m:]
        sep = right.keys[0]
    else:
        right.kids = node.kids[m:]
        right.ktxn = node.ktxn[m:]
        del node.kids[m:]
        del node.ktxn[m:]
        node.ch = NO_LINKS  # its children moved
        sep = right.keys[0]
        right.keys[0] = b""
    # Sizes by difference: a dirty node's size is exact, and a branch stores the
    # key of its first entry empty (the separator moved up).
    right.measure()
    node.size -= right.size if node.kids is None else right.size + len(sep)
    return sep, right


def _own_keys(node: Node) -> None:
    """Give dirty ``node`` a list of keys of its own before they change: a dirty
    branch shares its committed source's tuple until then (see ``Node.copy``)."""
    if type(node.keys) is tuple:
        node.keys = list(node.keys)


def _branch_insert(parent: Node, i: int, key: bytes, child: Node) -> None:
    parent.patched = None
    _own_keys(parent)
    parent.keys.insert(i, key)
    parent.kids.insert(i, child.pgno)
    parent.ktxn.insert(i, child.txnid)
    if parent.ch is not NO_LINKS:
        parent.ch.insert(i, None)
    parent.size += BRANCH_ENTRY_COST + len(key)


def _branch_remove(parent: Node, i: int) -> None:
    parent.patched = None
    _own_keys(parent)
    parent.size -= BRANCH_ENTRY_COST + len(parent.keys[i])
    del parent.keys[i]
    del parent.kids[i]
    del parent.ktxn[i]
    if parent.ch is not NO_LINKS:
        del parent.ch[i]


def _dirty_child(txn, db: DbState, parent: Node, i: int) -> Node:
    child = _child(txn.load, parent, i)
    if child.txnid != txn.txnid:
        child = txn._touch(child, db)
        _repoint(parent, i, child)
    return child


def _repoint(parent: Node, i: int, child: Node) -> None:
    """Dirty ``parent`` names ``child``, a dirty copy of its child ``i``, instead."""
    parent.kids[i] = child.pgno
    parent.ktxn[i] = child.txnid
    if parent.ch is not NO_LINKS:  # a link kept if made (descents make them)
        parent.ch[i] = child
    _patched(parent, i, PATCH_BRANCH_MAX)


def _patched(node: Node, i: int, most: int) -> None:
    """Entry ``i`` of dirty ``node`` changed in place; past ``most`` such entries the
    commit encodes the page whole, so stop counting (``patched`` = None)."""
    patched = node.patched
    if patched is not None:
        if len(patched) < most:
            patched.add(i)
        else:
            node.patched = None


def _refill(txn, db: DbState, parent: Node, pidx: int, node: Node) -> None:
    """Merge underfull ``node`` (child ``pidx`` of ``parent``) with a sibling, or move
    entries over from the sibling when both do not fit in one page."""
    if pidx > 0:
        li, left, right = pidx - 1, _dirty_child(txn, db, parent, pidx - 1), node
    else:
        li, left, right = pidx, node, _dirty_child(txn, db, parent, pidx + 1)
    ri = li + 1
    sep = parent.keys[ri]
    leaf = node.kids is None
    left.patched = right.patched = parent.patched = None  # entries move between them
    _own_keys(left)
    _own_keys(right)
    _own_keys(parent)
    merged = left.size + right.size + (0 if leaf else len(sep))
    if merged <= txn.capacity:
        if leaf:
            if left.flags is not None or right.flags is not None:
                left.flags = (left.flags or [0] * len(left.keys)) + (
                    right.flags or [0] * len(right.keys))
            left.keys += right.keys
            left.vals += right.vals
        else:
            left.keys.append(sep)
            left.keys += right.keys[1:]
            left.kids += right.kids
            left.ktxn += right.ktxn
            left.ch = NO_LINKS  # its children moved
        left.size = merged
        _branch_remove(parent, ri)
        txn._free_node(right, db)
        return
    # Move entries one at a time from the fuller sibling into the emptier one.
    low = txn.capacity // 4
    if node is right:
        while (right.size < low or len(right.keys) < 2) and len(left.keys) > 2:
            sep = _shift_right(left, right, sep)
    else:
        while (left.size < low or len(left.keys) < 2) and len(right.keys) > 2:
            sep = _shift_left(left, right, sep)
    parent.size += len(sep) - len(parent.keys[ri])
    parent.keys[ri] = sep


def _shift_right(left: Node, right: Node, sep: bytes) -> bytes:
    """Move ``left``'s last entry to the front of ``right``; return the new separator."""
    if left.kids is None:
        k = left.keys.pop()
        v = left.vals.pop()
        right.keys.insert(0, k)
        right.vals.insert(0, v)
        if left.flags is not None or right.flags is not None:
            f = left.flags.pop() if left.flags is not None else 0
            if right.flags is None:
                right.flags = [0] * (len(right.keys) - 1)
            right.flags.insert(0, f)
        size = LEAF_ENTRY_COST + len(k) + len(v)
        left.size -= size
        right.size += size
        return k
    k = left.keys.pop()
    right.keys[0] = sep
    right.keys.insert(0, b"")
    right.kids.insert(0, left.kids.pop())
    right.ktxn.insert(0, left.ktxn.pop())
    left.ch = right.ch = NO_LINKS  # their children moved
    left.size -= BRANCH_ENTRY_COST + len(k)
    right.size += BRANCH_ENTRY_COST + len(sep)
    return k


def _shift_left(left: Node, right: Node, sep: bytes) -> bytes:
    """Move ``right``'s first entry to the end of ``left``; return the new separator."""
    if left.kids is None:
        k = right.keys.pop(0)
        v = right.vals.pop(0)
        left.keys.append(k)
        left.vals.append(v)
        if left.flags is not None or right.flags is not None:
            f = right.flags.pop(0) if right.flags is not None else 0
            if left.flags is None:
                left.flags = [0] * (len(left.keys) - 1)
            left.flags.append(f)
        size = LEAF_ENTRY_COST + len(k) + len(v)
        left.size += size
        right.size -= size
        return right.keys[0]
    right.keys.pop(0)
    new_sep = right.keys[0]
    right.keys[0] = b""
    left.keys.append(sep)
    left.kids.append(right.kids.pop(0))
    left.ktxn.append(right.ktxn.pop(0))
    left.ch = right.ch = NO_LINKS  # their children moved
    left.size += BRANCH_ENTRY_COST + len(sep)
    right.size -= BRANCH_ENTRY_COST + len(new_sep)
    return new_sep


_child = child  # for functions with a local named ``child``
