"""Sorted duplicates (``dupsort=True``): a key holding a sorted set of values.

A dupsort database is a B+tree like any other, whose tree keys are *pairs*: the key,
escaped so that it sorts as itself and ends unambiguously, followed by the value; the
tree's stored values are empty. Sorting pairs sorts by key, then by value — LMDB's
order — and every operation on a key with a million values is a B+tree operation,
O(log n), with no special pages. (LMDB nests a sub-tree per key instead; this design
repeats the key per value, which costs space for long keys, and buys one code path.)

Pair encoding (declared here, and checked by ``kvmm.check``)::

    pair = key with every 0x00 written as 0x00 0xFF, then 0x00 0x00, then the value

Every pair of ``key`` lies in ``[floor(key), ceiling(key))`` where ``floor`` is the
escaped key and its terminator and ``ceiling`` the escaped key then 0x00 0x01: an
escaped key never holds 0x00 0x00, and a longer key with the same prefix continues
with 0x00 0xFF or a byte above 0x00.

Values are 1 to MAX_KEY_SIZE bytes, as in LMDB, where they are the keys of the
nested tree.
"""

from __future__ import annotations

from .btree import descend, insert, remove_range
from .cursor import Cursor, _key_bytes, _lookup_key, as_bytes, path_next, path_prev
from .errors import BadValsizeError, CorruptedError, IncompatibleError
from .format import DB_DUPFIXED, MAX_KEY_SIZE
from .orders import key_in, key_out, seek_stored_key, value_in, value_out

TERMINATOR = b"\x00\x00"
_ESCAPED_NUL = b"\x00\xff"
_AFTER = b"\x00\x01"


def floor(key: bytes) -> bytes:
    """The smallest pair of ``key`` (its escaped key and terminator)."""
    return key.replace(b"\x00", _ESCAPED_NUL) + TERMINATOR


def ceiling(key: bytes) -> bytes:
    """A tree key above every pair of ``key`` and below every pair of the next key."""
    return key.replace(b"\x00", _ESCAPED_NUL) + _AFTER


def pair(key: bytes, value: bytes) -> bytes:
    return key.replace(b"\x00", _ESCAPED_NUL) + TERMINATOR + value


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(key, value) of a pair; CorruptedError for bytes that are not one."""
    t = raw.find(TERMINATOR)
    if t <= 0:
        raise CorruptedError("dupsort entry without a key terminator")
    return raw[:t].replace(_ESCAPED_NUL, b"\x00"), raw[t + 2 :]


def check_pair(raw: bytes) -> str | None:
    """What is wrong with a stored pair, or None."""
    t = raw.find(TERMINATOR)
    if t <= 0:
        return "dupsort entry without a key terminator"
    escaped = raw[:t]
    if escaped.replace(_ESCAPED_NUL, b"").find(b"\x00") >= 0:
        return "dupsort entry with a badly escaped key"
    key = escaped.replace(_ESCAPED_NUL, b"\x00")
    if len(key) > MAX_KEY_SIZE or len(raw) - t - 2 > MAX_KEY_SIZE:
        return "dupsort entry with a key or value too long"
    return None


def _value_bytes(value) -> bytes:
    value = as_bytes(value, "values")
    if not value or len(value) > MAX_KEY_SIZE:
        raise BadValsizeError(
            f"value of {len(value)} bytes: dupsort values are 1 to {MAX_KEY_SIZE} bytes")
    return value


def _first_at(txn, state, raw: bytes):
    """The path to the first entry >= ``raw``, and that entry; (None, None) past the
    end."""
    path = descend(txn.load, state, raw)
    if path is None:
        return None, None
    leaf, i = path[-1]
    if i >= len(leaf.keys):
        if not path_next(txn.load, path):
            return None, None
        leaf, i = path[-1]
    return path, leaf.keys[i]


def _sibling(path, low: bytes) -> bytes | None:
    """A pair of the key whose pairs start with ``low``, found beside the place of one
    of its pairs (``path``, from a descent to it); b"" when the key has no pairs;
    None when this leaf cannot tell (the place is at either end of the leaf).

    The pairs of a key are the entries from ``low`` up to any pair of it, and no
    entry between two of them belongs to another key; so the neighbours of the
    place inside one leaf say whether the key has pairs, and a put needs one
    descent, not two."""
    if path is None:
        return b""
    leaf, i = path[-1]
    keys = leaf.keys
    if i < len(keys) and keys[i].startswith(low):
        return keys[i]
    if i > 0:
        if keys[i - 1].startswith(low):
            return keys[i - 1]
        if i < len(keys):
            return b""
    return None


# --- transaction operations -----------------------------------------------------------


def get(txn, state, key: bytes, default):
    """The first value of ``key``. O(log n)."""
    flags = state.flags
    low = floor(key_in(flags, key))
    _, raw = _first_at(txn, state, low)
    if raw is None or not raw.startswith(low):
        return default
    value = value_out(flags, raw[len(low) :])
    return memoryview(value) if txn._buffers else value


def put(txn, state, key, value, dupdata: bool, overwrite: bool, append: bool) -> bool:
    """Add ``value`` to the values of ``key``. False when ``overwrite`` is off and the
    key has values, when ``dupdata`` is off and the pair exists, or when ``append`` is
    on and the pair does not sort last. O(log n)."""
    flags = state.flags
    key = key_in(flags, _key_bytes(key))
    value = value_in(flags, _value_bytes(value))
    low = floor(key)
    raw = low + value
    path = descend(txn.load, state, raw)
    sibling = _sibling(path, low)
    if sibling is None:  # the leaf cannot tell: look from ``low``
        _, sibling = _first_at(txn, state, low)
        if sibling is not None and not sibling.startswith(low):
            sibling = None
    if sibling:
        if not overwrite:
            return False
        if flags & DB_DUPFIXED and len(sibling) - len(low) != len(value):
            raise BadValsizeError(
                f"value of {len(value)} bytes: the values of this key in a dupfixed "
                f"database are {len(sibling) - len(low)} bytes")
    if path is not None:
        leaf, i = path[-1]
        if i < len(leaf.keys) and leaf.keys[i] == raw:
            return bool(dupdata) and not append
        if append and (i < len(leaf.keys) or any(
                pi != len(p.keys) - 1 for p, pi in path[:-1])):
            return False
    txn._changing()
    txn._tail = None
    insert(txn, state, path, raw, b"", 0, append)
    return True


def delete(txn, state, key, value) -> bool:
    """Delete the pair (key, value), or every value of ``key`` when ``value`` is
    empty. O(log n) per leaf of values."""
    flags = state.flags
    key = _lookup_key(key)
    if key is None:
        return False  # too long to be stored: absent, as in py-lmdb
    key = key_in(flags, key)
    if value:
        value = as_bytes(value, "values")
        if len(value) > MAX_KEY_SIZE:
            return False
        raw = pair(key, value_in(flags, _value_bytes(value)))
        path = descend(txn.load, state, raw)
        if path is None:
            return False
        leaf, i = path[-1]
        if i >= len(leaf.keys) or leaf.keys[i] != raw:
            return False
        txn._changing()
        remove_range(txn, state, path, i + 1)
        return True
    return delete_all(txn, state, key)


def delete_all(txn, state, key: bytes) -> bool:
    """Delete every value of ``key``, a leaf's worth at a time."""
    low, high = floor(key), ceiling(key)
    found = False
    while True:
        path, raw = _first_at(txn, state, low)
        if raw is None or not raw.startswith(low):
            return found
        leaf, i = path[-1]
        end = i
        keys = leaf.keys
        while end < len(keys) and keys[end] < high:
            end += 1
        txn._changing()
        remove_range(txn, state, path, end)
        found = True


def pop(txn, db, key):
    cur = txn.cursor(db)
    try:
        return cur.pop(key)
    finally:
        cur.close()


def replace(txn, db, key, value):
    cur = txn.cursor(db)
    try:
        return cur.replace(key, value)
    finally:
        cur.close()


# --- cursor ---------------------------------------------------------------------------


class DupCursor(Cursor):
    """A cursor on a dupsort database: positioned on one (key, value) pair."""

    __slots__ = ()

    def _raw(self) -> bytes:
        leaf, i = self._path[-1]
        return leaf.keys[i]

    def _view(self, b: bytes):
        return memoryview(b) if self._txn._buffers else b

    #: (key, value) as the user knows them, of a stored pair (see OrderedDupCursor).
    _pair_out = staticmethod(split)
    #: A (validated) value's stored form.
    _value_in = staticmethod(_value_bytes)

    def key(self):
        if not self._sync():
            return self._nothing()
        return self._view(self._pair_out(self._raw())[0])

    def value(self):
        if not self._sync():
            return self._nothing()
        return self._view(self._pair_out(self._raw())[1])

    def item(self) -> tuple:
        if not self._sync():
            return self._nothing(), self._nothing()
        k, v = self._pair_out(self._raw())
        return self._view(k), self._view(v)

    # --- positioning ----------------------------------------------------------------

    def set_key(self, key) -> bool:
        """Move to the first value of ``key``; False when absent."""
        key = self._seek_key(key)
        if key is None:
            return False
        low = floor(key)
        ok = self._seek(low) and self._raw().startswith(low)
        self._positioned = ok
        return ok

    def set_range(self, key) -> bool:
        """Move to the first value of the first key >= ``key`` (of any length, as in
        Cursor.set_range)."""
        if not key:
            return self.first()
        return self._seek(floor(as_bytes(key, "keys")))

    def _seek_pair(self, key, value, exact: bool):
        """pair(key, value) for a seek, or None when the seek finds nothing: a key
        too long to be stored, or for an ``exact`` seek such a value (a range seek
        compares a long value as any other). An empty key or value raises
        BadValsizeError, as in py-lmdb."""
        key = self._seek_key(key)
        if (value.__class__ is bytes and value and len(value) <= MAX_KEY_SIZE
                and key is not None and self._value_in is _value_bytes):
            return pair(key, value)  # a plain value of a plain database, as below
        value = as_bytes(value, "values")
        if not value:
            self._positioned = False
            raise BadValsizeError(f"value of 0 bytes: dupsort values are 1 to {MAX_KEY_SIZE} "
                                  "bytes")
        if len(value) <= MAX_KEY_SIZE:
            try:
                value = self._value_in(value)
            except BadValsizeError:
                key = None  # a value this database cannot hold: no pair has it
        if key is None or exact and len(value) > MAX_KEY_SIZE:
            self._positioned = False
            return None
        return pair(key, value)

    def set_key_dup(self, key, value) -> bool:
        """Move to the pair (key, value) exactly."""
        raw = self._seek_pair(key, value, True)
        ok = raw is not None and self._seek(raw) and self._raw() == raw
        self._positioned = ok
        return ok

    def set_range_dup(self, key, value) -> bool:
        """Move to the first value >= ``value`` of ``key``; False when none."""
        raw = self._seek_pair(key, value, False)
        ok = raw is not None and self._seek(raw) and self._raw().startswith(
            floor(split(raw)[0]))
        self._positioned = ok
        return ok

    def first_dup(self) -> bool:
        """Move to the first value of the current key. InvalidParameterError when the
        cursor was never positioned, as LMDB's."""
        key = self._anchor()
        self._require_path("first_dup")
        return key is not None and self._seek(floor(key))

    def last_dup(self) -> bool:
        """Move to the last value of the current key. InvalidParameterError when the
        cursor was never positioned, as LMDB's."""
        key = self._anchor()
        self._require_path("last_dup")
        if key is None:
            return False
        if self._seek(ceiling(key)):
            return self.prev()
        return self.last()

    def _step_within(self, forward: bool) -> bool:
        """next/prev, but only to a value of the same key; else stay, unpositioned."""
        key = self._anchor()
        if key is None:
            return False
        saved = [step[:] for step in self._path]
        low = floor(key)
        if (self.next() if forward else self.prev()) and self._raw().startswith(low):
            return True
        self._restore(saved)
        return False

    def _restore(self, saved: list) -> None:
        """Put the cursor back where a failed move found it, unpositioned (LMDB's
        cursor does not move when a dup move fails)."""
        self._path = saved
        self._fast = None
        leaf, i = saved[-1]
        self._key = leaf.keys[i] if i < len(leaf.keys) else self._key
        self._positioned = False
        self._eof = False

    def next_dup(self) -> bool:
        """Move to the next value of the current key; False after its last. A cursor
        never positioned moves to the first pair, as LMDB's."""
        if self._path is None:
            return self.next()
        return self._step_within(True)

    def prev_dup(self) -> bool:
        """Move to the previous value of the current key; False before its first. A
        cursor never positioned moves to the last pair, as LMDB's."""
        if self._path is None:
            return self.prev()
        return self._step_within(False)

    def _anchor(self):
        """The key of the pair the cursor's path points at, positioned or not (after
        a miss LMDB's cursor still stands at the insertion point); None when the
        path points past the end. After the tree changed under a positioned cursor,
        the key of the pair it stood on, whether or not that pair is still there:
        moves by key go on from where the cursor was."""
        txn = self._check()
        stood = self._key if self._positioned and self._gen != txn._gen else None
        if not self._sync() and self._path is None:
            return None
        if stood is not None:
            return split(stood)[0]
        leaf, i = self._path[-1]
        return split(leaf.keys[i])[0] if 0 <= i < len(leaf.keys) else None

    def next_nodup(self) -> bool:
        """Move to the first value of the next key."""
        if self._path is None:
            return self.first()
        key = self._anchor()
        if key is None:
            return False
        saved = [step[:] for step in self._path]
        if self._seek(ceiling(key)):
            return True
        self._restore(saved)
        return False

    def prev_nodup(self) -> bool:
        """Move to the last value of the previous key."""
        if self._path is None:
            return self.last()
        key = self._anchor()
        if key is None:
            return self.last()
        saved = [step[:] for step in self._path]
        self._seek(floor(key))
        if self.prev():
            return True
        self._restore(saved)
        return False

    def count(self) -> int:
        """How many values the current key has. O(log n + values / leaf).
        InvalidParameterError when the cursor was never positioned, as LMDB's."""
        self._sync()  # the key counted is the one key() returns
        key = self._anchor()
        self._require_path("count")
        if key is None:
            return 0
        txn = self._txn
        path, _ = _first_at(txn, self._state, floor(key))
        high = ceiling(key)
        n = 0
        while True:
            leaf, i = path[-1]
            keys = leaf.keys
            j = i
            while j < len(keys) and keys[j] < high:
                j += 1
            n += j - i
            if j < len(keys):
                return n
            path[-1][1] = len(keys) - 1
            if not path_next(txn.load, path):
                return n

    def get(self, key, default=None):
        if self.set_key(key):
            return self.value()
        return default

    def _multi(self, dupdata: bool, dupfixed_bytes) -> list:
        """getmulti's pairs of the key the cursor stands on: its first value, or with
        ``dupdata`` all of them, in pieces of ``dupfixed_bytes`` when given."""
        if not dupdata:
            return [self.item()]
        found = list(self.iternext_dup(keys=True, values=True))
        if not dupfixed_bytes:
            return found
        if not self._db._flags & DB_DUPFIXED:
            raise IncompatibleError("getmulti(dupfixed_bytes=...) needs a dupfixed database")
        key = found[0][0]
        blob = b"".join(bytes(v) for _, v in found)
        n = dupfixed_bytes
        return [(key, self._view(blob[i : i + n])) for i in range(0, len(blob), n)]

    # --- iteration ------------------------------------------------------------------

    def _decoded(self, raws, keys: bool, values: bool):
        view = self._view
        pair_out = self._pair_out
        for raw in raws:
            k, v = pair_out(raw)
            if keys and values:
                yield view(k), view(v)
            else:
                yield view(k) if keys else view(v)

    def iternext(self, keys=True, values=True):
        if not self._sync() and not self.first():
            return iter(())  # an empty database
        if self._txn.write:
            return self._iter_moves(self.next, keys, values)
        return self._decoded(self._walk(True, False, True, stored=True), keys, values)

    def iterprev(self, keys=True, values=True):
        if not self._sync() and not self.last():
            return iter(())
        if self._txn.write:
            return self._iter_moves(self.prev, keys, values)
        return self._decoded(self._walk(True, False, False, stored=True), keys, values)

    __iter__ = iternext

    def _iter_moves(self, move, keys: bool, values: bool):
        while self._sync():
            k, v = self._pair_out(self._raw())
            if keys and values:
                yield self._view(k), self._view(v)
            else:
                yield self._view(k) if keys else self._view(v)
            if not move():
                return

    def iternext_dup(self, keys=False, values=True):
        """The current key's values from the current one on."""
        if self._txn is not None and not self._txn.write and self._sync():
            return self._walk_dups(keys, values)
        return self._iter_moves(self.next_dup, keys, values)

    def _walk_dups(self, keys: bool, values: bool):
        """iternext_dup of a read transaction: the leaves walked directly; the cursor
        ends on the key's last value, unpositioned, as a failed next_dup leaves it."""
        raw = self._raw()
        t = raw.find(TERMINATOR) + 2
        low = raw[:t]
        key = self._view(split(raw)[0])
        view = self._view
        for raw in self._walk(True, False, True, stored=True):
            if not raw.startswith(low):
                path_prev(self._txn.load, self._path)
                self._settle(True)
                self._positioned = False
                return
            if keys and values:
                yield key, view(raw[t:])
            else:
                yield key if keys else view(raw[t:])
        self._positioned = False

    def iterprev_dup(self, keys=False, values=True):
        return self._iter_moves(self.prev_dup, keys, values)

    def iternext_nodup(self, keys=True, values=False):
        """Each key once (with its first value), from the current one on."""
        if not self._sync():
            self.first()
        return self._iter_moves(self.next_nodup, keys, values)

    def iterprev_nodup(self, keys=True, values=False):
        """Each key once (with its last value), from the current one back."""
        if not self._sync():
            self.last()
        return self._iter_moves(self.prev_nodup, keys, values)

    # --- writing --------------------------------------------------------------------

    def put(self, key, value, dupdata=True, overwrite=True, append=False) -> bool:
        txn = self._check()
        ok = txn.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append,
                     db=self._db)
        if not self.set_key_dup(key, value):
            self.set_key(key)
        return ok

    def delete(self, dupdata=False) -> bool:
        """Delete the current pair (every value of its key with ``dupdata``) and move
        to the pair that followed."""
        txn = self._check()
        self._resync()
        if not self._positioned:
            return False
        raw = self._raw()
        if dupdata:
            key = split(raw)[0]
            delete_all(txn, self._state, key)
            raw = ceiling(key)
        else:
            txn._changing()
            remove_range(txn, self._state, self._path, self._path[-1][1] + 1)
        if not self._seek(raw):
            self._positioned = False
        return True

    def replace(self, key, value):
        """Replace every value of ``key`` by ``value``; return the first old one."""
        old = None
        if self.set_key(key):
            old = bytes(self.value())
            self.delete(dupdata=True)
        self.put(key, value)
        return old

    def pop(self, key):
        """Delete the first value of ``key`` and return it; None when absent."""
        if not self.set_key(key):
            return None
        old = bytes(self.value())
        self.delete()
        return old


class OrderedDupCursor(DupCursor):
    """A cursor on a dupsort database whose keys or values have a stored form
    (``reverse_key``, ``integerkey``, ``integerdup``; see :mod:`kvmm.orders`): they
    are turned into it on the way in and back on the way out."""

    __slots__ = ()

    def _pair_out(self, raw: bytes) -> tuple:
        key, value = split(raw)
        flags = self._db._flags
        return key_out(flags, key), value_out(flags, value)

    def _value_in(self, value) -> bytes:
        return value_in(self._db._flags, _value_bytes(value))

    _seek_key = seek_stored_key

    def set_range(self, key) -> bool:
        """Move to the first value of the first key >= ``key`` in the database's
        order (a key its order cannot hold: False)."""
        if not key:
            return self.first()
        key = self._seek_key(key)
        return False if key is None else self._seek(floor(key))

    def iternext_dup(self, keys=False, values=True):
        # Through the moves, which give the user's form (the leaf walk gives the stored).
        return self._iter_moves(self.next_dup, keys, values)
