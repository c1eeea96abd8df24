"""Key and value orders (kvmm/orders.py): reverse_key, integerkey, integerdup and
dupfixed databases answer as py-lmdb's (the oracle), keep their flags in the file, are
refused where LMDB's orders make no sense, and leave default databases' paths alone.
"""

from __future__ import annotations

import itertools
import random
import struct

import lmdb
import pytest

import kvmm
from kvmm import orders
from kvmm.check import check, check_env

LMDB_MAP_SIZE = 256 * 1024 * 1024
FLAG_NAMES = ("reverse_key", "dupsort", "integerkey", "integerdup", "dupfixed")


def u32(n: int) -> bytes:
    return struct.pack("=I", n)


def u64(n: int) -> bytes:
    return struct.pack("=Q", n)


def _words(rng, n):
    return [bytes(rng.choice(b"\x00\x01ab\xff") for _ in range(rng.randint(1, 6)))
            for _ in range(n)]


# Each case: open_db flags, and how to make n keys and n values from a random source.
CASES = {
    "reverse_key": ({"reverse_key": True}, _words, _words),
    "integerkey-4": ({"integerkey": True},
                     lambda rng, n: [u32(rng.randrange(1 << 32)) for _ in range(n)], _words),
    "integerkey-8": ({"integerkey": True},
                     lambda rng, n: [u64(rng.randrange(1 << 64)) for _ in range(n)], _words),
    "integerdup-4": ({"integerdup": True}, lambda rng, n: _words(rng, n // 8 + 1) * 8,
                     lambda rng, n: [u32(rng.randrange(1 << 32)) for _ in range(n)]),
    "integerdup-8-integerkey": (
        {"integerdup": True, "integerkey": True},
        lambda rng, n: [u32(rng.randrange(40)) for _ in range(n)],
        lambda rng, n: [u64(rng.randrange(1 << 64)) for _ in range(n)]),
    "dupfixed-reverse_key": ({"dupfixed": True, "reverse_key": True},
                             lambda rng, n: _words(rng, n // 8 + 1) * 8,
                             lambda rng, n: [bytes([rng.randrange(256)] * 3) for _ in range(n)]),
    "dupsort-integerkey": ({"dupsort": True, "integerkey": True},
                           lambda rng, n: [u32(rng.randrange(30)) for _ in range(n)], _words),
}


def _both(tmp_path, flags):
    sub = kvmm.open(str(tmp_path / "kvmm"), max_dbs=4)
    ref = lmdb.open(str(tmp_path / "lmdb"), map_size=LMDB_MAP_SIZE, max_dbs=4)
    return (sub, sub.open_db(b"db", **flags)), (ref, ref.open_db(b"db", **flags))


def _plain(x):
    if isinstance(x, (memoryview, bytearray)):
        return bytes(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(i) for i in x)
    return x


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_order_answers_as_py_lmdb(tmp_path, case):
    """Puts, deletes, gets, seeks and iteration both ways, in write and read
    transactions (with and without buffers), give py-lmdb's answers."""
    flags, make_keys, make_values = CASES[case]
    rng = random.Random(case)
    keys, values = make_keys(rng, 600), make_values(rng, 600)
    probes = make_keys(rng, 40)
    sides = _both(tmp_path, flags)
    answers = []
    for env, db in sides:
        got = []
        with env.begin(write=True, db=db) as txn:
            got.append([txn.put(k, v) for k, v in zip(keys, values)])
            got.append([txn.delete(k) for k in keys[::7]])
            got.append(list(txn.cursor()))
        for buffers in (False, True):
            with env.begin(db=db, buffers=buffers) as txn:
                cur = txn.cursor()
                got.append([txn.get(k) for k in probes])
                got.append([(cur.set_range(k), cur.item()) for k in probes])
                got.append([(cur.set_key(k), cur.item()) for k in probes])
                got.append(list(cur.iterprev()))
                got.append(list(txn.cursor().iternext(values=False)))
        answers.append(_plain(got))
        if env is sides[0][0]:
            assert check_env(env) == []
        env.close()
    assert answers[0] == answers[1]


def test_flags_are_kept_reported_and_implied_as_py_lmdbs(tmp_path):
    """_Database.flags() for every combination of open_db's flags, before and after
    reopening, and when reopened with other flags (the stored ones win), as py-lmdb's."""
    combos = list(itertools.product((False, True), repeat=len(FLAG_NAMES)))
    answers = []
    for mod, path in ((kvmm, tmp_path / "kvmm"), (lmdb, tmp_path / "lmdb")):
        env = mod.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=64)
        got = []
        for i, combo in enumerate(combos):
            db = env.open_db(b"db%d" % i, **dict(zip(FLAG_NAMES, combo)))
            got.append(db.flags())
        env.close()
        env = mod.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=64)
        with env.begin(write=True) as txn:
            for i, combo in enumerate(combos):
                other = dict(zip(FLAG_NAMES, reversed(combo)))
                got.append(env.open_db(b"db%d" % i, txn=txn, **other).flags(txn))
        env.close()
        answers.append(got)
    assert answers[0] == answers[1]
    assert {tuple(f.values()) for f in answers[0]} != {(False,) * 5}


@pytest.mark.parametrize("flag", FLAG_NAMES)
def test_main_database_refuses_flags_as_py_lmdb(env, flag):
    with pytest.raises(ValueError):
        env.open_db(None, **{flag: True})
    assert env.open_db(None).flags() == dict.fromkeys(orders.flag_dict(0), False)


def test_flags_takes_at_most_one_argument(env):
    db = env.open_db(b"db", reverse_key=True)
    with env.begin() as txn:
        assert db.flags(txn) == db.flags() == db.flags(None)
    with pytest.raises(TypeError):
        db.flags(1, 2)


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        ({"integerkey": True}, b"abc", b"v"),
        ({"integerkey": True}, b"123456789", b"v"),
        ({"integerdup": True}, b"k", b"abc"),
        ({"integerkey": True, "dupsort": True}, b"ab", b"v"),
    ],
)
def test_integers_of_other_widths_are_refused_and_change_nothing(env, flags, key, value):
    """LMDB compares such keys and values as garbage; kvmm refuses them."""
    db = env.open_db(b"db", **flags)
    with env.begin(write=True, db=db) as txn:
        with pytest.raises(kvmm.BadValsizeError):
            txn.put(key, value)
        with pytest.raises(kvmm.BadValsizeError):
            txn.cursor().put(key, value)
        assert list(txn.cursor()) == [] and txn.stat(db)["entries"] == 0


def test_lookups_of_integer_keys_of_another_width(env):
    """A cursor finds no such key (as for a key too long); get() refuses it."""
    db = env.open_db(b"db", integerkey=True)
    with env.begin(write=True, db=db) as txn:
        txn.put(u32(1), b"v")
        cur = txn.cursor()
        assert cur.set_key(b"abc") is False and cur.set_range(b"abc") is False
        assert cur.key() == b""
        with pytest.raises(kvmm.BadValsizeError):
            txn.get(b"abc")
        assert txn.get(u32(1)) == b"v"


def test_dupfixed_values_of_another_size_are_refused(env):
    db = env.open_db(b"db", dupfixed=True)
    with env.begin(write=True, db=db) as txn:
        assert txn.put(b"a", b"xy") and txn.put(b"a", b"zz")
        with pytest.raises(kvmm.BadValsizeError):
            txn.put(b"a", b"xyz")
        assert txn.put(b"b", b"xyz")  # each key's values have a size of their own
        assert list(txn.cursor()) == [(b"a", b"xy"), (b"a", b"zz"), (b"b", b"xyz")]


def test_reverse_key_cursor_writes_and_deletes_by_the_users_key(env):
    """Cursor put/replace/pop/delete take and give the user's keys (a stored key is
    the reversed bytes)."""
    db = env.open_db(b"db", reverse_key=True)
    with env.begin(write=True, db=db) as txn:
        cur = txn.cursor()
        assert cur.put(b"ab", b"1") and cur.key() == b"ab"
        assert cur.put(b"ba", b"2") and cur.item() == (b"ba", b"2")
        assert cur.replace(b"ab", b"3") == b"1"
        assert cur.set_key(b"ba") and cur.delete()
        assert cur.pop(b"ab") == b"3"
        assert list(txn.cursor()) == []


GETMULTI_ARGS = [
    {},
    {"values": False},
    {"dupdata": True},
    {"dupdata": True, "dupfixed_bytes": 2},
    {"dupdata": True, "dupfixed_bytes": 1},
    {"dupdata": True, "dupfixed_bytes": 2, "keyfixed": True},
    {"dupfixed_bytes": 2},
    {"keyfixed": True, "dupdata": True},
    {"dupdata": True, "values": False},
    {"dupdata": True, "dupfixed_bytes": -1},
]


@pytest.mark.parametrize(
    ("flags", "kwargs"),
    [
        (flags, kwargs)
        for flags in ({}, {"dupsort": True}, {"dupfixed": True}, {"integerdup": True})
        for kwargs in GETMULTI_ARGS
        # getmulti(dupdata=True) of a database without duplicates: py-lmdb answers the
        # last key found twice (LMDB's MDB_NEXT_DUP there); kvmm answers each key once.
        if flags or kwargs != {"dupdata": True}
    ],
    ids=str,
)
def test_getmulti_answers_as_py_lmdb(tmp_path, flags, kwargs):
    sides = _both(tmp_path, flags)
    wanted = [b"c", b"a", b"zz", b"b"]
    answers = []
    for env, db in sides:
        with env.begin(write=True, db=db) as txn:
            for k in (b"a", b"b", b"c"):
                for v in (b"12", b"34", b"56"):
                    if flags.get("integerdup"):
                        v = v * 2
                    txn.put(k, v)
            try:
                answers.append(("ok", _plain(txn.cursor().getmulti(wanted, **kwargs))))
            except Exception as e:  # noqa: BLE001 - the class is what is compared
                answers.append(("err", type(e).__name__))
        env.close()
    assert answers[0] == answers[1]


def test_default_database_get_and_put_never_reach_the_orders(env, monkeypatch):
    """A database without flags takes none of kvmm.orders' paths (its cost is the one
    test of the record's flags)."""

    def fail(*args):
        raise AssertionError("a default database reached kvmm.orders")

    for name in ("key_in", "key_out", "value_in", "value_out"):
        monkeypatch.setattr(orders, name, fail)
    db = env.open_db(b"plain")
    with env.begin(write=True) as txn:
        for d in (None, db):
            assert txn.put(b"k", b"v", db=d) and txn.get(b"k", db=d) == b"v"
            assert (b"k", b"v") in list(txn.cursor(d)) and txn.delete(b"k", db=d)


def test_compacting_copy_keeps_flags_and_order(env, tmp_path):
    db = env.open_db(b"ints", integerkey=True)
    dups = env.open_db(b"dups", integerdup=True, reverse_key=True)
    with env.begin(write=True) as txn:
        for n in (300, 2, 70000, 1):
            txn.put(u32(n), b"v", db=db)
            txn.put(b"ab%d" % (n % 3), u32(n), db=dups)
        want = (list(txn.cursor(db)), list(txn.cursor(dups)))
    env.copy(str(tmp_path / "copy"), compact=True)
    copy = kvmm.open(str(tmp_path / "copy"), max_dbs=4)
    try:
        cdb, cdups = copy.open_db(b"ints"), copy.open_db(b"dups")
        assert cdb.flags() == db.flags() and cdups.flags() == dups.flags()
        with copy.begin() as txn:
            assert (list(txn.cursor(cdb)), list(txn.cursor(cdups))) == want
    finally:
        copy.close()
    assert check(str(tmp_path / "copy")) == []


def _write_unchecked(monkeypatch, env, db, entries):
    """Put stored entries into ``db`` as a plain database would, bypassing its order's
    checks (and the strict mode's check at commit): a file such as damage leaves."""
    import kvmm.txn

    monkeypatch.setattr(kvmm.txn, "_STRICT", False)
    flags = db._flags
    with env.begin(write=True) as txn:
        state = txn._state(db)
        state.flags = 0  # the record keeps them: it is saved from ``db._flags`` below
        db._flags = 0
        for key, value in entries:
            txn.put(key, value, db=db)
        state.flags = flags
    db._flags = flags


def test_check_reports_integer_keys_of_another_width(tmp_path, monkeypatch):
    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        db = env.open_db(b"ints", integerkey=True)
        _write_unchecked(monkeypatch, env, db, [(b"abc", b"v")])
    problems = check(str(tmp_path / "db"))
    assert any("integerkey key of 3 bytes" in p for p in problems), problems


def test_check_reports_dupfixed_values_of_two_sizes(tmp_path, monkeypatch):
    from kvmm.dupsort import pair

    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        db = env.open_db(b"fixed", dupfixed=True)
        _write_unchecked(monkeypatch, env, db, [(pair(b"k", b"ab"), b""),
                                                (pair(b"k", b"abc"), b"")])
    problems = check(str(tmp_path / "db"))
    assert any("dupfixed key with values of 2 and 3 bytes" in p for p in problems), problems


def test_check_reports_unknown_database_flags(tmp_path, monkeypatch):
    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        db = env.open_db(b"odd")
        _write_unchecked(monkeypatch, env, db, [])
        monkeypatch.setattr(db, "_flags", 0x40)  # LMDB's REVERSEDUP, which kvmm lacks
        with env.begin(write=True) as txn:
            txn._state(db).flags = 0x40
            txn._state(db).changed = True
            txn.put(b"main", b"")  # a commit with nothing written writes no record
    problems = check(str(tmp_path / "db"))
    assert any("unknown flags 0x40" in p for p in problems), problems


def test_getmulti_dupdata_without_duplicates_answers_each_key_once(env):
    with env.begin(write=True) as txn:
        txn.put(b"a", b"1")
        txn.put(b"b", b"2")
        assert txn.cursor().getmulti([b"a", b"b"], dupdata=True) == [(b"a", b"1"), (b"b", b"2")]
