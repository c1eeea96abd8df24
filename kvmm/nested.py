"""Nested write transactions, as LMDB's: ``env.begin(write=True, parent=txn)``.

A child works on its parent's write state itself: the dirty pages, the overflow
values, the free list, the page allocator and the database records are the very
objects of the parent, so the child sees every change of its parent, and the child's
commit only hands that state back. The child's abort needs a *savepoint*: at the
child's begin, a copy of everything in that state that edits change in place (a dirty
node's entry lists, the free list's lists, each database record, ``next_pgno``, where
the parent's cursors stand); abort writes it back into the same objects, so whatever
refers to them (a dirty branch's links to its children, the write loader's map of
dirty pages, a cursor's database record) is right again. Nodes the child made are
dropped with the map they were in; committed nodes are never changed.

Cost: a child's begin copies the entry lists of the parent's dirty pages and its free
and overflow bookkeeping, O(entries of the dirty pages); its commit is O(1) plus its
cursors; its abort is O(the savepoint). A parent that dirtied little (the common case)
makes both cheap; a parent that dirtied much of a large tree pays a copy of those pages
at each child's begin.

As in LMDB and py-lmdb:

- while a child is open its parent refuses use (``BadTxnError``: its ``_done`` is set,
  with ``_child`` naming the child), but for ``id()``, ``commit()`` and ``abort()``;
- the parent's ``commit()`` or ``abort()`` aborts an open child (and its children)
  first, so a parent commits only its own changes;
- the parent's cursors work in the child while it is open (LMDB moves them there); the
  child's commit leaves them where they stand, its abort puts them back where they
  stood at its begin; the child's own cursors end with it;
- a named database created in the child survives the child's commit, and its handle
  becomes invalid at the child's abort.

A family (a top transaction and its descendants) shares one lock, held by each
``commit()`` and ``abort()`` of its members, so a parent aborted in one thread while
its child commits in another (py-lmdb's issue 180) ends one after the other.

Invariants:
- Exactly the innermost open transaction of a family is usable; its ancestors have
  ``_done`` set and ``_child`` set, and the free list's ``txn`` is the innermost.
- The ``_gen`` of the transaction a cursor returns to is above the cursor's, so the
  cursor finds its place again by its key (see kvmm.cursor).
"""

from __future__ import annotations

import threading
import weakref
from array import array

from .btree import NO_LINKS, DbState
from .errors import InvalidParameterError

#: The write state a child shares with its parent (the same objects).
SHARED = ("meta", "txnid", "_mine", "next_pgno", "_mm", "_dirty", "load", "_find_leaf", "_ovf_dirty",
          "main_db", "free_db", "_dbs", "freelist", "_reclaim", "_meta_target")
#: What of a dirty node edits change in place (its pgno and txnid never change).
NODE_FIELDS = ("keys", "vals", "flags", "kids", "ktxn", "size", "src", "patched")
#: What of the free list its allocations and frees change.
FREELIST_FIELDS = ("reuse", "pending", "inline", "freed", "freed_weak", "consumed",
                   "next_key", "exhausted", "saving", "extend_only")
#: Where a cursor stands (see kvmm.cursor); ``_fast`` is cleared, ``_txn`` handed back.
CURSOR_FIELDS = ("_eof", "_gen", "_key", "_on_entry", "_path", "_positioned", "_state")


def _copy(value):
    """A copy of a list, array or set that edits change in place; others as they are
    (tuples, bytes, ints and None never change)."""
    if isinstance(value, set):
        return set(value)
    return value[:] if isinstance(value, (list, array)) else value


class Savepoint:
    """The state of a write transaction that a child's abort restores."""

    __slots__ = ("cursors", "dbs", "dirty", "free_db", "freelist", "next_pgno", "ovf")

    def __init__(self, txn):
        self.next_pgno = txn.next_pgno
        self.dirty = [(node, [_copy(getattr(node, f)) for f in NODE_FIELDS])
                      for node in txn._dirty.values()]
        self.ovf = dict(txn._ovf_dirty)
        self.freelist = [_copy(getattr(txn.freelist, f)) for f in FREELIST_FIELDS]
        self.dbs = [(db, state, state.record(), state.changed)
                    for db, state in txn._dbs.items()]
        self.free_db = (txn.free_db.record(), txn.free_db.changed)
        # (weak reference, fields) of each live cursor (Transaction._cursors).
        self.cursors = [(ref, [getattr(cur, f) for f in CURSOR_FIELDS])
                        for ref in txn._cursors if (cur := ref()) is not None]

    def restore(self, txn) -> None:
        """Put ``txn``'s write state back as it was, in the same objects."""
        txn.next_pgno = self.next_pgno
        dirty = txn._dirty
        dirty.clear()
        for node, values in self.dirty:
            for f, value in zip(NODE_FIELDS, values):
                setattr(node, f, value)
            node.ch = NO_LINKS  # its links may name the child's nodes
            dirty[node.pgno] = node
        txn._ovf_dirty.clear()
        txn._ovf_dirty.update(self.ovf)
        for f, value in zip(FREELIST_FIELDS, self.freelist):
            setattr(txn.freelist, f, value)
        dbs = txn._dbs
        dbs.clear()
        for db, state, record, changed in self.dbs:
            _set_record(state, record, changed)
            if not db._dropped:  # a handle dropped (delete=True) stays closed, as in LMDB
                dbs[db] = state
        _set_record(txn.free_db, *self.free_db)


def _set_record(state, record: tuple, changed: bool) -> None:
    DbState.__init__(state, record)  # the same object, its fields as in ``record``
    state.changed = changed


class Ending:
    """Held while a member of a family commits or aborts: the family's lock, under
    which the member's open child (and so its descendants) is aborted first."""

    __slots__ = ("lock", "txn")

    def __init__(self, txn):
        self.txn = txn
        self.lock = txn._family

    def __enter__(self):
        self.lock.acquire()
        try:
            child = self.txn._child
            if child is not None:
                child.abort()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()


def begin(child, parent, write: bool) -> None:
    """Make ``child`` (a Transaction being built) a child of write transaction
    ``parent``: share its state, save what the child's abort restores, take over its
    cursors, and block the parent. O(savepoint)."""
    if parent.env is not child.env:
        raise InvalidParameterError("the parent transaction belongs to another environment")
    parent._live()
    if not parent.write:
        raise InvalidParameterError("read-only transactions cannot be nested")
    if not write:
        raise InvalidParameterError("a child of a write transaction must be one too "
                                    "(write=True)")
    family = parent._family
    if family is None:
        family = parent._family = threading.RLock()
    with family:
        child._family = family
        parent._changing()  # positioned cursors note their keys (what abort restores)
        parent._tail = None
        child._savepoint = Savepoint(parent)
        for name in SHARED:
            setattr(child, name, getattr(parent, name))
        child.freelist.bind(child)
        child._gen = parent._gen
        # The parent's set of cursors is lent to the child (each cursor's weak
        # reference removes itself from that set when the cursor dies).
        child._cursors = parent._cursors
        parent._cursors = set()
        for ref in child._cursors:
            cur = ref()
            if cur is not None:
                cur._txn = child
                cur._fast = None
        child._parent = parent
        parent._child = child
        parent._done = True


def end(child, commit: bool) -> None:
    """End ``child``: hand its state back to its parent (after restoring the savepoint
    when aborting), with the parent's cursors; its own cursors end with it. The
    caller holds the family's lock and checked that ``child`` is live."""
    parent = child._parent
    savepoint = child._savepoint
    env = child.env
    if commit:
        parent.next_pgno = child.next_pgno
        parent._opened += child._opened
        for db in child._opened:
            db._txn = weakref.ref(parent)
        child._changing()  # positioned cursors note their keys, found again in the parent
    else:
        for db in child._opened:
            env._forget_db(db)
        savepoint.restore(parent)
    child._opened = []
    parent.freelist.bind(parent)
    parent._gen = child._gen + 1
    # The lent set goes back to the parent with the parent's cursors; the child's own
    # cursors end with it.
    shared = child._cursors
    saved = dict(savepoint.cursors)
    for ref in list(shared):
        cur = ref()
        if cur is None or cur._txn is not child:
            continue  # died or closed meanwhile
        values = saved.get(ref)
        if values is None:
            shared.discard(ref)
            cur._txn = cur._path = cur._fast = None
            continue
        cur._txn = parent
        cur._fast = None
        if not commit:
            for f, value in zip(CURSOR_FIELDS, values):
                setattr(cur, f, value)
    parent._cursors = shared
    child._cursors = set()
    child._savepoint = None
    parent._child = None
    parent._done = False
    child._end()
