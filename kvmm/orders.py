"""Key and value orders other than byte order: LMDB's ``reverse_key``, ``integerkey``,
``integerdup`` and ``dupfixed`` databases.

A tree keeps its keys in byte order (a ``bisect`` on bytes at every level). A database
with another order keeps each key, and in a dupsort database each value, in a *stored
form* whose byte order is the database's order. The form is made where a key or value
comes in through the API and undone wherever one goes out (``get``, a cursor's
``key``/``value``/``item``, iteration, ``kvmm dump``):

- ``reverse_key`` (LMDB's ``mdb_cmp_memnr``: bytes compared from the last one, a key
  that ends the other first): the bytes reversed.
- ``integerkey`` keys and ``integerdup`` values (native unsigned integers of 4 or 8
  bytes, compared as numbers): big-endian, which on a little-endian host is the bytes
  reversed and on a big-endian one the bytes as they are. LMDB requires one width per
  database; a database mixing widths sorts by the big-endian bytes (LMDB leaves that
  order undefined). Other widths are refused (``BadValsizeError``).
- ``dupfixed``: values kept as they are; the values of one key all have one size,
  which ``put`` checks (``BadValsizeError``), as LMDB keeps them in fixed-size slots.

As in LMDB, ``reverse_key`` wins over ``integerkey`` (on a little-endian host they give
the same form), ``integerdup`` implies ``dupfixed``, and ``dupfixed`` implies ``dupsort``.
The flags live in the database's record (``format.DB_*``, LMDB's values), so they
survive reopening, ``kvmm dump``/``restore`` and compacting copies.

Default databases never come here: ``Transaction.get``/``put``/``delete`` test the
record's flags once (the test that sends dupsort databases to :mod:`kvmm.dupsort`), and
only a database with flags takes these paths.
"""

from __future__ import annotations

import sys

from .cursor import Cursor
from .errors import BadValsizeError
from .format import (
    DB_DUPFIXED,
    DB_DUPSORT,
    DB_FLAGS,
    DB_INTEGERDUP,
    DB_INTEGERKEY,
    DB_REVERSEKEY,
)

#: Widths of an integer key or value: C's unsigned int and size_t.
INT_SIZES = (4, 8)
_LITTLE = sys.byteorder == "little"
#: Flags whose stored keys are the user's bytes reversed.
FLIP_KEY = DB_REVERSEKEY | (DB_INTEGERKEY if _LITTLE else 0)
#: Flags whose stored (dupsort) values are the user's bytes reversed.
FLIP_VALUE = DB_INTEGERDUP if _LITTLE else 0

#: Flags under which keys are not in byte order.
KEY_ORDERS = DB_REVERSEKEY | DB_INTEGERKEY
#: Flags that give keys or (dupsort) values a stored form, or widths to check.
STORED_FORM = DB_REVERSEKEY | DB_INTEGERKEY | DB_INTEGERDUP

#: py-lmdb's names of the flags (``_Database.flags()``, ``open_db``'s arguments).
FLAG_NAMES = (
    ("reverse_key", DB_REVERSEKEY),
    ("dupsort", DB_DUPSORT),
    ("integerkey", DB_INTEGERKEY),
    ("integerdup", DB_INTEGERDUP),
    ("dupfixed", DB_DUPFIXED),
)


def db_flags(reverse_key=False, dupsort=False, integerkey=False, integerdup=False,
             dupfixed=False) -> int:
    """The record flags of a new database opened with these arguments (py-lmdb's
    implications: integerdup makes it dupfixed, dupfixed makes it dupsort)."""
    dupfixed = dupfixed or integerdup
    dupsort = dupsort or dupfixed
    flags = 0
    for (_, bit), on in zip(FLAG_NAMES, (reverse_key, dupsort, integerkey, integerdup,
                                        dupfixed)):
        if on:
            flags |= bit
    return flags


def flag_dict(flags: int) -> dict:
    """py-lmdb's ``_Database.flags()``: each ``open_db`` argument and its state."""
    return {name: bool(flags & bit) for name, bit in FLAG_NAMES}


def _stored(data: bytes, integer: int, flip: int, what: str) -> bytes:
    if integer and len(data) not in INT_SIZES:
        raise BadValsizeError(f"{what} of {len(data)} bytes: integers are 4 or 8 bytes")
    return data[::-1] if flip else data


def key_in(flags: int, key: bytes) -> bytes:
    """The stored form of a (validated) key. O(len)."""
    return _stored(key, flags & DB_INTEGERKEY, flags & FLIP_KEY, "integerkey key")


def key_out(flags: int, stored: bytes) -> bytes:
    """The key a stored form stands for. O(len)."""
    return stored[::-1] if flags & FLIP_KEY else stored


def value_in(flags: int, value: bytes) -> bytes:
    """The stored form of a (validated) dupsort value. O(len)."""
    return _stored(value, flags & DB_INTEGERDUP, flags & FLIP_VALUE, "integerdup value")


def value_out(flags: int, stored: bytes) -> bytes:
    """The dupsort value a stored form stands for. O(len)."""
    return stored[::-1] if flags & FLIP_VALUE else stored


def entry_problem(flags: int, key: bytes, value: bytes | None) -> str | None:
    """What is wrong with a stored key (and, in a dupsort database, its value) for a
    database with ``flags``, or None (used by ``kvmm check``)."""
    if flags & DB_INTEGERKEY and len(key) not in INT_SIZES:
        return f"integerkey key of {len(key)} bytes"
    if value is not None and flags & DB_INTEGERDUP and len(value) not in INT_SIZES:
        return f"integerdup value of {len(value)} bytes"
    return None


def flags_problem(flags: int) -> str | None:
    """What is wrong with a database record's flags, or None."""
    if flags & ~DB_FLAGS:
        return f"unknown flags {flags:#x}"
    if flags & (DB_DUPFIXED | DB_INTEGERDUP) and not flags & DB_DUPSORT:
        return f"flags {flags:#x}: dupfixed or integerdup without dupsort"
    return None


def seek_stored_key(cursor, key):
    """``Cursor._seek_key`` of a cursor on a database with stored keys: the stored
    form of ``key`` for a seek, or None (unpositioned) for one that cannot be in the
    database (too long, or an integer key of another width)."""
    key = Cursor._seek_key(cursor, key)
    if key is None:
        return None
    try:
        return key_in(cursor._db._flags, key)
    except BadValsizeError:
        cursor._positioned = False
        return None


class OrderedCursor(Cursor):
    """A cursor on a database without duplicates whose keys have a stored form
    (``reverse_key``, ``integerkey``): keys are turned into it on the way in and back
    on the way out; moves work on the stored forms, whose byte order is the
    database's order."""

    __slots__ = ()

    _seek_key = seek_stored_key

    def set_range(self, key) -> bool:
        if not key:
            return self.first()
        key = self._seek_key(key)
        if key is None:  # no key of this database sorts there: unpositioned
            self._sync()  # the path up to date, so that nothing positions it again
            self._positioned = False
            return False
        return self._seek(key)

    def _user_key(self, stored):
        return key_out(self._db._flags, bytes(stored))

    def _out(self, stored):
        key = key_out(self._db._flags, bytes(stored))
        return memoryview(key) if self._txn._buffers else key

    def key(self):
        key = Cursor.key(self)
        return self._out(key) if key else key

    def item(self) -> tuple:
        key, value = Cursor.item(self)
        return (self._out(key) if key else key), value

    def iternext(self, keys=True, values=True):
        return self._keys_out(Cursor.iternext(self, keys, values), keys, values)

    def iterprev(self, keys=True, values=True):
        return self._keys_out(Cursor.iterprev(self, keys, values), keys, values)

    __iter__ = iternext

    def _keys_out(self, entries, keys: bool, values: bool):
        if not keys:
            yield from entries
            return
        out = self._out
        if values:
            for key, value in entries:
                yield out(key), value
        else:
            for key in entries:
                yield out(key)
