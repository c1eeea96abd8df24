"""Transactions: a snapshot to read, and for the one writer, the commit recipe.

A read transaction pins the snapshot of the last commit at ``begin()`` by publishing
its txnid in a reader slot; it never sees later commits. A write transaction edits
copies of the pages it touches (see :mod:`kvmm.btree`) and makes them visible with the
numbered recipe in :meth:`Transaction._commit`. A nested write transaction works on
its parent's state (see :mod:`kvmm.nested`); databases with other orders than byte
order take the paths of :mod:`kvmm.orders` and :mod:`kvmm.dupsort`.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, overload

from . import dupsort, nested, orders
from . import format as fmt
from ._typing import BytesLike, T, V_co
from .btree import (
    DbState,
    DirtyPages,
    Node,
    _bad_depth,
    append_leaf,
    delete_in_place,
    descend,
    first_path,
    insert,
    last_path,
    link_dirty,
    put_in_place,
    remove_at,
    replace_at,
    stale_links,
)
from .cursor import Cursor, _key_bytes, _lookup_key, as_bytes, path_next
from .errors import (
    BadDbiError,
    BadTxnError,
    CorruptedError,
    Error,
    IncompatibleError,
    InvalidParameterError,
    NotFoundError,
    ReadonlyError,
)
from .format import DB_DUPSORT, F_OVERFLOW, F_SUBDB, OVERFLOW_REF, u64_array
from .freelist import FreeList
from .reclaim import relocate_tail

if TYPE_CHECKING:
    from types import TracebackType

    from .env import Environment, _Database

_MAX_KEY = fmt.MAX_KEY_SIZE
_ENTRY_COST = fmt.LEAF_ENTRY_COST
# put tries put_in_place while Transaction._clean_leaves, up 1 for each put whose leaf
# was clean and down _INPLACE_HIT for each whose leaf was dirty, stays under
# _INPLACE_MISSES: it drifts up when fewer than 1 in (1 + _INPLACE_HIT) leaves are dirty.
_INPLACE_MISSES = 16
_INPLACE_HIT = 3
_STRICT = os.environ.get("KVMM_STRICT", "") not in ("", "0")
#: What a commit or an abort of a transaction without a family holds: nothing.
_ALONE = contextlib.nullcontext()


class Transaction(Generic[V_co]):
    """A read snapshot, or the write transaction, as py-lmdb's Transaction.

    Use as a context manager: a write transaction commits on normal exit and aborts
    on an exception; a read transaction ends either way. With ``parent`` (a write
    transaction), a nested write transaction: see :mod:`kvmm.nested`.
    """

    @overload
    def __init__(self: Transaction[bytes], env: Environment, db: _Database | None = None,
                 parent: Transaction[Any] | None = None, write: bool = False,
                 buffers: Literal[False] = False) -> None: ...
    @overload
    def __init__(self: Transaction[memoryview], env: Environment, db: _Database | None,
                 parent: Transaction[Any] | None, write: bool,
                 buffers: Literal[True]) -> None: ...
    @overload
    def __init__(self: Transaction[memoryview], env: Environment,
                 db: _Database | None = None, parent: Transaction[Any] | None = None,
                 write: bool = False, *, buffers: Literal[True]) -> None: ...
    @overload
    def __init__(self, env: Environment, db: _Database | None = None,
                 parent: Transaction[Any] | None = None, write: bool = False,
                 buffers: bool = False) -> None: ...
    def __init__(self, env, db=None, parent=None, write=False, buffers=False):
        # Ended until begun: the finalizer of a transaction whose begin failed (say, a
        # second write transaction of one thread) must not end another's.
        self._done = True
        self._child_ref = None  # see _child
        self._parent = None
        self._family = None  # the lock of a transaction with children (kvmm.nested)
        store = env._store
        store.usable()
        if write and store.readonly:
            raise ReadonlyError("the environment is read-only")
        if db is not None and getattr(db, "env", None) is not env:
            raise BadDbiError("the database handle belongs to another environment")
        self.env = env
        self._storage = store  # the environment's Store (kvmm.store)
        self._cache = store.cache
        self._pages = store.pages
        self.write = write
        self._buffers = buffers
        self._gen = 0
        # Weak references to the open cursors (each removes itself when it dies): a
        # cursor keeps its transaction alive, never the other way round, so nothing
        # holds a transaction in a reference cycle and dropping it aborts it at once.
        self._cursors: set[weakref.ref] = set()
        self._main_handle = env._main_db  # the handle of the main database
        self._default_db = db if db is not None else self._main_handle
        self._slot = None
        self._dbs: dict = {}
        # A read transaction's default database: its state and root node, once a
        # get found them (see get). None until then, after the transaction ended,
        # and in write transactions (whose root changes).
        self._root = None
        # The txnid of the pages this transaction writes (its dirty pages'); -1, which
        # no page has, in a read transaction.
        self._mine = -1
        # (the db argument of the put that cached it, _gen, rightmost leaf, its keys,
        # its values, its path, the db's state) while the tree is as it was when
        # cached: in-order inserts go to the leaf's end.
        self._tail = None
        # How often, lately, a put's leaf was not yet dirty (see put): while it is
        # mostly not, put_in_place is not tried.
        self._clean_leaves = 0
        # Handles of named databases open_db opened in this transaction: its commit
        # shares them with every transaction, its abort closes them (as LMDB).
        self._opened: list = []
        self._giving_back = False  # an empty commit to cut the file (ReclaimPolicy.give_back)
        self.page_size = store.page_size
        self.capacity = store.capacity
        self._max_entry = store.max_entry
        if parent is not None:
            nested.begin(self, parent, write)
        elif write:
            store.begin_write()
            try:
                self._start_write()
            except BaseException:
                store.end_write()
                raise
            self._done = False
        else:
            self.meta, self._slot, self._mm = store.begin_read()
            self._done = False
            self.txnid = self.meta.txnid
            self.load = store.pages.loader(self._mm, self.meta.next_pgno)
            self._find_leaf = store.pages.finder(self._mm, self.meta.next_pgno)
        self._done = False
        store.txns[id(self)] = weakref.ref(self)
        self._done = False

    @property
    def _child(self):
        """The open child transaction, which blocks this one, or None. Held weakly: a
        child keeps its parent alive, not the other way round, so a child dropped
        without commit() or abort() aborts at once (and its parent goes on), and a
        family dropped together ends at once, as in py-lmdb."""
        ref = self._child_ref
        return None if ref is None else ref()

    @_child.setter
    def _child(self, child) -> None:
        self._child_ref = None if child is None else weakref.ref(child)

    def _start_write(self):
        store = self._storage
        meta, newest_txnid, steady_txnid, self._meta_target = store.write_snapshot()
        self.meta = meta
        self.txnid = self._mine = newest_txnid + 1
        self.next_pgno = meta.next_pgno
        self._mm = store.map.cover(meta.next_pgno * self.page_size)
        self._dirty = DirtyPages(store.dirty_slots)
        self.load = self._write_loader(store.pages.loader(self._mm, meta.next_pgno,
                                                          private=True))
        self._find_leaf = store.pages.finder(self._mm, meta.next_pgno)
        self._ovf_dirty: dict[int, bytes] = {}
        self.main_db = DbState(meta.main)
        self.free_db = DbState(meta.free)
        self._dbs[self._main_handle] = self.main_db
        oldest = store.oldest_reader()
        # Without metasync the last meta is durable only at the next sync: until
        # then the commit before it is what a power loss falls back to, so the
        # pages the last commit freed wait one more commit (as in LMDB).
        durable = meta.txnid if store.metasync else meta.txnid - 1
        reader_bound = durable if oldest is None else min(durable, oldest)
        self.freelist = FreeList(self, reader_bound, steady_txnid, meta.inline_free)
        # When much of the file is free, take every reusable page up front, so that
        # pages are allocated lowest first and the file's tail empties.
        self._reclaim = store.policy.want_reclaim(self)
        if self._reclaim:
            self.freelist.load_all()

    # --- pages ----------------------------------------------------------------------

    def _write_loader(self, clean_load):
        """The ``load(pgno, txnid) -> Node`` of a write transaction: its own dirty
        pages by number, committed ones through the environment's cache (as a read
        transaction's ``load``, which is the environment's loader itself)."""
        dirty_lookup = self._dirty.lookup
        tid = self.txnid
        lookup = self._cache.lookup

        def load(pgno: int, txnid: int) -> Node:
            if txnid == tid:
                try:
                    node = dirty_lookup(pgno)
                except IndexError:  # past the slots: not dirty
                    node = None
                if node is None:
                    raise CorruptedError(
                        f"page {pgno}: referenced as written by txn {txnid}, the "
                        "transaction in progress (a damaged meta's txnid?)")
                return node
            try:
                node = lookup(pgno)
            except IndexError:  # past the cache's slots: not held
                node = None
            if node is not None and node.txnid == txnid:
                return node
            return clean_load(pgno, txnid)

        # The cache never holds a node of this transaction's txnid (it is committed by
        # nothing yet), so trying it first never hides a dirty page.
        load.cached = lookup  # see Pages.loader
        load.dirty = dirty_lookup
        load.mine = tid
        return load

    def _touch(self, node: Node, db: DbState) -> Node:
        """A dirty copy of committed ``node``; its old page is freed."""
        freelist = self.freelist
        pgno = freelist.alloc()
        freelist.free(node.pgno, 1, node.txnid)
        new = node.dirtied(pgno, self.txnid)
        self._dirty[pgno] = new
        return new

    def _new_node(self, db: DbState, leaf: bool) -> Node:
        pgno = self.freelist.alloc()
        if leaf:
            node = Node(pgno, self.txnid, [], [], None)
            db.leaf_pages += 1
        else:
            node = Node(pgno, self.txnid, [], kids=u64_array(), ktxn=u64_array())
            db.branch_pages += 1
        node.size = 0
        self._dirty[pgno] = node
        return node

    def _free_node(self, node: Node, db: DbState) -> None:
        if node.kids is None:
            db.leaf_pages -= 1
        else:
            db.branch_pages -= 1
        if node.txnid == self.txnid:
            del self._dirty[node.pgno]
        self.freelist.free(node.pgno, 1, node.txnid)

    # --- databases ------------------------------------------------------------------

    def _live(self):
        if self._done:
            if self._child is not None:
                raise BadTxnError("transaction has an open child transaction")
            if self._storage.forked:
                raise Error("transaction was begun before fork(); begin one in the child")
            raise Error("transaction has already ended")

    def _state(self, db) -> DbState:
        """The record of database ``db`` as this transaction sees it."""
        state = self._dbs.get(db)
        if state is not None:
            return state
        self._live()
        if db is None:
            return self._state(self._default_db)
        env: Environment = self.env
        if getattr(db, "env", None) is not env:
            raise BadDbiError("the database handle belongs to another environment")
        if db._dropped:
            raise InvalidParameterError(
                f"the handle of database {db.name!r} was dropped or closed (by drop() or "
                "the abort of the transaction that opened it)")
        owner = db._txn
        if owner is not None and not self._descends_from(owner()):
            raise InvalidParameterError(
                f"database {db.name!r} was opened in a transaction that has not ended: "
                "its handle is usable by other transactions once that one commits")
        if db is self._main_handle:
            state = DbState(self.meta.main)
        else:
            record = self._find_db_record(db.name)
            if record is None:
                raise BadDbiError(f"named database {db.name!r} does not exist in this txn")
            state = DbState(record)
        self._dbs[db] = state
        return state

    def _descends_from(self, txn) -> bool:
        """Whether ``txn`` is this transaction or one of its parents."""
        mine = self
        while mine is not None:
            if mine is txn:
                return True
            mine = mine._parent
        return False

    def _main_state(self) -> DbState:
        return self._state(self._main_handle)

    def _find_db_record(self, name: bytes):
        self._live()
        main = self._main_state()
        path = descend(self.load, main, name)
        if path is None:
            return None
        leaf, i = path[-1]
        if i < len(leaf.keys) and leaf.keys[i] == name:
            if leaf.flags is None or not leaf.flags[i] & F_SUBDB:
                raise IncompatibleError(f"key {name!r} of the main database is not a database")
            return fmt.decode_db_record(leaf.vals[i])
        return None

    def _db_names(self) -> list:
        """The names of the named databases: the keys of the main database whose
        entries are database records, in key order. O(entries of the main
        database); leaves without flags are passed over whole."""
        path = first_path(self.load, self._main_state())
        names: list = []
        while path is not None:
            leaf, i = path[-1]
            flags = leaf.flags
            if flags is None:
                path[-1][1] = len(leaf.keys) - 1  # no record in this leaf
            elif i < len(flags) and flags[i] & F_SUBDB:
                names.append(leaf.keys[i])
            if not path_next(self.load, path):
                break
        return names

    def _create_db(self, db) -> None:
        """Create named database ``db`` in this write transaction."""
        state = DbState((0, 0, 0, db._flags, 0, 0, 0, 0))
        state.changed = True
        self._dbs[db] = state
        main = self._main_state()
        path = descend(self.load, main, db.name)
        self._changing()
        insert(self, main, path, db.name, fmt.encode_db_record(state.record()), F_SUBDB,
               False)

    def _changing(self) -> None:
        """The tree is about to change: cursors find their place again afterwards."""
        if self._cursors:
            self._note_cursors()
        self._gen += 1

    def _note_cursors(self) -> None:
        """Before a change, each positioned, up-to-date cursor notes its entry's key,
        which its fast moves do not keep: it finds its place again by it."""
        gen = self._gen
        for ref in self._cursors:
            cur = ref()
            if cur is None:
                continue
            cur._fast = None
            if cur._positioned and cur._gen == gen:
                leaf, i = cur._path[-1]
                cur._key = leaf.keys[i]

    # --- reading --------------------------------------------------------------------

    def id(self) -> int:
        """This transaction's txnid (a read: the snapshot's; a child: its parent's)."""
        if self._child is None:
            self._live()
        return self.txnid

    @overload
    def get(self, key: BytesLike, default: None = None,
            db: _Database | None = None) -> V_co | None: ...
    @overload
    def get(self, key: BytesLike, default: T, db: _Database | None = None) -> V_co | T: ...
    def get(self, key, default=None, db=None):
        """The value of ``key``, or ``default``. O(log n); O(1) per level on cache hits."""
        root = self._root
        if (root is not None and db is None and key.__class__ is bytes and key
                and len(key) <= _MAX_KEY):
            # A read transaction's snapshot never changes: the root an earlier get
            # found is where this one starts.
            state, node = root
        else:
            state = self._dbs.get(db if db is not None else self._default_db)
            if state is None:
                state = self._state(db)
            elif self._done:
                self._live()
            if key.__class__ is not bytes or not key or len(key) > _MAX_KEY:
                key = _lookup_key(key)
                if key is None:
                    return default
            if state.flags:
                if state.flags & DB_DUPSORT:
                    return dupsort.get(self, state, key, default)
                key = orders.key_in(state.flags, key)
            pgno = state.root
            if not pgno:
                return default
            # The root is looked up in the page cache inline (load on a miss, a
            # stale entry, or a dirty root of this write transaction).
            txnid = state.root_txnid
            if txnid == self._mine:  # a root this write transaction wrote
                node = self._dirty.get(pgno) or self.load(pgno, txnid)
            else:
                try:
                    node = self._cache.lookup(pgno)
                except IndexError:  # past the cache's slots: not held
                    node = None
                if node is None or node.txnid != txnid:
                    node = self.load(pgno, txnid)
            if db is None and not self.write and not self._buffers and not state.flags:
                self._root = (state, node)
                self._pages.began(node, state.depth, self.load)
        # Each child is looked up in the page cache inline, as the root is; a
        # committed leaf that is not there is searched where it lies in the map.
        depth = state.depth
        while node.kids is not None:
            depth -= 1
            if depth <= 0:
                _bad_depth(state)  # a loop of branches in a damaged file
            i = bisect_right(node.keys, key) - 1
            kid = node.ch[i]  # the cache's links (see Node)
            if kid is not None:
                node = kid
                continue
            pgno = node.kids[i]
            txnid = node.ktxn[i]
            if txnid == self._mine:  # a page this write transaction wrote
                kid = self._dirty.get(pgno) or self.load(pgno, txnid)
                link_dirty(node, i, kid)  # ``node`` names a dirty child: it is dirty too
                node = kid
                continue
            try:
                kid = self._cache.lookup(pgno)
            except IndexError:  # past the cache's slots: not held
                kid = None
            if kid is not None and kid.txnid == txnid:
                if not self.write:  # a writer's branches change as it commits
                    self._cache.link(node, i, kid)
            elif depth == 1:
                found = self._find_leaf(pgno, txnid, key)
                if found is None:
                    return default
                value, flags = found
                if flags or self._buffers:
                    return self._stored(value, flags)
                return value
            else:
                kid = self.load(pgno, txnid)
            node = kid
        keys = node.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            if node.flags is None and not self._buffers:
                return node.vals[i]
            return self._value(node, i)
        return default

    def _stored(self, value: bytes, flags: int):
        """What get returns for a stored ``value`` with ``flags`` found in the map."""
        if flags & F_OVERFLOW:
            return self._read_overflow(value)
        return memoryview(value) if self._buffers else value

    def _value(self, leaf: Node, i: int):
        return self._stored(leaf.vals[i], 0 if leaf.flags is None else leaf.flags[i])

    def _read_overflow(self, stored: bytes):
        pgno, txnid, length = fmt.decode_overflow_ref(stored)
        if self.write and txnid == self.txnid:
            value = self._ovf_dirty.get(pgno)
            if value is None:
                raise CorruptedError(f"page {pgno}: dirty overflow run missing")
            return memoryview(value) if self._buffers else value
        return self._pages.read_overflow(self._mm, self.meta.next_pgno, pgno, txnid, length,
                                         self._buffers)

    def cursor(self, db: _Database | None = None) -> Cursor[V_co]:
        """A cursor on ``db`` (default: the transaction's database)."""
        self._live()
        db = db if db is not None else self._default_db
        flags = db._flags
        if not flags:
            return Cursor(db, self)
        if flags & DB_DUPSORT:
            if flags & orders.STORED_FORM:
                return dupsort.OrderedDupCursor(db, self)
            return dupsort.DupCursor(db, self)
        return orders.OrderedCursor(db, self)

    def stat(self, db: _Database | None = None) -> dict[str, int]:
        """py-lmdb's statistics of ``db`` in this transaction's view."""
        self._live()
        s = self._state(db)
        return {
            "psize": self.page_size,
            "depth": s.depth,
            "branch_pages": s.branch_pages,
            "leaf_pages": s.leaf_pages,
            "overflow_pages": s.overflow_pages,
            "entries": s.entries,
        }

    # --- writing --------------------------------------------------------------------

    def _writable(self, db) -> DbState:
        if not self.write:
            raise ReadonlyError("cannot write in a read-only transaction")
        state = self._state(db)
        self._live()
        return state

    def _store(self, state: DbState, key: bytes, value: bytes) -> tuple[bytes, int]:
        """The bytes to keep in the leaf for ``value``: itself, or an overflow ref."""
        if fmt.LEAF_ENTRY_COST + len(key) + len(value) <= self._max_entry:
            return value, 0
        n = fmt.overflow_pages(len(value), self.page_size)
        pgno = self.freelist.alloc(n)
        self._ovf_dirty[pgno] = value
        state.overflow_pages += n
        return OVERFLOW_REF.pack(pgno, self.txnid, len(value)), F_OVERFLOW

    def _drop_value(self, state: DbState, leaf: Node, i: int) -> None:
        """Free the overflow run of entry ``i`` of ``leaf``, if it has one."""
        if leaf.flags is None or not leaf.flags[i] & F_OVERFLOW:
            return
        pgno, txnid, length = fmt.decode_overflow_ref(leaf.vals[i])
        n = fmt.overflow_pages(length, self.page_size)
        state.overflow_pages -= n
        if txnid == self.txnid:
            self._ovf_dirty.pop(pgno, None)
        self.freelist.free(pgno, n, txnid)

    def put(self, key: BytesLike, value: BytesLike, dupdata: bool = True,
            overwrite: bool = True, append: bool = False, db: _Database | None = None) -> bool:
        """Store ``value`` under ``key``. False when the key exists and ``overwrite`` is
        False, or when ``append`` is set and ``key`` is not past the last key.
        O(log n); O(1) for keys past the last one (``append``, or a sequential fill).
        """
        tail = self._tail
        if (tail is not None and tail[0] is db and tail[1] == self._gen
                and key.__class__ is bytes and value.__class__ is bytes):
            # The rightmost leaf of the database ``db`` names (as the put that cached
            # it named it) is cached and unchanged since (so this is a live write
            # transaction, and the database a plain one): a key past its last one
            # (so not empty) goes to its end without a descent.
            keys = tail[3]
            if key > keys[-1] and len(key) <= _MAX_KEY:
                leaf = tail[2]
                entry = _ENTRY_COST + len(key) + len(value)
                if entry <= self._max_entry:  # the value stays in the leaf
                    if leaf.size + entry <= self.capacity:
                        # It fits: what insert() would do to a leaf already written
                        # by this transaction (with no flags), nothing else (the
                        # change counter only matters to cursors, and there are none).
                        keys.append(key)
                        tail[4].append(value)
                        leaf.size += entry
                        tail[6].entries += 1
                        return True
                    if append_leaf(self, tail[6], tail[5], key, value):
                        self._gen += 1  # what _changing() does with no cursors
                        leaf = tail[5][-1][0]  # the new one
                        self._tail = (db, self._gen, leaf, leaf.keys, leaf.vals, tail[5],
                                      tail[6])
                        return True
                path = tail[5]
                path[-1][1] = len(keys)
                return self._insert(tail[6], path, key, value, True, db)
        state = self._dbs.get(db if db is not None else self._default_db)
        if state is None or not self.write or self._done:
            state = self._writable(db)
        if state.flags:
            if state.flags & DB_DUPSORT:
                return dupsort.put(self, state, key, value, dupdata, overwrite, append)
            key = orders.key_in(state.flags, _key_bytes(key))
        if key.__class__ is not bytes or not key or len(key) > _MAX_KEY:
            key = _key_bytes(key)
        if value.__class__ is not bytes:
            value = as_bytes(value, "values")
        if not append and not self._cursors and self._clean_leaves < _INPLACE_MISSES:
            done = put_in_place(self, state, key, value, overwrite)
            if done is not None:
                if self._clean_leaves:
                    self._clean_leaves = max(0, self._clean_leaves - _INPLACE_HIT)
                if done:
                    self._gen += 1  # what _changing() does when there are no cursors
                return done
        path = descend(self.load, state, key)
        if path is not None:
            leaf, i = path[-1]
            # A put_in_place that finds its leaf clean walks the branches for nothing
            # (9 µs at 10^7 records, where the branches are out of the CPU's caches):
            # it is tried while at least a quarter of puts find their leaf dirty.
            if leaf.txnid == self.txnid:
                if self._clean_leaves:
                    self._clean_leaves = max(0, self._clean_leaves - _INPLACE_HIT)
            elif self._clean_leaves < 2 * _INPLACE_MISSES:
                self._clean_leaves += 1
            if i == len(leaf.keys):
                # Past the end of a leaf: past the last key when the leaf is rightmost.
                if all(pi == len(p.keys) - 1 for p, pi in path[:-1]):
                    return self._insert(state, path, key, value, True, db)
                if append:
                    return False
            elif append:
                return False
            elif leaf.keys[i] == key:
                if not overwrite:
                    return False
                if leaf.flags is not None and leaf.flags[i] & F_SUBDB:
                    raise IncompatibleError(f"key {key!r} names a database")
                self._changing()
                self._drop_value(state, leaf, i)
                stored, flag = self._store(state, key, value)
                replace_at(self, state, path, stored, flag)
                return True
        self._changing()
        stored, flag = self._store(state, key, value)
        insert(self, state, path, key, stored, flag, False)
        return True

    def _insert(self, state: DbState, path: list, key: bytes, value: bytes,
                tail: bool, db) -> bool:
        """Insert at the end of the rightmost leaf (``path``), filling pages fully, and
        keep the path cached while it stays the rightmost one, for puts that name
        the database as ``db`` does."""
        self._changing()
        stored, flag = self._store(state, key, value)
        insert(self, state, path, key, stored, flag, tail)
        leaf = path[-1][0]
        if leaf.keys[-1] is not key or path[0][0].pgno != state.root:
            # A split moved the key to a new rightmost leaf (or a new root came).
            path = last_path(self.load, state)  # type: ignore[assignment]  # not empty
            leaf = path[-1][0]
        if (leaf.keys[-1] is key and leaf.flags is None and not self._cursors
                and not state.flags):
            # The fast path of put() relies on these; a cursor clears it when opened.
            self._tail = (db, self._gen, leaf, leaf.keys, leaf.vals, path, state)
        else:
            self._tail = None
        return True

    def replace(self, key: BytesLike, value: BytesLike,
                db: _Database | None = None) -> bytes | None:
        """Store ``value`` under ``key``; return the previous value or None. In a
        dupsort database every value of ``key`` is replaced; the first is returned."""
        if self._writable(db).flags & DB_DUPSORT:
            return dupsort.replace(self, db if db is not None else self._default_db, key,
                                   value)
        old: Any = self.get(key, db=db)
        if old is not None and self._buffers:
            old = bytes(old)
        self.put(key, value, db=db)
        return old

    def pop(self, key: BytesLike, db: _Database | None = None) -> bytes | None:
        """Delete ``key``; return its value, or None when absent. In a dupsort
        database only the first value is deleted and returned."""
        if self._writable(db).flags & DB_DUPSORT:
            return dupsort.pop(self, db if db is not None else self._default_db, key)
        old: Any = self.get(key, db=db)
        if old is None:
            return None
        if self._buffers:
            old = bytes(old)
        self.delete(key, db=db)
        return old

    def delete(self, key: BytesLike, value: BytesLike = b"",
               db: _Database | None = None) -> bool:
        """Delete ``key`` (in a dupsort database: the pair (key, value), or every
        value of ``key`` when ``value`` is empty); False when absent. O(log n)."""
        state = self._dbs.get(db if db is not None else self._default_db)
        if state is None or not self.write or self._done:
            state = self._writable(db)
        if state.flags:
            if state.flags & DB_DUPSORT:
                return dupsort.delete(self, state, key, value)
            looked = _lookup_key(key)
            if looked is None:
                return False  # too long to be stored: absent, as in py-lmdb
            key = orders.key_in(state.flags, looked)
        if key.__class__ is not bytes or not key or len(key) > _MAX_KEY:
            looked = _lookup_key(key)
            if looked is None:
                return False
            key = looked
        if TYPE_CHECKING:  # bytes now (no cast: a call on every delete)
            assert isinstance(key, bytes)
        if not value and not self._cursors:
            done = delete_in_place(self, state, key)
            if done is not None:
                if done:
                    self._gen += 1  # as in put
                return done
        path = descend(self.load, state, key)
        if path is None:
            return False
        leaf, i = path[-1]
        if i >= len(leaf.keys) or leaf.keys[i] != key:
            return False
        if value and self._value(leaf, i) != value:
            return False
        if leaf.flags is not None and leaf.flags[i] & F_SUBDB:
            raise IncompatibleError(f"key {key!r} names a database; use drop()")
        self._changing()
        self._drop_value(state, leaf, i)
        remove_at(self, state, path)
        return True

    def drop(self, db: _Database, delete: bool = True) -> None:
        """Empty ``db``; with ``delete`` also remove it (not the main database)."""
        state = self._writable(db)
        self._changing()
        self._free_tree(state, state.root, state.root_txnid)
        state.root = state.root_txnid = state.depth = 0
        state.entries = state.branch_pages = state.leaf_pages = state.overflow_pages = 0
        state.changed = True
        env = self.env
        if delete and db is not self._main_handle:
            main = self._main_state()
            path: list = descend(self.load, main, db.name)  # type: ignore[arg-type, assignment]
            remove_at(self, main, path)
            del self._dbs[db]
            env._forget_db(db)

    def _free_tree(self, state: DbState, pgno: int, txnid: int) -> None:
        if not pgno:
            return
        node = self.load(pgno, txnid)
        if node.kids is not None:
            for kid, ktxn in zip(node.kids, node.ktxn):
                self._free_tree(state, kid, ktxn)
        else:
            for i in range(len(node.keys)):
                self._drop_value(state, node, i)
        if node.txnid == self.txnid:
            del self._dirty[pgno]
        self.freelist.free(pgno, 1, node.txnid)

    # --- ending ---------------------------------------------------------------------

    def _ending(self):
        """What a commit or an abort holds: for a member of a family with children,
        the family's lock, its open child aborted first (see kvmm.nested)."""
        return _ALONE if self._family is None else nested.Ending(self)

    def commit(self) -> None:
        """Make this transaction's changes visible and (with sync) durable; a child's,
        part of its parent's. An open child is aborted first, as in py-lmdb."""
        with self._ending():
            self._live()
            if self._parent is not None:
                nested.end(self, True)
            else:
                self._commit_top()

    def _commit_top(self) -> None:
        if not self.write:
            self._share_opened()
            self._end()
            return
        give_back = False
        try:
            fl = self.freelist
            if (self._dirty or self._ovf_dirty or fl.freed or fl.freed_weak
                    or self._giving_back and self._reclaim):
                self._commit()
                give_back = self._storage.policy.worth_giving_back(self)
        except BaseException:
            self.abort()
            raise
        self._share_opened()
        self._end()
        if give_back:
            self._storage.policy.give_back(self)

    def _share_opened(self) -> None:
        """The commit's part for the handles it opened: every transaction may use them."""
        for db in self._opened:
            db._txn = None

    def _commit(self) -> None:
        """The commit recipe. Step 7 writes the meta, the commit point; step 6 (sync
        before it) or 8 (metasync) makes it durable. Every step before 7 writes only
        pages no snapshot can reach, so a crash before the meta is written leaves the
        previous commit whole."""
        env = self.env
        store = self._storage
        policy = store.policy
        freelist = self.freelist
        # 1. When much of the file is free (all reusable pages were gathered at the
        #    start), move the few tree pages that pin the file's tail.
        reclaim = self._reclaim
        if reclaim:
            reusable = len(freelist.reuse)
            if policy.worth_moving(self, reusable):
                relocate_tail(self)
        # 2. Save changed named-database records (moved ones too) into the main tree.
        main = self.main_db
        for db, state in self._dbs.items():
            if db is not self._main_handle and state.changed:
                path: list = descend(self.load, main, db.name)  # type: ignore[assignment]
                leaf, i = path[-1]
                if i >= len(leaf.keys) or leaf.keys[i] != db.name:
                    raise NotFoundError(f"named database {db.name!r} vanished")
                replace_at(self, main, path, fmt.encode_db_record(state.record()), F_SUBDB)
        # 3. Give back free pages at the end of the file, then record the free list.
        trimmed = freelist.trim_tail()
        freelist.save()
        if reclaim:
            policy.reclaimed(self, trimmed, reusable)
        # 4. Make room: grow the file if the new pages pass its end (MapFullError here
        #    changes nothing).
        end = self.next_pgno * self.page_size
        store.grow(end, self.txnid)
        # 5. Write every dirty page and overflow run.
        if _STRICT:
            dirty = self._dirty
            for node in dirty.values():  # sizes are kept by difference
                size = node.size
                if node.measure() != size:
                    raise CorruptedError(f"strict mode: page {node.pgno} size {size}, "
                                         f"measured {node.size}")
                if stale_links(node, dirty, self.txnid):
                    raise CorruptedError(f"strict mode: page {node.pgno}: a stale link")
        written = store.write_pages(self)
        # 6-8. Sync the pages, write the meta into the slot not holding the newest
        #      steady meta, sync the meta (see Store.write_meta).
        meta = fmt.Meta(self.page_size, self.txnid, self.next_pgno, 0, store.boot_id,
                        main.record(), self.free_db.record(), freelist.inline)
        store.write_meta(meta, self, written)
        # 9. Share the new pages with later readers of this process, in place of
        # the committed pages this commit freed.
        self._pages.published(self._dirty.values(), freelist.freed + freelist.freed_weak)
        if _STRICT:
            for node in self._cache.nodes():  # other threads go on caching
                if type(node.keys) is not tuple:  # a dirty branch copy may share them
                    raise CorruptedError(f"strict mode: page {node.pgno}: keys not a tuple")
            from .check import strict_check

            strict_check(env)

    def abort(self) -> None:
        """Discard every change; end the transaction. Handles of named databases it
        created become invalid, as in LMDB. An open child is aborted first."""
        with self._ending():
            if self._done:
                return
            if self._parent is not None:
                nested.end(self, False)
                return
            for db in self._opened:
                self.env._forget_db(db)
            self._end()

    def _mark_done(self) -> None:
        """Refuse further use: every entry point checks ``_done``, but for the fast
        paths, which are turned off here (put's and get's)."""
        self._done = True
        self._tail = None
        self._root = None

    def _end(self) -> None:
        if self._done:
            return
        store = self._storage
        # Whoever takes the transaction out of store.txns ends it, once: another
        # thread's close() or set_mapsize() may end it while its own thread does.
        if store.txns.pop(id(self), None) is None:
            return
        self._mark_done()
        for ref in list(self._cursors):
            cur = ref()
            if cur is not None:
                cur._txn = None
                cur._path = None
                cur._fast = None
        self._cursors.clear()
        if self.write:
            if self._parent is None:  # a child shares its parent's
                self._dirty.release()
            self._dirty = DirtyPages([])
            self._ovf_dirty = {}
            self.freelist = None  # it refers back to this transaction
            if self._parent is None:
                store.end_write()
        else:
            store.end_read(self._slot)
        self._mm = None
        self._find_leaf = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and (not self._done or self._child is not None):
            self.commit()
        else:
            self.abort()

    def __del__(self):
        try:
            if not self._done or self._child is not None:
                self.abort()
        except Exception:  # noqa: BLE001, S110 - a finalizer must not raise
            pass
