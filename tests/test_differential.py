"""kvmm and py-lmdb driven side by side: every answer must be the same.

A hypothesis state machine applies one random sequence of operations to a kvmm
environment (the *subject*) and to a py-lmdb environment (the *reference*), and asserts
that each call returns the same value or raises an exception of the same class name,
and that both hold the same contents after every commit, abort and reopen.

The databases cover LMDB's orders: plain ones, a ``reverse_key`` one, an ``integerkey``
one (8-byte keys), and two dupsort ones with fixed-size values: ``dupfixed`` with
``reverse_key``, and ``integerdup`` (8-byte values) with ``integerkey`` (4-byte keys).
Nested write transactions come and go (up to three deep): calls go to the innermost
one, a child's commit keeps its changes and its abort drops them, the parent refuses
use meanwhile, and the top transaction's commit or abort ends its open children.

A third party, a plain-Python model (dicts, plus where each cursor stands), states what
the answer should be. py-lmdb is checked against the model first, so a disagreement
there is a bug in this test, not in kvmm. The model also tells the machine which
cursor answers py-lmdb defines and which it must not compare (see ``CursorModel``).

Environment variables:
    KVMM_DIFF_EXAMPLES  number of examples (default 300)
    KVMM_DIFF_STEPS     steps per example (default 40)
    KVMM_DIFF_SUBJECT   ``kvmm`` (default) or ``lmdb``: run py-lmdb against itself, to
                        check the machine and its model without kvmm
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import lmdb
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

EXAMPLES = int(os.environ.get("KVMM_DIFF_EXAMPLES", "300"))
STEPS = int(os.environ.get("KVMM_DIFF_STEPS", "40"))
SUBJECT = os.environ.get("KVMM_DIFF_SUBJECT", "kvmm")

LMDB_MAP_SIZE = 256 * 1024 * 1024
MAX_DBS = 8

#: The named databases and their open_db flags; each is also a record of the main
#: database (index 0).
NAMED_DBS = (
    (b"a", {}),
    (b"b", {}),
    (b"r", {"reverse_key": True}),
    (b"i", {"integerkey": True}),
    (b"f", {"dupfixed": True, "reverse_key": True}),
    (b"n", {"integerdup": True, "integerkey": True}),
)
NAMES = tuple(name for name, _ in NAMED_DBS)
#: Databases without duplicates (the main one first), and dupsort ones.
DB_INDEXES = (0, 1, 2, 3, 4)
DUP_INDEXES = (5, 6)
ALL_INDEXES = DB_INDEXES + DUP_INDEXES
REVERSE_KEY = (3, 5)
#: Integer keys' widths, and integer values' (native byte order, as LMDB's).
INT_KEY_WIDTH = {4: 8, 6: 4}
INT_VALUE_WIDTH = {6: 8}
#: The dupfixed databases' value sizes.
VALUE_SIZE = {5: 2, 6: 8}
MAX_CHILDREN = 3

#: Stands for the value of a named database's record in the main database: LMDB and
#: kvmm store different bytes there, so such values are compared by presence only.
DB_RECORD = b"<named database record>"

#: Keys that are empty or longer than 511 bytes are refused by both stores.
TOO_LONG_KEY = b"k" * 512

#: Put in place of an answer that is not compared.
NOT_COMPARED = "<not compared>"


def _open_lmdb(path: str):
    return lmdb.open(path, map_size=LMDB_MAP_SIZE, max_dbs=MAX_DBS)


def _open_subject(path: str):
    if SUBJECT == "lmdb":
        return _open_lmdb(path)
    import kvmm

    return kvmm.open(path, max_dbs=MAX_DBS)


# -- strategies -------------------------------------------------------------------------

#: Short keys over five bytes, so that the same key comes up again and again.
short_keys = st.lists(st.sampled_from(b"\x00\x01ab\xff"), min_size=1, max_size=8).map(bytes)
#: Long keys (up to the 511-byte limit), built from short ones so they collide too.
long_keys = st.builds(
    lambda k, n: (k * (511 // len(k) + 1))[:n], short_keys, st.sampled_from([64, 300, 511])
)
keys = st.one_of(short_keys, short_keys, short_keys, long_keys)
#: Keys too long to be stored (512 and 600 bytes), built from short ones so that they
#: fall between stored keys.
too_long_keys = st.builds(
    lambda k, n: (k * (n // len(k) + 1))[:n], short_keys, st.sampled_from([512, 600])
)


def _filled(n: int, byte: int) -> bytes:
    return bytes([byte]) * n


values = st.one_of(
    st.just(b""),
    st.binary(max_size=16),
    st.builds(_filled, st.integers(100, 1500), st.integers(0, 255)),
    # Larger than a page: these live on overflow pages.
    st.builds(_filled, st.integers(3000, 20000), st.integers(0, 255)),
)
dbs = st.sampled_from(DB_INDEXES)
dup_dbs = st.sampled_from(DUP_INDEXES)
batches = st.lists(st.tuples(keys, values), max_size=5)
#: Every 4-byte key over the short keys' alphabet, in order: material for bulk loads.
BULK_KEYS = [bytes(k) for k in itertools.product(b"\x00\x01ab\xff", repeat=4)]


# -- the model --------------------------------------------------------------------------

FRESH = "fresh"  # never positioned: next() acts as first(), prev() as last()
AT = "at"  # positioned on `key`
UNPOS = "unpositioned"  # a positioning call failed
UNKNOWN = "unknown"  # py-lmdb does not define where the cursor stands

#: An expectation the model cannot state.
NO_EXPECTATION = object()


@dataclass
class CursorModel:
    """Where a cursor stands, as far as py-lmdb defines it.

    py-lmdb leaves the cursor somewhere undocumented in the cases below; the machine
    then marks it UNKNOWN and compares none of its answers (only whether a call raised)
    until a move that places it again (first, last, set_key, set_range, get, a put).
    UNKNOWN cursors are never used to delete, since the two stores may stand on
    different records.

    - The record under the cursor was deleted through the transaction (delete, pop):
      LMDB leaves the cursor on the successor, but ``next()`` then returns that same
      successor unless ``key()`` was called in between, in which case it moves past it.
    - ``next()``/``prev()`` on an unpositioned cursor: LMDB moves from a hidden
      position (after ``last(); next()`` fails, ``prev()`` gives the second-to-last
      record; after a missed ``set_key(k)``, ``next()`` skips the record after ``k``).
      ``iternext()``/``iterprev()`` there are defined (from the first/last record).
    - ``key()``/``value()``/``item()`` on an unpositioned cursor answer ``b""`` only
      while the cursor is ``clean``: when the transaction was written to since the
      cursor's last move, py-lmdb re-reads LMDB's hidden position (its
      ``last_mutation`` check) and the cursor becomes positioned there.
    - A put that was refused (``overwrite=False`` on an existing key, ``append=True``
      out of order), a database emptied by ``drop(db, delete=False)``, and any cursor
      call that raised.
    - ``next()`` from the record where ``last()`` (or ``prev()`` on a fresh cursor, or
      a put with ``append=True``) left the cursor, once records were added after it:
      LMDB's end-of-data flag (C_EOF) then makes ``next()`` fail when the new records
      went to another page, and succeed when they went to the same one. ``eof`` tracks
      that flag.
    """

    state: str = FRESH
    key: bytes | None = None
    clean: bool = True
    eof: bool = False

    def place(self, key: bytes | None, eof: bool = False) -> None:
        """Stand on `key`, or unpositioned when it is None."""
        if key is None:
            self.state, self.key = UNPOS, None
        else:
            self.state, self.key = AT, key
        self.eof = eof

    def lose(self) -> None:
        self.state, self.key, self.eof = UNKNOWN, None, False

    @property
    def known(self) -> bool:
        return self.state != UNKNOWN


def _plain(x):
    """`x` with every buffer turned into bytes, so answers compare by value."""
    if isinstance(x, (memoryview, bytearray)):
        return bytes(x)
    if isinstance(x, tuple):
        return tuple(_plain(i) for i in x)
    if isinstance(x, list):
        return [_plain(i) for i in x]
    return x


def _outcome(fn, side):
    """('ok', answer) or ('err', exception class name) of fn(side)."""
    try:
        return ("ok", _plain(fn(side)))
    except Exception as exc:  # noqa: BLE001 - the class name is what is compared
        return ("err", type(exc).__name__)


def key_order(d: int):
    """The sort key of database `d`'s order (LMDB's), over keys."""
    if d in REVERSE_KEY:
        return lambda k: k[::-1]
    if d in INT_KEY_WIDTH:
        return lambda k: int.from_bytes(k, sys.byteorder)
    return lambda k: k


def value_order(d: int):
    """The sort key of dupsort database `d`'s order over the values of a key."""
    if d in INT_VALUE_WIDTH:
        return lambda v: int.from_bytes(v, sys.byteorder)
    return lambda v: v


class Side:
    """One store under test: its environment, database handles, write transactions
    (the top one and its open children, innermost last) and the innermost's cursors."""

    def __init__(self, opener, path: str):
        self.opener = opener
        self.path = path
        self.env = None
        self.txns: list = []
        self.cursors: list = []
        #: The cursors of each parent of an open child.
        self.parent_cursors: list = []
        self.open()

    @property
    def txn(self):
        """The innermost open write transaction: where calls go."""
        return self.txns[-1]

    def open(self) -> None:
        self.env = self.opener(self.path)
        # Handles are opened before any write transaction: open_db() begins its own.
        self.handles = [self.env.open_db()] + [
            self.env.open_db(name, **flags) for name, flags in NAMED_DBS
        ]

    def close(self) -> None:
        self.env.close()
        self.env = None

    def db(self, d: int):
        """The `db=` argument for database `d`: None for the main database."""
        return None if d == 0 else self.handles[d]

    def begin(self, buffers: bool = False) -> None:
        self.txns = [self.env.begin(write=True, buffers=buffers)]
        self.parent_cursors = []
        self.cursors = [self.txn.cursor(db=self.db(d)) for d in DB_INDEXES]

    def begin_child(self, buffers: bool) -> None:
        self.txns.append(self.env.begin(write=True, parent=self.txn, buffers=buffers))
        self.parent_cursors.append(self.cursors)
        self.cursors = [self.txn.cursor(db=self.db(d)) for d in DB_INDEXES]

    def end_child(self, how: str) -> None:
        getattr(self.txns.pop(), how)()
        self.cursors = self.parent_cursors.pop()

    def contents(self, d: int, txn) -> list:
        return [
            (bytes(k), DB_RECORD if d == 0 and bytes(k) in NAMES else bytes(v))
            for k, v in txn.cursor(db=self.db(d)).iternext()
        ]


class DifferentialMachine(RuleBasedStateMachine):
    """kvmm (subject) and py-lmdb (reference) given the same calls, with a model."""

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="kvmm-diff-")
        self.ref = Side(_open_lmdb, os.path.join(self.tmp, "reference"))
        self.sub = Side(_open_subject, os.path.join(self.tmp, "subject"))
        # Per database: key -> value, or in a dupsort one key -> frozenset of values.
        self.model: list[dict] = [dict.fromkeys(NAMES, DB_RECORD)] + [{} for _ in NAMES]
        self.committed = [dict(m) for m in self.model]
        #: Read transactions kept open across commits: (py-lmdb's, kvmm's, snapshot).
        self.readers: list[tuple] = []
        self.begin()

    # -- plumbing -----------------------------------------------------------------------

    def begin(self, buffers: bool = False) -> None:
        self.ref.begin(buffers)
        self.sub.begin(buffers)
        self.cursor_models = [CursorModel() for _ in DB_INDEXES]
        #: Per open child: the model and the cursor models at its begin.
        self.saved: list[tuple] = []

    def check(self, what: str, fn, expected=NO_EXPECTATION, compare: bool = True):
        """Run fn on both sides; compare their outcomes, and py-lmdb's with the model.

        With compare=False only the outcome's kind (answer or exception class) counts.
        """
        ref = _outcome(fn, self.ref)
        sub = _outcome(fn, self.sub)
        if expected is not NO_EXPECTATION:
            assert ref == expected, (
                f"{what}: the test's model expected {expected!r} but py-lmdb gave {ref!r}"
                " (a bug in this test, not in kvmm)"
            )
        if compare:
            assert sub == ref, f"{what}: kvmm gave {sub!r}, py-lmdb gave {ref!r}"
        else:
            assert sub[0] == ref[0] and (ref[0] == "ok" or sub == ref), (
                f"{what}: kvmm gave {sub!r}, py-lmdb gave {ref!r}"
            )
        return ref

    def fix_key(self, d: int, key: bytes) -> bytes:
        """`key`, moved off the named databases' records when `d` is the main database,
        and of the integer width of an integerkey database (unless empty)."""
        if d in INT_KEY_WIDTH and key:
            width = INT_KEY_WIDTH[d]
            return (key * width)[:width]
        return key + b"\x00" if d == 0 and key in NAMES else key

    def fix_value(self, d: int, value: bytes) -> bytes:
        """`value` (not empty), of the size of dupfixed database `d`'s values."""
        size = VALUE_SIZE[d]
        return (value * size)[:size]

    def sorted_keys(self, d: int) -> list[bytes]:
        return sorted(self.model[d], key=key_order(d))

    def successor(self, d: int, key: bytes) -> bytes | None:
        order = key_order(d)
        return next((k for k in self.sorted_keys(d) if order(k) > order(key)), None)

    def items(self, d: int, data: dict) -> list:
        """The (key, value) records of database `d` holding `data`, in its order."""
        keys = sorted(data, key=key_order(d))
        if d in DUP_INDEXES:
            by_value = value_order(d)
            return [(k, v) for k in keys for v in sorted(data[k], key=by_value)]
        return [(k, data[k]) for k in keys]

    def mutated(self) -> None:
        """The transaction was written to: no cursor is clean any more."""
        for cm in self.cursor_models:
            cm.clean = False

    def deleted_through_txn(self, d: int, key: bytes) -> None:
        """A record was deleted through the transaction: a cursor on it is lost."""
        del self.model[d][key]
        cm = self.cursor_models[d]
        if cm.state == AT and cm.key == key:
            cm.lose()

    def model_put(self, d: int, key: bytes, value: bytes, overwrite: bool, append: bool):
        """put() in the model: True if written, False if refused."""
        data = self.model[d]
        order = key_order(d)
        if append and data and order(key) <= order(max(data, key=order)):
            return False
        if not overwrite and key in data:
            return False
        data[key] = value
        return True

    def verify_contents(self, txn_of) -> None:
        """Every database holds, on both sides, exactly the model's records."""
        for d in ALL_INDEXES:
            want = self.items(d, self.model[d])
            got_ref = self.ref.contents(d, txn_of(self.ref))
            got_sub = self.sub.contents(d, txn_of(self.sub))
            assert got_ref == want, f"db {d}: py-lmdb disagrees with the model (test bug)"
            assert got_sub == got_ref, f"db {d}: kvmm's contents differ from py-lmdb's"

    def verify_committed(self) -> None:
        """A read transaction on each side sees exactly the last commit."""
        reads = {id(side): side.env.begin() for side in (self.ref, self.sub)}
        try:
            self.verify_contents(lambda side: reads[id(side)])
        finally:
            for txn in reads.values():
                txn.abort()

    def teardown(self):
        # Clean-up only: an error here would hide the failure being reported.
        for ref_txn, sub_txn, _ in self.readers:
            for txn in (ref_txn, sub_txn):
                with contextlib.suppress(Exception):
                    txn.abort()
        for side in (self.ref, self.sub):
            with contextlib.suppress(Exception):
                side.txns[0].abort()
            with contextlib.suppress(Exception):
                side.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- transaction-level operations ---------------------------------------------------

    @rule(d=dbs, key=keys, value=values, overwrite=st.booleans(), append=st.booleans())
    def put(self, d, key, value, overwrite, append):
        key = self.fix_key(d, key)
        self.mutated()
        self.check(
            f"txn.put({key!r}, <{len(value)} bytes>, overwrite={overwrite}, append={append})",
            lambda s: s.txn.put(key, value, overwrite=overwrite, append=append, db=s.db(d)),
            ("ok", self.model_put(d, key, value, overwrite, append)),
        )

    @rule(d=dbs, key=keys)
    def get(self, d, key):
        key = self.fix_key(d, key)
        self.check(
            f"txn.get({key!r})",
            lambda s: s.txn.get(key, db=s.db(d)),
            ("ok", self.model[d].get(key)),
        )

    @rule(d=dbs, key=keys)
    def delete(self, d, key):
        key = self.fix_key(d, key)
        found = key in self.model[d]
        if found:
            self.deleted_through_txn(d, key)
        self.mutated()
        self.check(f"txn.delete({key!r})", lambda s: s.txn.delete(key, db=s.db(d)), ("ok", found))

    @rule(d=dbs, key=keys, value=values)
    def replace(self, d, key, value):
        key = self.fix_key(d, key)
        old = self.model[d].get(key)
        self.model[d][key] = value
        self.mutated()
        self.check(
            f"txn.replace({key!r}, <{len(value)} bytes>)",
            lambda s: s.txn.replace(key, value, db=s.db(d)),
            ("ok", old),
        )

    @rule(d=dbs, key=keys)
    def pop(self, d, key):
        key = self.fix_key(d, key)
        old = self.model[d].get(key)
        if old is not None:
            self.deleted_through_txn(d, key)
        self.mutated()
        self.check(f"txn.pop({key!r})", lambda s: s.txn.pop(key, db=s.db(d)), ("ok", old))

    @rule(
        d=dbs,
        key=st.sampled_from([b"", TOO_LONG_KEY]),
        value=values,
        call=st.sampled_from(["put", "replace", "cursor.put", "cursor.replace"]),
    )
    def write_with_invalid_key(self, d, key, value, call):
        """Empty and 512-byte keys are refused with BadValsizeError; nothing changes."""
        self.mutated()
        if call.startswith("cursor."):
            method = call.removeprefix("cursor.")
            self.cursor_models[d].lose()

            def fn(s):
                return getattr(s.cursors[d], method)(key, value)
        else:

            def fn(s):
                return getattr(s.txn, call)(key, value, db=s.db(d))

        self.check(f"{call}(<{len(key)}-byte key>)", fn, ("err", "BadValsizeError"))

    @rule(
        d=dbs,
        key=st.one_of(st.just(b""), too_long_keys),
        call=st.sampled_from(["get", "delete", "pop", "cursor.set_key", "cursor.get"]),
    )
    def read_with_invalid_key(self, d, key, call):
        """An empty key is refused by lookups too; a key too long to be stored is
        absent (None, or False), as py-lmdb answers, and changes nothing."""
        self.mutated()
        if call.startswith("cursor."):
            method = call.removeprefix("cursor.")
            self.cursor_models[d].lose()

            def fn(s):
                return getattr(s.cursors[d], method)(key)
        else:

            def fn(s):
                return getattr(s.txn, call)(key, db=s.db(d))

        absent = False if call in ("delete", "cursor.set_key") else None
        expected = ("ok", absent) if key else ("err", "BadValsizeError")
        self.check(f"{call}(<{len(key)}-byte key>)", fn, expected)

    @rule(name=st.sampled_from(NAMES), call=st.sampled_from(["get", "put", "put-no-overwrite"]))
    def touch_named_db_record(self, name, call):
        """A named database is a record of the main database, which a put may not
        overwrite (IncompatibleError). Deleting it is not tried: in LMDB that refusal
        also poisons the transaction."""
        if call == "get":
            self.check(
                f"main get({name!r}) is not None",
                lambda s: s.txn.get(name) is not None,
                ("ok", True),
            )
            return
        self.mutated()
        if call == "put":
            self.check(
                f"main put({name!r})",
                lambda s: s.txn.put(name, b"x"),
                ("err", "IncompatibleError"),
            )
        else:
            self.check(
                f"main put({name!r}, overwrite=False)",
                lambda s: s.txn.put(name, b"x", overwrite=False),
                ("ok", False),
            )

    @rule()
    def compare_contents(self):
        """Inside the write transaction, every database holds the model's records."""
        self.verify_contents(lambda side: side.txn)

    @rule(d=st.sampled_from(ALL_INDEXES))
    def stat_entries(self, d):
        self.check(
            f"txn.stat(db {d})['entries']",
            lambda s: s.txn.stat(s.handles[d])["entries"],
            ("ok", len(self.items(d, self.model[d]))),
        )

    @rule(
        d=dbs,
        start=st.integers(0, len(BULK_KEYS) - 1),
        count=st.sampled_from([1, 10, 30, 60, 120, 200]),
        step=st.sampled_from([1, 2, 7]),
        key_size=st.sampled_from([4, 4, 200, 480]),
        size=st.sampled_from([0, 12, 300, 1000, 5000]),
        fill=st.integers(0, 255),
    )
    def put_many(self, d, start, count, step, key_size, size, fill):
        """Many txn.put() calls in a row, so pages split under the positioned cursors.

        Long keys make branch pages hold few keys, so the tree grows to three levels.
        """
        value = _filled(size, fill)
        for key in BULK_KEYS[start::step][:count]:
            self.put(d, (key * 128)[:key_size], value, overwrite=True, append=False)

    @rule(
        d=dbs,
        start=st.integers(0, 50),
        count=st.sampled_from([1, 10, 50, 200]),
        step=st.sampled_from([1, 1, 2, 4]),
    )
    def delete_many(self, d, start, count, step):
        """Many txn.delete() calls in a row, so pages merge under the positioned cursors."""
        present = [k for k in self.sorted_keys(d) if not (d == 0 and k in NAMES)]
        for key in present[start::step][:count]:
            self.delete(d, key)

    @rule(d=st.sampled_from(ALL_INDEXES[1:]))
    def drop_records(self, d):
        """drop(db, delete=False) empties a named database and keeps it open."""
        self.model[d].clear()
        self.mutated()
        # py-lmdb leaves the cursors of an emptied database unpositioned somewhere.
        if d in DB_INDEXES:
            self.cursor_models[d].lose()
        self.check(
            f"txn.drop(db {d}, delete=False)",
            lambda s: s.txn.drop(s.handles[d], delete=False),
            ("ok", None),
        )

    # -- read transactions beside the write transaction ---------------------------------

    @rule(buffers=st.booleans())
    def begin_reader(self, buffers):
        """A read transaction that stays open while the writer commits (at most two)."""
        if len(self.readers) < 2:
            snapshot = [dict(m) for m in self.committed]
            txns = [side.env.begin(buffers=buffers) for side in (self.ref, self.sub)]
            self.readers.append((*txns, snapshot))

    @rule(i=st.integers(0, 1))
    def check_reader(self, i):
        """A read transaction sees its snapshot, whatever was committed since: the pages
        it reads were not reused."""
        if i >= len(self.readers):
            return
        ref_txn, sub_txn, snapshot = self.readers[i]
        for d in ALL_INDEXES:
            got_ref = self.ref.contents(d, ref_txn)
            got_sub = self.sub.contents(d, sub_txn)
            assert got_ref == self.items(d, snapshot[d]), "py-lmdb reader (test bug)"
            assert got_sub == got_ref, f"db {d}: kvmm's reader does not see its snapshot"

    @rule(i=st.integers(0, 1))
    def end_reader(self, i):
        if i < len(self.readers):
            ref_txn, sub_txn, _ = self.readers.pop(i)
            ref_txn.abort()
            sub_txn.abort()

    # -- cursor operations --------------------------------------------------------------

    def nv(self, d: int, key, value):
        """`value` as compared: a named database's record in main becomes DB_RECORD."""
        if d == 0 and key in NAMES and value:
            return DB_RECORD
        return value

    def item_at(self, d: int, key: bytes | None):
        """What item() answers on `key`, or on an unpositioned cursor when None."""
        if key is None:
            return (b"", b"")
        return (key, self.model[d][key])

    def read_item(self, d: int):
        """Account for an item() call on cursor `d`; return its expected answer.

        The answer is NOT_COMPARED when py-lmdb does not define it: the call then
        re-reads LMDB's hidden position, which leaves the cursor UNKNOWN.
        """
        cm = self.cursor_models[d]
        if not cm.known or (cm.state == UNPOS and not cm.clean):
            cm.lose()
            return NOT_COMPARED
        cm.clean = True
        k, v = self.item_at(d, cm.key if cm.state == AT else None)
        return (k, self.nv(d, k, v))

    def with_item(self, d: int, fn, item_known: bool = True):
        """fn(side, cursor), then the cursor's item() with named-db records normalised.

        item() is always called, on both sides alike; when item_known is False its
        answer is not compared. Calling it also makes py-lmdb's C extension re-read
        the position after its own cursor puts, which do not update its `positioned`
        flag (so a delete() straight after a put() on a fresh cursor deletes nothing).
        """

        def call(s):
            cursor = s.cursors[d]
            answer = fn(s, cursor)
            k, v = _plain(cursor.item())
            return answer, (k, self.nv(d, k, v)) if item_known else NOT_COMPARED

        return call

    def check_with_item(self, what: str, d: int, fn, answer) -> None:
        """check() fn followed by item(), the model's cursor `d` already moved."""
        item = self.read_item(d)
        self.check(
            what,
            self.with_item(d, fn, item is not NOT_COMPARED),
            ("ok", (answer, item)),
        )

    @rule(d=dbs, move=st.sampled_from(["first", "last", "next", "prev"]))
    def cursor_move(self, d, move):
        cm = self.cursor_models[d]
        ordered = self.sorted_keys(d)
        what = f"cursor.{move}() in db {d} from {cm.state}"
        eof = False
        if move == "first" or (move == "next" and cm.state == FRESH):
            target = ordered[0] if ordered else None
        elif move == "last" or (move == "prev" and cm.state == FRESH):
            target = ordered[-1] if ordered else None
            eof = True
        elif cm.state == AT and not (move == "next" and cm.eof and cm.key != ordered[-1]):
            j = ordered.index(cm.key) + (1 if move == "next" else -1)
            target = ordered[j] if 0 <= j < len(ordered) else None
        else:
            cm.lose()
            self.check(what, lambda s: getattr(s.cursors[d], move)(), compare=False)
            return
        cm.place(target, eof)
        cm.clean = True
        self.check_with_item(what, d, lambda s, c: getattr(c, move)(), target is not None)

    @rule(
        d=dbs,
        seek=st.sampled_from(["set_key", "set_range"]),
        key=st.one_of(st.just(b""), keys, too_long_keys),
    )
    def cursor_seek(self, d, seek, key):
        """A seek; set_range with a key too long to be stored moves to the first key
        after it, as py-lmdb's does."""
        key = self.fix_key(d, key)
        cm = self.cursor_models[d]
        what = f"cursor.{seek}({key!r}) in db {d}"
        if d and NAMED_DBS[d - 1][1] and len(key) > 511:
            # Where LMDB's comparison of another order puts a key it cannot store is an
            # accident of that comparison (integerkey reads its first bytes); kvmm's
            # set_range finds no place for it and leaves the cursor unpositioned.
            self.check(what, lambda s: s.cursors[d].set_range(key) if seek == "set_range"
                       else s.cursors[d].set_key(key), compare=False)
            for side in (self.ref, self.sub):  # fresh cursors: the two stand apart
                side.cursors[d] = side.txn.cursor(db=side.db(d))
            self.cursor_models[d] = CursorModel()
            return
        if seek == "set_key" and (key == b"" or len(key) > 511):
            cm.lose()
            expected = ("ok", False) if key else ("err", "BadValsizeError")
            self.check(what, lambda s: s.cursors[d].set_key(key), expected)
            return
        if seek == "set_key":
            target = key if key in self.model[d] else None
        else:
            # py-lmdb documents set_range(b"") as first().
            order = key_order(d)
            target = next((k for k in self.sorted_keys(d) if order(k) >= order(key)), None)
        cm.place(target)
        cm.clean = True
        self.check_with_item(what, d, lambda s, c: getattr(c, seek)(key), target is not None)

    @rule(d=dbs, read=st.sampled_from(["key", "value", "item"]))
    def cursor_read(self, d, read):
        cm = self.cursor_models[d]
        what = f"cursor.{read}() in db {d} ({cm.state}, clean={cm.clean})"
        at = cm.key
        item = self.read_item(d)
        if item is NOT_COMPARED:
            self.check(what, lambda s: getattr(s.cursors[d], read)(), compare=False)
            return
        expected = {"key": item[0], "value": item[1], "item": item}[read]

        def fn(s):
            answer = _plain(getattr(s.cursors[d], read)())
            if read == "value":
                return self.nv(d, at, answer)
            if read == "item":
                return (answer[0], self.nv(d, answer[0], answer[1]))
            return answer

        self.check(what, fn, ("ok", expected))

    @rule(d=dbs)
    def cursor_delete(self, d):
        """Delete the record under the cursor and stand on the next one."""
        cm = self.cursor_models[d]
        if not cm.known or (cm.state == AT and d == 0 and cm.key in NAMES):
            # Unknown: the two stores may stand on different records. A named database's
            # record: LMDB refuses, and the refusal poisons its transaction.
            return
        what = f"cursor.delete() in db {d} ({cm.state})"
        if cm.state != AT:
            # Not positioned: nothing is deleted.
            self.check_with_item(what, d, lambda s, c: c.delete(), False)
            return
        successor = self.successor(d, cm.key)
        del self.model[d][cm.key]
        self.mutated()
        cm.place(successor, cm.eof)
        self.check_with_item(what, d, lambda s, c: c.delete(), True)

    @rule(d=dbs, key=keys, value=values, overwrite=st.booleans(), append=st.booleans())
    def cursor_put(self, d, key, value, overwrite, append):
        key = self.fix_key(d, key)
        cm = self.cursor_models[d]
        what = f"cursor.put({key!r}, <{len(value)} bytes>, overwrite={overwrite}, append={append})"
        self.mutated()
        if not self.model_put(d, key, value, overwrite, append):
            cm.lose()
            self.check(
                what,
                lambda s: s.cursors[d].put(key, value, overwrite=overwrite, append=append),
                ("ok", False),
            )
            return
        cm.place(key, eof=append)
        self.check_with_item(
            what, d, lambda s, c: c.put(key, value, overwrite=overwrite, append=append), True
        )

    @rule(d=dbs, key=keys, value=values)
    def cursor_replace(self, d, key, value):
        key = self.fix_key(d, key)
        old = self.model[d].get(key)
        self.model[d][key] = value
        self.mutated()
        self.cursor_models[d].place(key)
        self.check_with_item(
            f"cursor.replace({key!r}, <{len(value)} bytes>)",
            d,
            lambda s, c: c.replace(key, value),
            old,
        )

    @rule(d=dbs, key=keys)
    def cursor_pop(self, d, key):
        """pop() deletes like delete(): the cursor then stands on the next record."""
        key = self.fix_key(d, key)
        cm = self.cursor_models[d]
        old = self.model[d].get(key)
        cm.clean = True  # the lookup
        if old is None:
            cm.place(None)
        else:
            cm.place(self.successor(d, key))
            del self.model[d][key]
            self.mutated()
        self.check_with_item(f"cursor.pop({key!r})", d, lambda s, c: c.pop(key), old)

    @rule(d=dbs, key=keys)
    def cursor_get(self, d, key):
        key = self.fix_key(d, key)
        cm = self.cursor_models[d]
        found = self.model[d].get(key)
        cm.place(key if found is not None else None)
        cm.clean = True
        self.check_with_item(f"cursor.get({key!r})", d, lambda s, c: c.get(key), found)

    @rule(d=dbs, batch=batches, overwrite=st.booleans(), append=st.booleans())
    def cursor_putmulti(self, d, batch, overwrite, append):
        """putmulti() answers (consumed, added); the cursor stands on the last record put."""
        batch = [(self.fix_key(d, k), v) for k, v in batch]
        cm = self.cursor_models[d]
        written = [self.model_put(d, k, v, overwrite, append) for k, v in batch]
        if batch:
            self.mutated()
            if written[-1]:
                cm.place(batch[-1][0], eof=append)
            else:
                cm.lose()
        self.check_with_item(
            f"cursor.putmulti({[(k, len(v)) for k, v in batch]}, overwrite={overwrite},"
            f" append={append})",
            d,
            lambda s, c: c.putmulti(batch, overwrite=overwrite, append=append),
            (len(batch), sum(written)),
        )

    @rule(d=dbs, wanted=st.lists(keys, max_size=5), values=st.booleans())
    def cursor_getmulti(self, d, wanted, values):
        """getmulti() answers the (key, value) pairs found, in the order asked (with
        values=False, the keys found)."""
        wanted = [self.fix_key(d, k) for k in wanted]
        cm = self.cursor_models[d]
        if wanted:
            cm.place(wanted[-1] if wanted[-1] in self.model[d] else None)
            cm.clean = True
        found = [k for k in wanted if k in self.model[d]]
        self.check(
            f"cursor.getmulti({wanted!r}, values={values})",
            lambda s: s.cursors[d].getmulti(wanted, values=values),
            ("ok", [(k, self.model[d][k]) for k in found] if values else found),
        )

    @rule(
        d=dbs,
        backwards=st.booleans(),
        shape=st.sampled_from([(True, True), (True, False), (False, True)]),
        n=st.integers(1, 6),
    )
    def cursor_iterate(self, d, backwards, shape, n):
        """A slice of iternext()/iterprev(): the current record first, then onwards; an
        unpositioned cursor starts from the first (last) record."""
        cm = self.cursor_models[d]
        want_keys, want_values = shape
        name = "iterprev" if backwards else "iternext"
        what = f"cursor.{name}(keys={want_keys}, values={want_values})[:{n}] in db {d}"

        def run(s):
            it = getattr(s.cursors[d], name)(keys=want_keys, values=want_values)
            return _plain(list(itertools.islice(it, n)))

        ordered = self.sorted_keys(d)
        if not cm.known or (
            cm.state == AT and not backwards and n > 1 and cm.eof and cm.key != ordered[-1]
        ):
            cm.lose()
            self.check(what, run, compare=False)
            return
        if backwards:
            ordered.reverse()
        if cm.state == AT:
            ordered = ordered[ordered.index(cm.key) :]
        taken = ordered[:n]
        if n > 1:
            eof = False
        elif cm.state == AT:
            eof = cm.eof
        else:
            eof = backwards  # iterprev() began with last()
        cm.place(taken[-1] if len(taken) == n else None, eof)
        cm.clean = True
        records = [(k, self.nv(d, k, self.model[d][k])) for k in taken]
        if shape == (True, True):
            expected = records
        elif shape == (True, False):
            expected = [k for k, _ in records]
        else:
            expected = [v for _, v in records]

        def normalised(s):
            got = run(s)
            if shape == (True, True):
                return [(k, self.nv(d, k, v)) for k, v in got]
            if shape == (False, True):
                return [self.nv(d, k, v) for k, v in zip(taken, got)] + got[len(taken) :]
            return got

        self.check(what, normalised, ("ok", expected))

    # -- transaction and environment lifetime -------------------------------------------

    @rule(
        how=st.sampled_from(
            ["commit"] * 4 + ["abort", "reopen after commit", "reopen after abort"]
        ),
        buffers=st.booleans(),
    )
    def finish_transaction(self, how, buffers):
        """End the write transaction (commit, abort, or either and reopen both
        environments), check that a new read transaction sees exactly the committed
        records, and begin the next write transaction with fresh cursors (with
        buffers=True, reads answer memoryviews; they are compared as bytes at once).

        One rule with weighted choices, so that transactions grow long enough to split
        and merge pages before they end, and most of them are kept.
        """
        end = "abort" if how.endswith("abort") else "commit"
        self.check(f"txn.{end}()", lambda s: getattr(s.txns[0], end)(), ("ok", None))
        if self.saved:
            # The open children were aborted first: the top transaction ends with its own.
            self.model = self.saved[0][0]
        if end == "commit":
            self.committed = [dict(m) for m in self.model]
        else:
            self.model = [dict(m) for m in self.committed]
        if how.startswith("reopen"):
            while self.readers:
                self.end_reader(0)
            for side in (self.ref, self.sub):
                side.close()
                side.open()
        self.verify_committed()
        self.begin(buffers)

    # -- dupsort databases (dupfixed, integerdup) ----------------------------------------

    def first_value(self, d: int, key: bytes):
        values = self.model[d].get(key)
        return min(values, key=value_order(d)) if values else None

    @rule(
        d=dup_dbs,
        key=short_keys,
        value=short_keys,
        dupdata=st.booleans(),
        overwrite=st.booleans(),
        through=st.sampled_from(["txn", "cursor"]),
    )
    def dup_put(self, d, key, value, dupdata, overwrite, through):
        """A put adds a value to the key's set: refused (False) with overwrite=False
        when the key has values, with dupdata=False when the pair exists."""
        key, value = self.fix_key(d, key), self.fix_value(d, value)
        self.mutated()
        values = self.model[d].get(key, frozenset())
        if (values and not overwrite) or (value in values and not dupdata):
            expected = False
        else:
            self.model[d][key] = values | {value}
            expected = True

        def fn(s):
            target = s.txn if through == "txn" else s.txn.cursor(db=s.db(d))
            kwargs = {"db": s.db(d)} if through == "txn" else {}
            return target.put(key, value, dupdata=dupdata, overwrite=overwrite, **kwargs)

        self.check(
            f"{through}.put({key!r}, {value!r}, dupdata={dupdata}, overwrite={overwrite}) "
            f"in db {d}",
            fn,
            ("ok", expected),
        )

    @rule(d=dup_dbs, key=short_keys, value=st.one_of(st.just(b""), short_keys))
    def dup_delete(self, d, key, value):
        """delete(key, value) removes the pair; delete(key) every value of the key."""
        key = self.fix_key(d, key)
        self.mutated()
        values = self.model[d].get(key, frozenset())
        if value:
            value = self.fix_value(d, value)
            found = value in values
            if found:
                values = values - {value}
        else:
            found = bool(values)
            values = frozenset()
        if values:
            self.model[d][key] = values
        else:
            self.model[d].pop(key, None)
        self.check(
            f"txn.delete({key!r}, {value!r}) in db {d}",
            lambda s: s.txn.delete(key, value, db=s.db(d)),
            ("ok", found),
        )

    @rule(d=dup_dbs, key=short_keys, value=short_keys, call=st.sampled_from(
        ["get", "pop", "replace"]))
    def dup_get_pop_replace(self, d, key, value, call):
        """get() and pop() answer the key's first value (pop deletes it); replace()
        puts one value in place of all of them and answers the first old one."""
        key, value = self.fix_key(d, key), self.fix_value(d, value)
        first = self.first_value(d, key)
        if call != "get":
            self.mutated()
        if call == "pop" and first is not None:
            rest = self.model[d][key] - {first}
            if rest:
                self.model[d][key] = rest
            else:
                del self.model[d][key]
        elif call == "replace":
            self.model[d][key] = frozenset([value])

        def fn(s):
            if call == "replace":
                return s.txn.replace(key, value, db=s.db(d))
            return getattr(s.txn, call)(key, db=s.db(d))

        self.check(f"txn.{call}({key!r}) in db {d}", fn, ("ok", first))

    @rule(
        d=dup_dbs,
        wanted=st.lists(short_keys, max_size=4),
        mode=st.sampled_from(["first", "dupdata", "fixed", "keyfixed", "keys"]),
    )
    def dup_getmulti(self, d, wanted, mode):
        """getmulti(): first values, every value (dupdata), every value in pieces of
        dupfixed_bytes (half a value of db 6), packed with keyfixed, or the keys found."""
        wanted = [self.fix_key(d, k) for k in wanted]
        found = [k for k in wanted if k in self.model[d]]
        by_value = value_order(d)
        piece = VALUE_SIZE[d] // 2 if d in INT_VALUE_WIDTH else VALUE_SIZE[d]
        kwargs = {
            "first": {},
            "dupdata": {"dupdata": True},
            "fixed": {"dupdata": True, "dupfixed_bytes": piece},
            "keyfixed": {"dupdata": True, "dupfixed_bytes": piece, "keyfixed": True},
            "keys": {"values": False},
        }[mode]
        if mode == "keys":
            expected = ("ok", found)
        elif mode == "first":
            expected = ("ok", [(k, self.first_value(d, k)) for k in found])
        else:
            pairs = [(k, v) for k in found for v in sorted(self.model[d][k], key=by_value)]
            if mode != "dupdata":
                pairs = [(k, v[i : i + piece]) for k, v in pairs for i in range(0, len(v), piece)]
            expected = ("ok", pairs)
            if mode == "keyfixed":
                widths = {len(k) for k in found}
                expected = ("err", "ValueError") if len(widths) > 1 else (
                    "ok", b"".join(k + v for k, v in pairs))
        self.check(
            f"cursor.getmulti({wanted!r}, {kwargs}) in db {d}",
            lambda s: s.txn.cursor(db=s.db(d)).getmulti(wanted, **kwargs),
            expected,
        )

    @rule(
        d=dup_dbs,
        key=st.one_of(short_keys, st.just(b"\x00")),
        value=short_keys,
        how=st.sampled_from([
            "set_key", "set_range", "set_key_dup", "set_range_dup", "last_dup",
            "next_nodup", "prev_nodup", "iternext_nodup", "iterprev_nodup", "iterprev",
        ]),
    )
    def dup_cursor_read(self, d, key, value, how):
        """A fresh cursor's moves over the pairs, in the database's orders."""
        key, value = self.fix_key(d, key), self.fix_value(d, value)
        data = self.model[d]
        korder, vorder = key_order(d), value_order(d)
        pairs = self.items(d, data)
        values = sorted(data.get(key, ()), key=vorder)
        keys_in_order = self.sorted_keys(d)
        if how == "set_key":
            want = (True, (key, values[0]), len(values), values) if values else (False,)
        elif how == "set_range":
            at = next((p for p in pairs if korder(p[0]) >= korder(key)), None)
            want = (True, at) if at else (False,)
        elif how == "set_key_dup":
            want = (True, (key, value)) if value in values else (False,)
        elif how == "set_range_dup":
            at = next((v for v in values if vorder(v) >= vorder(value)), None)
            want = (True, (key, at)) if at is not None else (False,)
        elif how == "last_dup":
            want = (True, (key, values[-1]), len(values) > 1) if values else (False,)
            if len(values) > 1:
                want += ((key, values[-2]),)
        elif how in ("next_nodup", "prev_nodup"):
            if not values:
                want = (False,)
            else:
                j = keys_in_order.index(key) + (1 if how == "next_nodup" else -1)
                if 0 <= j < len(keys_in_order):
                    k = keys_in_order[j]
                    vs = sorted(data[k], key=vorder)
                    want = (True, True, (k, vs[0] if how == "next_nodup" else vs[-1]))
                else:
                    want = (True, False)
        elif how == "iternext_nodup":
            want = keys_in_order
        elif how == "iterprev_nodup":
            want = keys_in_order[::-1]
        else:
            want = pairs[::-1]

        def fn(s):
            c = s.txn.cursor(db=s.db(d))
            if how in ("iternext_nodup", "iterprev_nodup", "iterprev"):
                return list(getattr(c, how)())
            if how in ("set_key_dup", "set_range_dup"):
                return (True, c.item()) if getattr(c, how)(key, value) else (False,)
            if how in ("next_nodup", "prev_nodup"):
                if not c.set_key(key):
                    return (False,)
                return (True, True, c.item()) if getattr(c, how)() else (True, False)
            if not getattr(c, "set_range" if how == "set_range" else "set_key")(key):
                return (False,)
            if how == "set_key":
                return (True, c.item(), c.count(), list(c.iternext_dup()))
            if how == "set_range":
                return (True, c.item())
            out = (c.last_dup(), c.item())
            moved = c.prev_dup()
            return (*out, moved, c.item()) if moved else (*out, moved)

        self.check(f"cursor {how}({key!r}, {value!r}) in db {d}", fn, ("ok", want))

    @rule(d=dup_dbs, key=short_keys, value=short_keys, every=st.booleans())
    def dup_cursor_delete(self, d, key, value, every):
        """A cursor on a pair deletes it (with dupdata=True, every value of its key)."""
        key, value = self.fix_key(d, key), self.fix_value(d, value)
        self.mutated()
        values = self.model[d].get(key, frozenset())
        found = value in values
        if found:
            rest = frozenset() if every else values - {value}
            if rest:
                self.model[d][key] = rest
            else:
                del self.model[d][key]

        def fn(s):
            c = s.txn.cursor(db=s.db(d))
            return c.set_key_dup(key, value) and c.delete(dupdata=every)

        self.check(f"cursor delete({key!r}, {value!r}, dupdata={every}) in db {d}", fn,
                   ("ok", found))

    # -- nested transactions --------------------------------------------------------------

    @rule(buffers=st.booleans())
    def begin_child(self, buffers):
        """A child of the innermost transaction, with fresh cursors; the parent's wait."""
        if len(self.saved) >= MAX_CHILDREN:
            return
        self.check("begin(write=True, parent=txn)", lambda s: s.begin_child(buffers),
                   ("ok", None))
        self.saved.append(([dict(m) for m in self.model], self.cursor_models))
        self.cursor_models = [CursorModel() for _ in DB_INDEXES]

    @rule(how=st.sampled_from(["commit", "abort"]))
    def end_child(self, how):
        """The innermost child commits (its changes are its parent's) or aborts (they
        are gone); the parent's cursors work again, from where py-lmdb does not say."""
        if not self.saved:
            return
        self.check(f"child.{how}()", lambda s: s.end_child(how), ("ok", None))
        model, self.cursor_models = self.saved.pop()
        if how == "abort":
            self.model = model
        for cm in self.cursor_models:
            cm.lose()

    @rule(d=dbs, key=short_keys, call=st.sampled_from(["get", "put", "delete", "cursor"]))
    def use_blocked_parent(self, d, key, call):
        """A transaction with an open child refuses use (BadTxnError)."""
        if not self.saved:
            return
        key = self.fix_key(d, key)

        def fn(s):
            parent = s.txns[-2]
            if call == "put":
                return parent.put(key, b"v", db=s.db(d))
            if call == "cursor":
                return parent.cursor(db=s.db(d))
            return getattr(parent, call)(key, db=s.db(d))

        self.check(f"parent.{call}({key!r}) with a child open", fn, ("err", "BadTxnError"))


DifferentialMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDifferential = DifferentialMachine.TestCase


# -- cases the machine found, kept as plain tests ---------------------------------------


def _bulk_key(i: int, size: int) -> bytes:
    return (BULK_KEYS[i] * 128)[:size]


def _delete_a_run_of_long_keys(env):
    """62 records with 200-byte keys after two small ones; all but 11 deleted."""
    keys = [_bulk_key(i, 200) for i in range(0, 7 * 62, 7)]
    with env.begin(write=True) as txn:
        txn.put(b"a", b"r" * 48)
        txn.put(b"b", b"r" * 48)
        for key in keys:
            txn.put(key, b"\x00" * 1000)
        for key in sorted(keys)[11:]:
            txn.delete(key)
        inside = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        last = txn.cursor().last()
    with env.begin() as txn:
        return inside, last, [(bytes(k), bytes(v)) for k, v in txn.cursor()]


def _drop_then_cursor_in_a_later_transaction(env):
    """drop(db, delete=False), then a cursor merely opened on it in a later commit."""
    db = env.open_db(b"a")
    with env.begin(write=True) as txn:
        for i in range(32):
            txn.put(b"%04d" % i, b"x" * 5000, db=db)
    with env.begin(write=True) as txn:
        txn.drop(db, delete=False)
        txn.put(b"main", b"")
        txn.put(b"k", b"", db=db)
    with env.begin(write=True) as txn:
        txn.cursor(db=db)
        txn.put(b"main2", b"")
    with env.begin() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]


def _split_with_long_keys_then_delete(env):
    """48 records with 480-byte keys, every fourth deleted, in one transaction."""
    keys = [_bulk_key(i, 480) for i in range(49)]
    with env.begin(write=True) as txn:
        for key in keys:
            txn.put(key, b"\x00" * 1000)
        for key in keys[0:52:4]:
            txn.delete(key)
    with env.begin() as txn:
        return [bytes(k) for k in txn.cursor().iternext(values=False)]


# -- edge cases where py-lmdb's answer is the contract ------------------------------------


def _answer(fn, *args, **kwargs):
    """('ok', answer) or ('err', exception class name) of fn(*args, **kwargs)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the class name is what is compared
        return ("err", type(exc).__name__)


def _moved(cur, seek: str, *args) -> tuple:
    """A seek's answer and where the cursor then stands."""
    return getattr(cur, seek)(*args), bytes(cur.key()), bytes(cur.value())


def _lookups_of_keys_too_long_to_store(env):
    """get, delete, pop and seeks with 512- and 600-byte keys, in the main database
    and a dupsort one: absent, and set_range moves to the next key."""
    dups = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True) as txn:
        for key in (b"a", b"b", b"c"):
            txn.put(key, b"1")
            txn.put(key, b"2", db=dups)
            txn.put(key, b"3", db=dups)
    answers = []
    with env.begin(write=True) as txn:
        for db in (None, dups):
            cur = txn.cursor(db=db)
            for key in (b"\x00" * 600, b"a" * 512, b"b" * 600):
                answers += [
                    _answer(txn.get, key, b"default", db=db),
                    _answer(txn.delete, key, db=db),
                    _answer(txn.pop, key, db=db),
                    _answer(cur.get, key, b"default"),
                    _answer(_moved, cur, "set_key", key),
                    _answer(_moved, cur, "set_range", key),
                ]
        txn.abort()
    return answers


def _dupsort_seeks_with_empty_and_long_values(env):
    """set_range_dup and set_key_dup with an empty value raise BadValsizeError; with
    a 600-byte value set_range_dup finds the next value of the key, set_key_dup none."""
    dups = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=dups) as txn:
        for value in (b"v1", b"v" + b"z" * 510, b"w"):
            txn.put(b"k", value)
        txn.put(b"m", b"x")
    answers = []
    with env.begin(db=dups) as txn:
        cur = txn.cursor()
        for key, value in [(b"k", b""), (b"k", b"v" * 600), (b"k", b"v" + b"z" * 600),
                           (b"k", b"x" * 600), (b"j", b"a" * 600), (b"k" * 600, b"a"),
                           (b"", b"a")]:
            for seek in ("set_range_dup", "set_key_dup"):
                answers.append(_answer(_moved, cur, seek, key, value))
    return answers


def _buffers_reads_of_an_unpositioned_cursor(env):
    """With buffers=True an unpositioned cursor reads empty memoryviews."""
    with env.begin(write=True) as txn:
        txn.put(b"a", b"1")
    answers = []
    with env.begin(buffers=True) as txn:
        cur = txn.cursor()
        answers.append([type(x).__name__ for x in (cur.key(), cur.value(), *cur.item())])
        answers.append(cur.set_range(b"zz"))
        for x in (cur.key(), cur.value(), *cur.item()):
            answers.append((type(x).__name__, bytes(x)))
    return answers


def _copy_of_a_subdir_false_environment(tmp_path, opener):
    """A subdir=False environment's copy is a file, plain or compacted."""
    src = opener(str(tmp_path / "file.db"), subdir=False)
    with src.begin(write=True) as txn:
        txn.put(b"a", b"1")
    answers = []
    for compact in (False, True):
        target = tmp_path / f"copy-{compact}"
        src.copy(str(target), compact=compact)
        copy = opener(str(target), subdir=False, readonly=True)
        with copy.begin() as txn:
            answers.append((target.is_file(), list(txn.cursor())))
        copy.close()
    src.close()
    return answers


def _dbs_full(tmp_path, opener):
    """DbsFullError, and a message that tells how to fix it."""
    small = opener(str(tmp_path / "small"), max_dbs=1)
    small.open_db(b"one")
    try:
        small.open_db(b"two")
    except Exception as exc:  # noqa: BLE001 - the class and message are compared
        return type(exc).__name__, "larger" in str(exc) and "max_dbs=" in str(exc)
    finally:
        small.close()
    return None


@pytest.mark.parametrize(
    "case",
    [
        _delete_a_run_of_long_keys,
        _drop_then_cursor_in_a_later_transaction,
        _split_with_long_keys_then_delete,
        _lookups_of_keys_too_long_to_store,
        _dupsort_seeks_with_empty_and_long_values,
        _buffers_reads_of_an_unpositioned_cursor,
    ],
    ids=lambda case: case.__name__.lstrip("_"),
)
def test_case_gives_py_lmdbs_answers(tmp_path, case):
    """Each case once broke kvmm's tree or free list, or answered an edge case
    otherwise than py-lmdb; its answers must be py-lmdb's (and, with KVMM_STRICT,
    every commit passes the checker)."""
    reference = _open_lmdb(str(tmp_path / "reference"))
    subject = _open_subject(str(tmp_path / "subject"))
    try:
        assert case(subject) == case(reference)
    finally:
        reference.close()
        subject.close()


@pytest.mark.parametrize("case", [_copy_of_a_subdir_false_environment, _dbs_full],
                         ids=lambda case: case.__name__.lstrip("_"))
def test_environment_edge_case_gives_py_lmdbs_answers(tmp_path, case):
    import kvmm

    def lmdb_opener(path, **options):
        return lmdb.open(path, map_size=LMDB_MAP_SIZE, **options)

    (tmp_path / "ref").mkdir()
    (tmp_path / "sub").mkdir()
    reference = case(tmp_path / "ref", lmdb_opener)
    assert reference is not None
    assert case(tmp_path / "sub", kvmm.open) == reference
