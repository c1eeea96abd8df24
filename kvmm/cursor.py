"""Cursors: a position in one database of one transaction, as py-lmdb's Cursor.

A cursor holds the path ``[[node, index], ...]`` from the root to its entry. In a
write transaction the tree changes under it (nodes are copied, split and merged), so
the cursor also keeps its entry's key and the transaction's change counter; when the
counter moved on, the path is found again from the key before the cursor is used. A
cursor whose entry was deleted then stands just before the entry that followed it, as
LMDB's cursors do.

Invariants:
- ``_path`` is valid for the tree as of change counter ``_gen``.
- ``_txn`` is None once the transaction ended (``Transaction._end`` clears it), so a
  cursor with a transaction needs no check of ``_done``.
- ``_key`` is the entry's key whenever the path is out of date: moves on a current
  path do not keep it, and the transaction has every positioned cursor note it just
  before the tree changes (``Transaction._note_cursors``).
- ``_positioned`` is False after a failed move; the path then still marks where the
  cursor was, so ``next``/``prev`` continue from there as in LMDB.
- ``_fast``, when not None and the cursor is positioned, is the path's leaf step, on
  a current path, in a leaf without flags, in a transaction without buffers: then
  ``next``/``item``/``key``/``value`` take their fast paths on it alone. Only
  ``_settle`` sets it; whatever makes it stale clears it (a change of the tree in
  ``Transaction._note_cursors``, the transaction's end, ``close``, a walk of the
  leaves, a restored path). Moves that unposition the cursor need not clear it: the
  fast paths check ``_positioned`` too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, overload

from ._typing import BytesLike, T, V_co
from .btree import child, descend, first_path
from .errors import (
    BadValsizeError,
    CorruptedError,
    Error,
    IncompatibleError,
    InvalidParameterError,
)
from .format import MAX_KEY_SIZE

if TYPE_CHECKING:
    from types import TracebackType

    from .env import _Database
    from .txn import Transaction


def _at_level(node, level: int, path: list):
    """``node``, a child reached by a step, checked to be a leaf exactly when ``level``
    is the path's last, and not an empty leaf: a tree never keeps one below a branch
    (a damaged file may), and a step onto one would have no entry to stand on."""
    if (node.kids is None) != (level == len(path) - 1):
        raise CorruptedError(f"page {node.pgno}: a {'leaf' if node.kids is None else 'branch'}"
                             f" at the wrong level of its tree")
    if not node.keys:
        raise CorruptedError(f"page {node.pgno}: an empty page below a branch")
    return node


def _edge(path: list | None) -> list | None:
    """``path`` to the first or last leaf, its leaf checked as a step's (``_at_level``):
    an empty leaf below a branch would read as an empty database."""
    if path is not None and len(path) > 1:
        _at_level(path[-1][0], len(path) - 1, path)
    return path


def path_next(load, path: list) -> bool:
    """Step ``path`` to the next entry; False (path unchanged) at the end."""
    leaf = path[-1]
    if leaf[1] + 1 < len(leaf[0].keys):
        leaf[1] += 1
        return True
    level = len(path) - 2
    while level >= 0:
        node, i = path[level]
        if i + 1 < len(node.kids):
            path[level][1] = i + 1
            for lv in range(level + 1, len(path)):
                pn, pi = path[lv - 1]
                path[lv] = [_at_level(child(load, pn, pi), lv, path), 0]
            return True
        level -= 1
    return False


def path_prev(load, path: list) -> bool:
    """Step ``path`` to the previous entry; False (path unchanged) at the start."""
    leaf = path[-1]
    if leaf[1] > 0:
        leaf[1] = min(leaf[1], len(leaf[0].keys)) - 1
        if leaf[1] >= 0:
            return True
    level = len(path) - 2
    while level >= 0:
        i = path[level][1]
        if i > 0:
            path[level][1] = i - 1
            for lv in range(level + 1, len(path)):
                pn, pi = path[lv - 1]
                kid = _at_level(child(load, pn, pi), lv, path)
                path[lv] = [kid, len(kid.keys) - 1]
            return True
        level -= 1
    return False


def as_bytes(obj, what: str) -> bytes:
    """``obj`` (any buffer: bytes, bytearray, memoryview...) as bytes; TypeError for
    anything else, str included."""
    if obj.__class__ is bytes:
        return obj
    if not isinstance(obj, str):
        try:
            return bytes(memoryview(obj))
        except TypeError:
            pass
    raise TypeError(f"{what} must be bytes-like, not {type(obj).__name__}")


def _key_bytes(key) -> bytes:
    key = as_bytes(key, "keys")
    if not key or len(key) > MAX_KEY_SIZE:
        raise BadValsizeError(f"key of {len(key)} bytes: keys are 1 to {MAX_KEY_SIZE} bytes")
    return key


def _lookup_key(key):
    """``key`` as bytes for a lookup, or None for a key too long to be stored, which
    no lookup finds: py-lmdb answers as for an absent key. An empty key raises
    BadValsizeError, as in py-lmdb."""
    key = as_bytes(key, "keys")
    return _key_bytes(key) if len(key) <= MAX_KEY_SIZE else None


class Cursor(Generic[V_co]):
    """A position in a database, moved by ``first``/``next``/``set_range``...

    Use as py-lmdb's Cursor; also iterable (``for key, value in cursor``).
    """

    __slots__ = (
        "__weakref__",
        "_db",
        "_eof",
        "_fast",
        "_gen",
        "_key",
        "_on_entry",
        "_path",
        "_positioned",
        "_state",
        "_txn",
    )

    def __init__(self, db: _Database, txn: Transaction[V_co]) -> None:
        txn._live()
        self._txn: Any = txn  # None once closed
        self._db = db
        self._state = txn._state(db)
        self._path: Any = None  # [[node, index], ...] from the root
        self._fast: Any = None
        self._positioned = False
        self._eof = False
        self._on_entry = False
        self._gen = txn._gen
        self._key: Any = b""
        txn._cursors.add(weakref.ref(self, txn._cursors.discard))
        txn._tail = None  # its fast inserts do not tell cursors

    # --- internals ------------------------------------------------------------------

    def _check(self):
        txn = self._txn
        if txn is None or txn._done:
            raise Error("cursor used after its transaction ended or it was closed")
        return txn

    def _sync(self) -> bool:
        """Bring the path up to date after writes and re-read the entry, as py-lmdb's
        key()/value() do (MDB_GET_CURRENT): the cursor then stands on its key, or
        after that key's deletion on the entry that followed it — even if its last
        move had failed, unless that move ran off the end. True if it stands on an
        entry."""
        txn = self._check()
        if self._gen != txn._gen:
            self._resync()
            self._positioned = self._on_entry
        return self._positioned

    def _resync(self) -> bool:
        """Find the path again after writes, leaving ``_positioned`` as it was (as
        py-lmdb's own flag is); True if the cursor's key still exists. Sets
        ``_on_entry``: whether the path now stands on an entry."""
        txn = self._check()
        if self._gen == txn._gen:
            return self._path is not None
        self._gen = txn._gen
        self._state = txn._state(self._db)
        path = descend(txn.load, self._state, self._key) if self._path is not None else None
        self._path = path
        self._on_entry = False
        if path is None:
            self._positioned = False
            return False
        leaf, i = path[-1]
        exact = i < len(leaf.keys) and leaf.keys[i] == self._key
        if i < len(leaf.keys) or path_next(txn.load, path):
            self._on_entry = True
        return exact

    def _settle(self, ok: bool, eof: bool = False) -> bool:
        """Record the outcome of a move: the current key, or unpositioned (``eof``:
        because the move ran off the end)."""
        self._positioned = ok
        self._eof = eof and not ok
        self._fast = None
        if ok:
            step = self._path[-1]
            leaf, i = step
            self._key = leaf.keys[i]
            if leaf.flags is None and not self._txn._buffers:
                self._fast = step
        return ok

    def _at_end(self) -> bool:
        """True when the leaf index points past its leaf (after a seek miss)."""
        leaf, i = self._path[-1]
        return i >= len(leaf.keys)

    # --- positioning ----------------------------------------------------------------

    def first(self) -> bool:
        """Move to the first entry; False when the database is empty. O(log n)."""
        txn = self._check()
        self._gen = txn._gen
        self._state = txn._state(self._db)
        self._path = _edge(first_path(txn.load, self._state))
        return self._settle(self._path is not None and not self._at_end())

    def last(self) -> bool:
        """Move to the last entry; False when the database is empty. O(log n)."""
        txn = self._check()
        self._gen = txn._gen
        self._state = txn._state(self._db)
        self._path = _edge(first_path(txn.load, self._state, last=True))
        return self._settle(self._path is not None and self._path[-1][1] >= 0)

    def next(self) -> bool:
        """Move to the next entry (the first if unpositioned). O(1) amortised."""
        step = self._fast
        if step is not None and self._positioned:
            i = step[1] + 1
            if i < len(step[0].keys):  # the hot path: the next entry is in the same leaf
                step[1] = i
                return True
        return self._next()

    def _next(self) -> bool:
        txn = self._check()
        if self._path is None:
            return self.first()
        if self._gen != txn._gen:
            exact = self._resync()
            if self._path is None:
                return self._settle(False)
            if not exact and not self._eof:
                # The entry went away: the cursor already stands on its successor.
                return self._settle(self._on_entry, eof=not self._on_entry)
        path = self._path
        if self._at_end():
            ok = path_next(txn.load, path) and not self._at_end()
        else:
            ok = path_next(txn.load, path)
        return self._settle(ok, eof=not ok)

    def prev(self) -> bool:
        """Move to the previous entry (the last if unpositioned). O(1) amortised."""
        txn = self._check()
        if self._path is None:
            return self.last()
        if self._gen != txn._gen:
            self._resync()
            if self._path is None:
                return self._settle(False)
        return self._settle(path_prev(txn.load, self._path))

    def _seek_key(self, key):
        """``key`` as bytes for a seek, or None for one too long to exist. As in
        py-lmdb, a refused key leaves the cursor unpositioned."""
        if key.__class__ is bytes and key and len(key) <= MAX_KEY_SIZE:
            return key  # what _lookup_key returns for it, without its calls
        try:
            key = _lookup_key(key)
        except BadValsizeError:
            self._positioned = False
            raise
        if key is None:
            self._positioned = False
        return key

    def set_key(self, key: BytesLike) -> bool:
        """Move to ``key`` exactly; False (unpositioned) when absent. O(log n)."""
        key = self._seek_key(key)
        if key is None:
            return False
        found = self._seek(key)  # type: ignore[arg-type]
        if found and self._path[-1][0].keys[self._path[-1][1]] == key:
            return True
        # A miss leaves the cursor at the insertion point, as LMDB's.
        self._positioned = False
        return False

    def set_range(self, key: BytesLike) -> bool:
        """Move to the first entry with a key >= ``key``; False past the end. O(log n)."""
        if key.__class__ is not bytes or not key:
            if not key:
                return self.first()  # as py-lmdb: an empty key means "from the start"
            key = as_bytes(key, "keys")
        # A key too long to be stored still has its place in the order: the cursor
        # moves to the first key after it, as py-lmdb's does.
        return self._seek(key)

    def _seek(self, key: bytes) -> bool:
        """Move to the first entry whose tree key is >= ``key`` (not validated). A
        miss leaves the cursor at the insertion point, as LMDB's."""
        txn = self._check()
        self._key = key
        self._gen = txn._gen
        self._state = txn._state(self._db)
        self._path = path = descend(txn.load, self._state, key)
        if path is None:
            return self._settle(False)
        leaf, i = path[-1]
        if i < len(leaf.keys):
            return self._settle(True)
        ok = path_next(txn.load, path) and not self._at_end()
        return self._settle(ok, eof=not ok)

    # --- reading --------------------------------------------------------------------

    def key(self) -> V_co:
        """The current key, or empty when unpositioned. O(1)."""
        step = self._fast
        if step is not None and self._positioned:
            return step[0].keys[step[1]]
        if not self._sync():
            return self._nothing()
        leaf, i = self._path[-1]
        k = leaf.keys[i]
        return memoryview(k) if self._txn._buffers else k  # type: ignore[return-value]

    def value(self) -> V_co:
        """The current value, or empty when unpositioned. O(1) (overflow: O(size))."""
        step = self._fast
        if step is not None and self._positioned:
            return step[0].vals[step[1]]
        if not self._sync():
            return self._nothing()
        leaf, i = self._path[-1]
        return self._txn._value(leaf, i)

    def _nothing(self) -> Any:
        """What an unpositioned cursor reads: empty, a memoryview with ``buffers``
        (as py-lmdb's; a new one each time, since a caller may release it)."""
        return memoryview(b"") if self._txn._buffers else b""

    def item(self) -> tuple[V_co, V_co]:
        """(key, value) of the current entry, or two empty ones."""
        step = self._fast
        if step is not None and self._positioned:
            leaf, i = step
            return leaf.keys[i], leaf.vals[i]
        return Cursor.key(self), self.value()  # the stored key: see OrderedCursor.item

    @overload
    def get(self, key: BytesLike, default: None = None) -> V_co | None: ...
    @overload
    def get(self, key: BytesLike, default: T) -> V_co | T: ...
    def get(self, key: BytesLike, default: object = None) -> object:
        """Move to ``key`` and return its value, or ``default`` when absent."""
        if self.set_key(key):
            return self.value()
        return default

    def count(self) -> int:
        """Values of the current key: 1 in a database without duplicates (where
        LMDB's count raises IncompatibleError), 0 after a failed move.
        InvalidParameterError before the cursor was ever positioned, as LMDB's."""
        self._sync()
        self._require_path("count")
        return 1 if self._positioned else 0

    def _require_path(self, what: str) -> None:
        """InvalidParameterError when the cursor was never positioned (LMDB's EINVAL for
        moves relative to the current entry)."""
        if self._path is None:
            raise InvalidParameterError(f"{what}() needs a cursor positioned by a move first")

    @overload
    def getmulti(self, keys: Iterable[BytesLike], dupdata: bool = False,
                 dupfixed_bytes: int | None = None, keyfixed: Literal[False] = False,
                 values: Literal[True] = True) -> list[tuple[V_co, V_co]]: ...
    @overload
    def getmulti(self, keys: Iterable[BytesLike], dupdata: bool = False,
                 dupfixed_bytes: int | None = None, keyfixed: Literal[False] = False,
                 *, values: Literal[False]) -> list[V_co]: ...
    @overload
    def getmulti(self, keys: Iterable[BytesLike], dupdata: bool = False,
                 dupfixed_bytes: int | None = None, *, keyfixed: Literal[True],
                 values: bool = True) -> memoryview: ...
    def getmulti(self, keys: Iterable[BytesLike], dupdata: bool = False,
                 dupfixed_bytes: int | None = None, keyfixed: bool = False,
                 values: bool = True) -> Any:
        """[(key, value)] for each of ``keys`` that is present, in the order given, as
        py-lmdb's: with ``values=False`` only the keys found; in a dupsort database,
        with ``dupdata`` every value of each key, and with ``dupfixed_bytes`` (a
        dupfixed database) each key's values laid end to end and cut into pieces of
        that many bytes (LMDB's MDB_GET_MULTIPLE); with ``keyfixed`` as well, the
        pairs back to back in one memoryview (keys of one size). O(log n) per key,
        plus the values read."""
        if dupfixed_bytes and dupfixed_bytes < 0:
            raise OverflowError("Integer argument must be >= 0")
        if (dupfixed_bytes or keyfixed) and not dupdata:
            raise TypeError("dupdata is required for dupfixed_bytes/keyfixed.")
        if keyfixed and not dupfixed_bytes:
            raise TypeError("dupfixed_bytes is required for keyfixed.")
        if not values and dupdata:
            raise TypeError("values=False is incompatible with dupdata.")
        out = []
        width = None
        for key in keys:
            if not self.set_key(key):
                continue
            if not values:
                out.append(self.key())
                continue
            found = self._multi(dupdata, dupfixed_bytes)
            if keyfixed and found:
                if width is None:
                    width = len(found[0][0])
                elif len(found[0][0]) != width:
                    raise ValueError("keyfixed=True requires all keys to be the same size")
            out += found
        if keyfixed:
            return memoryview(bytearray(b"".join(bytes(k) + bytes(v) for k, v in out)))
        return out

    def _multi(self, dupdata: bool, dupfixed_bytes) -> list:
        """getmulti's pairs of the key the cursor stands on: its one value."""
        if dupfixed_bytes:
            raise IncompatibleError("getmulti(dupfixed_bytes=...) needs a dupfixed database")
        return [self.item()]

    @overload
    def iternext(self, keys: Literal[True] = True,
               values: Literal[True] = True) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iternext(self, keys: Literal[True] = True, *,
               values: Literal[False]) -> Iterator[V_co]: ...
    @overload
    def iternext(self, keys: Literal[True], values: Literal[False]) -> Iterator[V_co]: ...
    @overload
    def iternext(self, keys: Literal[False], values: Literal[True] = True) -> Iterator[V_co]: ...
    @overload
    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]: ...
    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        """Iterate forwards from the current entry (from the first if unpositioned)."""
        self._check()
        if not self._positioned and not self.first():
            return
        yield from self._walk(keys, values, True)

    @overload
    def iterprev(self, keys: Literal[True] = True,
               values: Literal[True] = True) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iterprev(self, keys: Literal[True] = True, *,
               values: Literal[False]) -> Iterator[V_co]: ...
    @overload
    def iterprev(self, keys: Literal[True], values: Literal[False]) -> Iterator[V_co]: ...
    @overload
    def iterprev(self, keys: Literal[False], values: Literal[True] = True) -> Iterator[V_co]: ...
    @overload
    def iterprev(self, keys: bool = True, values: bool = True) -> Iterator[Any]: ...
    def iterprev(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        """Iterate backwards from the current entry (from the last if unpositioned)."""
        self._check()
        if not self._positioned and not self.last():
            return
        yield from self._walk(keys, values, False)

    __iter__ = iternext

    @overload
    def iternext_nodup(self, keys: Literal[True] = True,
               values: Literal[False] = False) -> Iterator[V_co]: ...
    @overload
    def iternext_nodup(self, keys: Literal[True] = True, *,
               values: Literal[True]) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iternext_nodup(self, keys: Literal[True], values: Literal[True]) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iternext_nodup(self, keys: Literal[False], values: Literal[True]) -> Iterator[V_co]: ...
    @overload
    def iternext_nodup(self, keys: bool = True, values: bool = False) -> Iterator[Any]: ...
    def iternext_nodup(self, keys: bool = True, values: bool = False) -> Iterator[Any]:
        """As iternext: every key is unique in a database without duplicates."""
        return self.iternext(keys, values)

    @overload
    def iterprev_nodup(self, keys: Literal[True] = True,
               values: Literal[False] = False) -> Iterator[V_co]: ...
    @overload
    def iterprev_nodup(self, keys: Literal[True] = True, *,
               values: Literal[True]) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iterprev_nodup(self, keys: Literal[True], values: Literal[True]) -> Iterator[tuple[V_co, V_co]]: ...
    @overload
    def iterprev_nodup(self, keys: Literal[False], values: Literal[True]) -> Iterator[V_co]: ...
    @overload
    def iterprev_nodup(self, keys: bool = True, values: bool = False) -> Iterator[Any]: ...
    def iterprev_nodup(self, keys: bool = True, values: bool = False) -> Iterator[Any]:
        return self.iterprev(keys, values)

    def _walk(self, keys: bool, values: bool, forward: bool, stored: bool = False):
        """Yield entries from the current one on. A read transaction's tree never
        changes, so its leaves are walked directly; a write transaction's cursor
        steps with next()/prev(), which follow the tree through writes. With
        ``stored`` (a read transaction's), the tree's own bytes, never memoryviews."""
        txn = self._txn
        if txn.write:
            yield from self._walk_stepping(keys, values, forward)
            return
        self._fast = None  # the walk moves the path on its own
        load = txn.load
        step = path_next if forward else path_prev
        buffers = txn._buffers and not stored
        path = self._path
        while True:
            leaf_step = path[-1]
            leaf = leaf_step[0]
            ks = leaf.keys
            vs = leaf.vals
            if forward:
                order = range(leaf_step[1], len(ks))
            else:
                order = range(leaf_step[1], -1, -1)
            if leaf.flags is None and not buffers:
                # The hot loop: no overflow values, no memoryviews.
                if keys and values:
                    for i in order:
                        leaf_step[1] = i
                        yield (ks[i], vs[i])
                        if txn._done:
                            raise Error("transaction ended during iteration")
                else:
                    seq = ks if keys else vs
                    for i in order:
                        leaf_step[1] = i
                        yield seq[i]
                        if txn._done:
                            raise Error("transaction ended during iteration")
            else:
                value_of = txn._value
                for i in order:
                    leaf_step[1] = i
                    k = memoryview(ks[i]) if buffers else ks[i]
                    if keys and values:
                        yield (k, value_of(leaf, i))
                    else:
                        yield k if keys else value_of(leaf, i)
                    if txn._done:
                        raise Error("transaction ended during iteration")
            if not step(load, path):
                self._positioned = False
                leaf_step = path[-1]
                self._key = leaf_step[0].keys[leaf_step[1]]
                return

    def _walk_stepping(self, keys: bool, values: bool, forward: bool):
        # Cursor's own readers: a subclass turns what the walk yields into user form.
        while True:
            if keys and values:
                yield Cursor.item(self)
            else:
                yield Cursor.key(self) if keys else self.value()
            if not (self.next() if forward else self.prev()):
                return

    # --- writing --------------------------------------------------------------------

    def put(self, key: BytesLike, value: BytesLike, dupdata: bool = True,
            overwrite: bool = True, append: bool = False) -> bool:
        """Store ``value`` under ``key`` and move to it; as Transaction.put."""
        txn = self._check()
        ok = txn.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append,
                     db=self._db)
        self.set_key(key)
        return ok

    def putmulti(self, items: Iterable[tuple[BytesLike, BytesLike]], dupdata: bool = True,
                 overwrite: bool = True, append: bool = False) -> tuple[int, int]:
        """Store many (key, value) pairs; return (consumed, added)."""
        txn = self._check()
        consumed = added = 0
        last = None
        for key, value in items:
            consumed += 1
            if txn.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append,
                       db=self._db):
                added += 1
            last = key
        if last is not None:
            self.set_key(last)
        return consumed, added

    def replace(self, key: BytesLike, value: BytesLike) -> bytes | None:
        """Store ``value`` under ``key``; return the old value or None."""
        txn = self._check()
        old = txn.replace(key, value, db=self._db)
        self.set_key(key)
        return old

    def pop(self, key: BytesLike) -> bytes | None:
        """Move to ``key`` and delete it; return its value, or None when absent."""
        if not self.set_key(key):
            return None
        old: Any = self.value()
        if old.__class__ is not bytes:
            old = bytes(old)
        self.delete()
        return old

    def delete(self, dupdata: bool = False) -> bool:
        """Delete the current entry and move to the next; False when unpositioned."""
        txn = self._check()
        self._resync()
        if not self._positioned:
            return False
        leaf, i = self._path[-1]
        key = leaf.keys[i]
        txn.delete(self._user_key(key), db=self._db)
        self._gen = txn._gen
        self._state = txn._state(self._db)
        self._path = path = descend(txn.load, self._state, key)
        if path is None:
            self._positioned = False
            return True
        if self._at_end():
            self._settle(path_next(txn.load, path) and not self._at_end())
            if not self._positioned:
                self._key = key
                leaf = path[-1]
                leaf[1] = max(len(leaf[0].keys) - 1, 0)
        else:
            self._settle(True)
        return True

    def _user_key(self, stored: bytes) -> bytes:
        """The key as the user gives it, of stored key ``stored``: the same bytes in a
        database kept in byte order (see kvmm.orders)."""
        return stored

    # --- life -----------------------------------------------------------------------

    def close(self) -> None:
        """Forget the position; the cursor cannot be used afterwards."""
        txn = self._txn
        if txn is not None:
            # A live weak reference equals (and hashes as) another to the same cursor.
            txn._cursors.discard(weakref.ref(self))
        self._txn = None
        self._path = None
        self._fast = None
        self._positioned = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def txn(self) -> Transaction[V_co]:
        return self._txn

    @property
    def db(self) -> _Database:
        return self._db
