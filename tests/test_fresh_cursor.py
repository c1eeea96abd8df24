"""A cursor never positioned, on a dupsort database: dup moves as LMDB's
(docs/reference.md section 5), with py-lmdb as the oracle. next_dup/prev_dup move to the first/last pair, as
next/prev do; first_dup/last_dup/count need a current key: InvalidParameterError."""

from __future__ import annotations

import pytest

import kvmm

MOVES = ["next_dup", "prev_dup", "first_dup", "last_dup", "next_nodup", "prev_nodup",
         "count"]


def _fresh_cursor_outcome(e, move: str, pairs):
    db = e.open_db(b"dups", dupsort=True)
    with e.begin(write=True, db=db) as txn:
        for k, v in pairs:
            txn.put(k, v)
    with e.begin(db=db) as txn:
        cur = txn.cursor()
        try:
            result = getattr(cur, move)()
        except Exception as exc:  # noqa: BLE001 - the error's class is the outcome
            return type(exc).__name__
        return result, cur.item()


@pytest.mark.parametrize("pairs", [
    [(b"a", b"1"), (b"a", b"2"), (b"b", b"1"), (b"b", b"2"), (b"b", b"3")],
    [(b"only", b"x")],
    [],
], ids=["two keys", "one pair", "empty"])
@pytest.mark.parametrize("move", MOVES)
def test_a_fresh_dupsort_cursor_moves_as_py_lmdb(env, lmdb_env, move, pairs):
    got = _fresh_cursor_outcome(env, move, pairs)
    assert got == _fresh_cursor_outcome(lmdb_env, move, pairs)


def test_next_dup_of_a_fresh_cursor_then_walks_the_first_keys_values(env):
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        for v in (b"1", b"2", b"3"):
            txn.put(b"a", v)
        txn.put(b"b", b"1")
        cur = txn.cursor()
        seen = []
        while cur.next_dup():
            seen.append(cur.item())
        assert seen == [(b"a", b"1"), (b"a", b"2"), (b"a", b"3")]
        with pytest.raises(kvmm.InvalidParameterError):
            txn.cursor().first_dup()
