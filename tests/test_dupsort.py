"""Sorted duplicates (dupsort=True), checked against py-lmdb as the oracle.

The differential test drives a kvmm and an LMDB dupsort database with the same
operations and compares every answer and the final contents. Where LMDB's answer
depends on its internals rather than on the data, the test does not compare:

- a cursor's state after a write (LMDB fixes other cursors up in ways of its own):
  both cursors are moved back to the same pair;
- moves of a cursor that is not positioned, and the state after a failed move;
- the key after first_dup/last_dup (py-lmdb leaves it empty), and the first item of a
  fresh iterator in a write transaction (py-lmdb may return a stale buffer there);
- seeks with an empty value (no pair can hold one: dupsort values are 1-511 bytes);
- answers in which py-lmdb names a key that was never stored: in write transactions
  its key buffers sometimes point at bytes that changed since (seen with
  dupsort keys holding a single value); the answer is then not LMDB's data.
"""

from __future__ import annotations

import itertools
import os

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmm
from kvmm.check import check_env

KEYS = [b"a", b"b", b"c", b"a\x00", b"ab", b"\x00", b"\x00\x00"]
VALUES = [b"1", b"2", b"3", b"\x00", b"\x00\x01", b"zz", b"y" * 511]

SEEKS = {"first", "last", "set_key", "set_range", "set_key_dup", "set_range_dup",
         "getmulti", "put", "pop", "replace", "iternext", "iterprev", "iternext_nodup",
         "iterprev_nodup"}
WRITES = {"put", "delete", "replace", "pop"}
CURSOR_OPS = ["first", "last", "next", "prev", "set_key", "set_range", "set_key_dup",
              "set_range_dup", "first_dup", "last_dup", "next_dup", "prev_dup",
              "next_nodup", "prev_nodup", "count", "item", "delete", "iternext_dup",
              "iternext_nodup", "iterprev_dup", "iterprev_nodup", "iternext", "iterprev",
              "getmulti", "put", "pop", "replace"]

key_st = st.sampled_from(KEYS)
value_st = st.sampled_from(VALUES)
txn_op = st.one_of(
    st.tuples(st.just("txn"), st.just("put"), st.tuples(key_st, value_st),
              st.fixed_dictionaries({"dupdata": st.booleans(), "overwrite": st.booleans()})),
    st.tuples(st.just("txn"), st.just("delete"),
              st.tuples(key_st, st.sampled_from([b""] + VALUES)), st.just({})),
    st.tuples(st.just("txn"), st.sampled_from(["get", "pop"]), st.tuples(key_st),
              st.just({})),
    st.tuples(st.just("txn"), st.just("replace"), st.tuples(key_st, value_st), st.just({})),
)


@st.composite
def cursor_op(draw):
    name = draw(st.sampled_from(CURSOR_OPS))
    k, v = draw(key_st), draw(value_st)
    args = {"set_key": (k,), "set_range": (k,), "set_key_dup": (k, v),
            "set_range_dup": (k, v), "getmulti": ([k, draw(key_st)],), "put": (k, v),
            "pop": (k,), "replace": (k, v)}.get(name, ())
    kwargs = {}
    if name == "delete" or name == "getmulti":
        kwargs = {"dupdata": draw(st.booleans())}
    return ("cur", name, args, kwargs)


ops_st = st.lists(st.one_of(txn_op, cursor_op()), min_size=1, max_size=60)


def _call(obj, name, args, kwargs):
    try:
        result = getattr(obj, name)(*args, **kwargs)
    except lmdb.Error as e:  # kvmm's errors carry py-lmdb's names
        return ("err", type(e).__name__)
    except kvmm.Error as e:
        return ("err", type(e).__name__)
    if hasattr(result, "__next__"):
        result = list(itertools.islice(result, 6))[1:]  # see the module docstring
    return ("ok", result)


def _alien(answer) -> bool:
    """Whether py-lmdb's answer names a key that was never stored (see above)."""
    def keys_in(x):
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], bytes):
            yield x[0]
        elif isinstance(x, (list, tuple)):
            for item in x:
                yield from keys_in(item)
    return any(k and k not in KEYS for k in keys_in(answer))


def _open_pair(tmp):
    ref = lmdb.open(os.path.join(tmp, "lmdb"), max_dbs=2, map_size=1 << 26)
    sub = kvmm.open(os.path.join(tmp, "kvmm"), max_dbs=2)
    return (sub, sub.open_db(b"d", dupsort=True)), (ref, ref.open_db(b"d", dupsort=True))


@settings(max_examples=int(os.environ.get("KVMM_DUP_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=ops_st)
def test_dupsort_answers_and_contents_match_py_lmdb(tmp_path_factory, ops):
    tmp = str(tmp_path_factory.mktemp("dup"))
    (sub_env, sub_db), (ref_env, ref_db) = _open_pair(tmp)
    try:
        sub_txn = sub_env.begin(write=True, db=sub_db)
        ref_txn = ref_env.begin(write=True, db=ref_db)
        sub_cur, ref_cur = sub_txn.cursor(), ref_txn.cursor()
        for step, (target, name, args, kwargs) in enumerate(ops):
            before = sub_cur.item()
            ref_before = ref_cur.item()
            skip = target == "cur" and not (before[0] and ref_before[0]) and name not in SEEKS
            sub = _call(sub_txn if target == "txn" else sub_cur, name, args, kwargs)
            ref = _call(ref_txn if target == "txn" else ref_cur, name, args, kwargs)
            where = f"step {step}: {target}.{name}{args} {kwargs}"
            if not skip and not _alien(ref):
                assert sub == ref, f"{where}: kvmm {sub!r}, py-lmdb {ref!r}"
            failed = sub[0] == "err" or sub[1] is False or ref[0] == "err" or ref[1] is False
            if skip or failed or target == "txn" or name in WRITES:
                for cur in (sub_cur, ref_cur):
                    if not (before[0] and cur.set_key_dup(*before)):
                        cur.first()
            sub_at, ref_at = sub_cur.item(), ref_cur.item()
            if name in ("first_dup", "last_dup"):
                sub_at, ref_at = sub_at[1], ref_at[1]
            if name != "count" and not _alien(ref_at):
                assert sub_at == ref_at, f"{where}: kvmm at {sub_at!r}, py-lmdb {ref_at!r}"
        assert list(sub_txn.cursor()) == list(ref_txn.cursor())
        assert sub_txn.stat(sub_db)["entries"] == ref_txn.stat(ref_db)["entries"]
        sub_txn.commit()
        ref_txn.commit()
        assert check_env(sub_env) == []
    finally:
        sub_env.close()
        ref_env.close()


def test_dupsort_flag_is_kept_and_later_opens_get_it_whatever_they_pass(tmp_path):
    """As py-lmdb's open_db: an existing database keeps the flags it was made with."""
    env = kvmm.open(tmp_path / "db", max_dbs=4)
    env.open_db(b"dups", dupsort=True)
    env.open_db(b"plain")
    env.close()
    env = kvmm.open(tmp_path / "db", max_dbs=4)
    assert not env.open_db(b"plain", dupsort=True).flags()["dupsort"]
    db = env.open_db(b"dups")
    assert db.flags()["dupsort"]
    with env.begin(write=True, db=db) as txn:
        assert txn.put(b"k", b"v1") and txn.put(b"k", b"v2")
        assert txn.stat(db)["entries"] == 2
    env.close()


def test_dupsort_values_are_one_to_511_bytes_as_in_lmdb(env):
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        with pytest.raises(kvmm.BadValsizeError):
            txn.put(b"k", b"")
        with pytest.raises(kvmm.BadValsizeError):
            txn.put(b"k", b"v" * 512)
        assert txn.put(b"k", b"v" * 511)
        assert txn.get(b"k") == b"v" * 511


def test_a_key_with_many_values_costs_log_n_per_operation(tmp_path):
    """A key with 10^6 values (KVMM_DUP_MANY to change it): adding, finding, counting
    and deleting one value stay fast because every pair is a B+tree entry."""
    n = int(os.environ.get("KVMM_DUP_MANY", "1000000"))
    env = kvmm.open(tmp_path / "db", max_dbs=2, sync=False)
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        cur = txn.cursor()
        consumed, added = cur.putmulti(((b"key", b"%09d" % i) for i in range(n)),
                                       append=True)
        assert (consumed, added) == (n, n)
    with env.begin(db=db) as txn:
        cur = txn.cursor()
        assert cur.set_key(b"key") and cur.count() == n
        assert txn.stat(db)["entries"] == n
        assert txn.stat(db)["depth"] >= 3
        # One seek finds a value in the middle without walking its neighbours.
        assert cur.set_key_dup(b"key", b"%09d" % (n // 2))
        assert cur.next_dup() and cur.value() == b"%09d" % (n // 2 + 1)
        assert cur.last_dup() and cur.value() == b"%09d" % (n - 1)
    with env.begin(write=True, db=db) as txn:
        assert txn.delete(b"key", b"%09d" % 7)
        assert not txn.delete(b"key", b"%09d" % 7)
        assert txn.put(b"key", b"%09d" % 7)
        assert txn.delete(b"key")  # every value at once
        assert txn.stat(db)["entries"] == 0 and txn.get(b"key") is None
    assert check_env(env) == []
    env.close()


def test_check_reports_a_dupsort_entry_that_is_not_a_pair(tmp_path, monkeypatch):
    from kvmm.btree import descend, insert

    monkeypatch.setattr(kvmm.txn, "_STRICT", False)  # the damage is on purpose
    env = kvmm.open(tmp_path / "db", max_dbs=2)
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        txn.put(b"k", b"v")
        state = txn._state(db)
        # Written past the API, as a damaged file would hold it: no key terminator.
        insert(txn, state, descend(txn.load, state, b"zzz"), b"zzz", b"", 0, False)
    problems = check_env(env)
    assert any("without a key terminator" in p for p in problems), problems
    env.close()


@pytest.mark.parametrize("buffers", [False, True])
def test_read_transactions_iterate_dupsort_databases_empty_or_not(env, buffers):
    """Iteration of a read transaction walks the leaves: an empty database yields
    nothing, and with buffers=True the pairs are split from the tree's bytes."""
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(db=db, buffers=buffers) as txn:
        assert list(txn.cursor().iternext()) == list(txn.cursor().iterprev()) == []
    with env.begin(write=True, db=db) as txn:
        for v in (b"2", b"1", b"3"):
            txn.put(b"k", v)
    with env.begin(db=db, buffers=buffers) as txn:
        got = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        cur = txn.cursor()
        assert cur.set_key(b"k")
        dups = [bytes(v) for v in cur.iternext_dup()]
    assert got == [(b"k", b"1"), (b"k", b"2"), (b"k", b"3")] and dups == [b"1", b"2", b"3"]


def test_puts_answer_as_py_lmdb_where_a_keys_pairs_span_leaves(tmp_path):
    """A put finds whether its key has pairs beside the place of the new pair in
    its leaf, and looks again from the key's first pair when that place is at an end
    of the leaf: long values over few keys put many such places at leaf ends."""
    import random

    rng = random.Random(5)
    ours = kvmm.open(str(tmp_path / "k"), max_dbs=2)
    theirs = lmdb.open(str(tmp_path / "l"), max_dbs=2, map_size=1 << 28)
    kdb, ldb = ours.open_db(b"d", dupsort=True), theirs.open_db(b"d", dupsort=True)
    keys = [bytes([65 + i]) * (1 + i % 3) for i in range(12)]
    with ours.begin(write=True) as kt, theirs.begin(write=True) as lt:
        for n in range(4000):
            key = rng.choice(keys)
            value = rng.randbytes(rng.randrange(1, 300))
            if n % 7 == 0:
                value = value[:1]  # short values collide: existing pairs
            kw = {"dupdata": rng.random() < 0.8, "overwrite": rng.random() < 0.8}
            assert kt.put(key, value, db=kdb, **kw) == lt.put(key, value, db=ldb, **kw), n
    with ours.begin(db=kdb) as kt, theirs.begin(db=ldb) as lt:
        assert list(kt.cursor()) == list(lt.cursor())
        assert kt.stat(kdb)["leaf_pages"] > 50
    assert check_env(ours) == []
    ours.close()
    theirs.close()
