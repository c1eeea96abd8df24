"""Nested write transactions (kvmm/nested.py), with py-lmdb as the oracle where it
defines the answer: a child sees its parent's changes, its commit folds into the
parent and its abort drops exactly its own; the parent refuses use meanwhile; the
parent's cursors work in the child; the savepoint restores a large parent exactly.
"""

from __future__ import annotations

import gc
import random
import threading

import lmdb
import pytest

import kvmm
from kvmm.check import check_env

LMDB_MAP_SIZE = 256 * 1024 * 1024


def _outcome(fn):
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - the class is what is compared
        return ("err", type(e).__name__)
    if isinstance(value, (memoryview, bytearray)):
        value = bytes(value)
    return ("ok", value)


def _both(tmp_path):
    return (kvmm.open(str(tmp_path / "kvmm"), max_dbs=4),
            lmdb.open(str(tmp_path / "lmdb"), map_size=LMDB_MAP_SIZE, max_dbs=4))


def _same(tmp_path, scenario):
    """Run ``scenario(mod, env, log)`` on kvmm and py-lmdb; their logs must agree."""
    logs = []
    for mod, env in zip((kvmm, lmdb), _both(tmp_path)):
        log: list = []
        try:
            scenario(mod, env, lambda what, fn, log=log: log.append((what, _outcome(fn))))
        finally:
            env.close()
        logs.append(log)
    assert logs[0] == logs[1]
    return logs[0]


def _contents(env):
    with env.begin() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor()]


def test_child_sees_parent_commit_folds_in_abort_drops_its_own(tmp_path):
    def scenario(mod, env, log):
        parent = env.begin(write=True)
        parent.put(b"a", b"parent")
        child = env.begin(write=True, parent=parent)
        log("child sees parent", lambda: child.get(b"a"))
        child.put(b"a", b"child")
        child.put(b"b", b"child")
        log("child id is parent's", lambda: child.id() == parent.id())
        child.abort()
        log("after abort a", lambda: parent.get(b"a"))
        log("after abort b", lambda: parent.get(b"b"))
        child = mod.Transaction(env, write=True, parent=parent)
        child.put(b"c", b"child")
        child.delete(b"a")
        child.commit()
        log("after commit", lambda: list(parent.cursor()))
        parent.commit()
        log("committed", lambda: _contents(env))

    log = _same(tmp_path, scenario)
    assert ("committed", ("ok", [(b"c", b"child")])) in log


def test_parent_refuses_use_while_a_child_is_open(tmp_path):
    def scenario(mod, env, log):
        db = env.open_db(b"sub")
        parent = env.begin(write=True)
        parent.put(b"k", b"v")
        cur = parent.cursor()
        child = env.begin(write=True, parent=parent)
        log("get", lambda: parent.get(b"k"))
        log("put", lambda: parent.put(b"k", b"w"))
        log("delete", lambda: parent.delete(b"k"))
        log("pop", lambda: parent.pop(b"k"))
        log("replace", lambda: parent.replace(b"k", b"w"))
        log("cursor", lambda: parent.cursor())
        log("stat", lambda: parent.stat(db)["entries"])
        log("drop", lambda: parent.drop(db, delete=False))
        log("open_db", lambda: env.open_db(b"new", txn=parent))
        log("second child", lambda: env.begin(write=True, parent=parent))
        log("id", lambda: parent.id() == child.id())
        log("parent's cursor works in the child", lambda: cur.first() and cur.item())
        child.abort()
        log("usable again", lambda: parent.get(b"k"))
        parent.abort()

    log = _same(tmp_path, scenario)
    assert ("get", ("err", "BadTxnError")) in log


def test_read_only_parents_and_children_are_refused(tmp_path):
    def scenario(mod, env, log):
        reader = env.begin()
        log("child of a read txn", lambda: env.begin(parent=reader))
        log("write child of a read txn", lambda: env.begin(write=True, parent=reader))
        reader.abort()
        writer = env.begin(write=True)
        log("read child of a write txn", lambda: mod.Transaction(env, parent=writer))
        writer.commit()
        log("child of an ended txn", lambda: env.begin(write=True, parent=writer))

    log = _same(tmp_path, scenario)
    assert log[0] == ("child of a read txn", ("err", "InvalidParameterError"))


def test_parent_of_another_environment_is_refused(tmp_path):
    env, other = (kvmm.open(str(tmp_path / name)) for name in ("a", "b"))
    try:
        parent = env.begin(write=True)
        with pytest.raises(kvmm.InvalidParameterError):
            other.begin(write=True, parent=parent)
        parent.put(b"k", b"v")  # the failed begin left the parent alone
        parent.commit()
        with other.begin(write=True) as txn:  # ... and the other's writer lock free
            txn.put(b"k", b"v")
    finally:
        env.close()
        other.close()


def test_parent_commit_or_abort_ends_open_children_first(tmp_path):
    def scenario(mod, env, log):
        for end in ("commit", "abort", "__exit__"):
            parent = env.begin(write=True)
            parent.put(b"p-" + end.encode(), b"1")
            child = env.begin(write=True, parent=parent)
            child.put(b"c-" + end.encode(), b"1")
            grandchild = env.begin(write=True, parent=child)
            grandchild.put(b"g-" + end.encode(), b"1")
            if end == "__exit__":
                parent.__exit__(None, None, None)
            else:
                getattr(parent, end)()
            log(end, lambda: _contents(env))
            log(end + ": child ended", lambda child=child: child.get(b"x"))
            log(end + ": grandchild ended", lambda g=grandchild: g.put(b"x", b"y"))

    log = _same(tmp_path, scenario)
    assert log[-3][1] == ("ok", [(b"p-__exit__", b"1"), (b"p-commit", b"1")])


def test_three_levels_fold_and_drop_as_py_lmdb(tmp_path):
    def scenario(mod, env, log):
        top = env.begin(write=True)
        top.put(b"t", b"1")
        mid = env.begin(write=True, parent=top)
        mid.put(b"m", b"1")
        low = env.begin(write=True, parent=mid)
        low.put(b"l", b"1")
        low.delete(b"t")
        low.commit()
        log("mid sees low's", lambda: list(mid.cursor()))
        low = env.begin(write=True, parent=mid)
        low.put(b"l2", b"1")
        low.abort()
        mid.abort()
        log("top without mid's", lambda: list(top.cursor()))
        mid = env.begin(write=True, parent=top)
        low = env.begin(write=True, parent=mid)
        low.put(b"deep", b"1")
        low.commit()
        mid.commit()
        top.commit()
        log("committed", lambda: _contents(env))

    _same(tmp_path, scenario)


def test_parent_cursors_work_in_the_child_and_come_back(tmp_path):
    """LMDB moves a parent's cursors into its child: they see the child's changes; the
    child's commit leaves them where they stand, its abort puts them back."""

    def scenario(mod, env, log):
        with env.begin(write=True) as txn:
            for k in b"acegi":
                txn.put(bytes([k]), b"v")
        parent = env.begin(write=True)
        cur = parent.cursor()
        cur.set_key(b"c")
        child = env.begin(write=True, parent=parent)
        child.put(b"b", b"child")
        log("prev sees the child's", lambda: (cur.prev(), cur.item()))
        log("delete in the child", lambda: (cur.delete(), cur.item()))
        child.abort()
        log("back where it stood", lambda: cur.item())
        log("next", lambda: (cur.next(), cur.item()))
        child = env.begin(write=True, parent=parent)
        log("first", lambda: (cur.first(), cur.item()))
        log("delete", lambda: (cur.delete(), cur.item()))
        own = child.cursor()
        own.first()
        child.commit()
        log("stays after commit", lambda: cur.item())
        log("the child's own cursor ended", lambda: own.item())
        log("contents", lambda: list(parent.cursor()))
        parent.abort()

    _same(tmp_path, scenario)


def test_named_databases_opened_in_a_child(tmp_path):
    def scenario(mod, env, log):
        parent = env.begin(write=True)
        child = env.begin(write=True, parent=parent)
        gone = env.open_db(b"gone", txn=child)
        child.put(b"k", b"v", db=gone)
        child.abort()
        # py-lmdb raises InvalidParameterError, kvmm BadDbiError: both refuse.
        log("handle of an aborted child refused",
            lambda: _outcome(lambda: parent.get(b"k", db=gone))[0] == "err")
        child = env.begin(write=True, parent=parent)
        kept = env.open_db(b"kept", txn=child, dupsort=True)
        child.put(b"k", b"v", db=kept)
        child.commit()
        log("kept", lambda: parent.get(b"k", db=kept))
        parent.commit()
        with env.begin() as txn:
            log("names", lambda: [k for k, _ in txn.cursor()])
            log("flags", lambda: kept.flags())

    log = _same(tmp_path, scenario)
    assert log[0][1] == ("ok", True)


def _shuffled(n, seed):
    keys = [b"%06d" % i for i in range(n)]
    random.Random(seed).shuffle(keys)
    return keys


def test_child_abort_restores_a_large_parent_exactly(env):
    """A parent with a three-level tree of dirty pages, overflow values, a named
    database and free pages; a child that splits, merges, drops and reuses pages.
    After the abort the parent holds exactly what it held and commits a file that
    passes the checker (no page lost or used twice)."""
    named = env.open_db(b"named")
    big = b"B" * 9000
    with env.begin(write=True) as txn:
        for key in _shuffled(3000, 1):
            txn.put(key, key * 20)
    parent = env.begin(write=True)
    for key in _shuffled(3000, 2)[:1500]:
        parent.put(key, key * 25)
    for key in _shuffled(3000, 3)[:500]:
        parent.delete(key)
    parent.put(b"big", big)
    parent.put(b"n", b"1", db=named)
    def state():
        # The main database's record of ``named`` is brought up to date at commit.
        main = [kv for kv in parent.cursor() if kv[0] != b"named"]
        return (main, list(parent.cursor(named)), parent.stat(None), parent.stat(named),
                sorted(parent._dirty), sorted(parent._ovf_dirty), parent.next_pgno)

    before = state()
    for end in ("abort", "commit-then-abort"):
        child = env.begin(write=True, parent=parent)
        for key in _shuffled(4000, 4)[:2500]:
            child.put(key, b"c" * 300)
        for key in _shuffled(3000, 5)[:2000]:
            child.delete(key)
        child.put(b"big", big + b"2")
        child.delete(b"n", db=named)
        child.drop(named, delete=False)
        child.put(b"m", b"2", db=named)
        if end == "commit-then-abort":
            grandchild = env.begin(write=True, parent=child)
            grandchild.put(b"g", b"g" * 5000)
            grandchild.commit()
        child.abort()
        assert state() == before
    parent.commit()
    assert check_env(env) == []
    with env.begin() as txn:
        assert [kv for kv in txn.cursor() if kv[0] != b"named"] == before[0]
        assert list(txn.cursor(named)) == before[1]


def test_child_commit_keeps_every_change_in_the_file(env):
    with env.begin(write=True) as txn:
        for key in _shuffled(2000, 6):
            txn.put(key, key)
    parent = env.begin(write=True)
    want = {}
    for level in range(3):
        child = env.begin(write=True, parent=parent)
        for key in _shuffled(2000, 10 + level)[:700]:
            child.put(key, b"%d" % level * 100)
            want[key] = b"%d" % level * 100
        child.commit()
    parent.commit()
    assert check_env(env) == []
    with env.begin() as txn:
        got = dict(txn.cursor())
    assert all(got[k] == v for k, v in want.items()) and len(got) == 2000


def _commit_noting_errors(txn, errors: list) -> None:
    try:
        txn.commit()
    except kvmm.Error as e:
        errors.append(str(e))


def test_parent_abort_while_its_child_commits_in_another_thread(tmp_path):
    """py-lmdb's issue 180: the two end one after the other; nothing is committed and
    the writer lock is free afterwards."""
    env = kvmm.open(str(tmp_path / "db"))
    try:
        for _ in range(20):
            parent = env.begin(write=True)
            child = env.begin(write=True, parent=parent)
            for j in range(50):
                child.put(j.to_bytes(8, "big"), b"x" * 200)
            errors: list = []
            thread = threading.Thread(target=_commit_noting_errors, args=(child, errors))
            thread.start()
            parent.abort()
            thread.join()
            assert all("ended" in e for e in errors)
        assert _contents(env) == [] and check_env(env) == []
        with env.begin(write=True) as txn:
            txn.put(b"after", b"1")
    finally:
        env.close()


def test_a_refused_second_write_transaction_leaves_the_first_its_lock(env):
    """begin(write=True) while this thread holds a write transaction raises; the
    refused transaction's finalizer must not release the first one's writer lock."""
    first = env.begin(write=True)
    with pytest.raises(kvmm.BadTxnError):
        env.begin(write=True)
    gc.collect()
    first.put(b"k", b"v")
    first.commit()
    assert _contents(env) == [(b"k", b"v")]


def test_dropping_a_parent_with_an_open_child_frees_the_writer(env):
    parent = env.begin(write=True)
    parent.put(b"k", b"v")
    child = env.begin(write=True, parent=parent)
    child.put(b"c", b"v")
    del parent, child
    gc.collect()
    with env.begin(write=True) as txn:
        assert txn.get(b"k") is None
        txn.put(b"k", b"w")
    assert _contents(env) == [(b"k", b"w")]


def test_a_dropped_child_aborts_at_once_and_a_dropped_family_frees_the_writer(tmp_path):
    """As py-lmdb, by reference counting alone (the cyclic collector is off): a child
    dropped without commit or abort is aborted and its parent goes on; a parent and
    child dropped together free the writer lock at once."""
    def drop_a_child(env, parent):
        child = env.begin(write=True, parent=parent)
        child.put(b"child", b"v")

    def drop_a_family(env):
        parent = env.begin(write=True)
        parent.put(b"parent", b"v")
        drop_a_child(env, parent)
        env.begin(write=True, parent=parent).put(b"child", b"v")

    def scenario(mod, env, log):
        parent = env.begin(write=True)
        parent.put(b"a", b"1")
        drop_a_child(env, parent)
        log("parent's own", lambda: parent.get(b"a"))
        log("dropped child's", lambda: parent.get(b"child"))
        log("parent put", lambda: parent.put(b"b", b"2"))
        log("parent commit", parent.commit)
        drop_a_family(env)
        with env.begin(write=True) as txn:
            log("after the family", lambda: [txn.get(k) for k in (b"parent", b"child")])
        log("contents", lambda: _contents(env))

    gc.collect()
    gc.disable()
    try:
        log = _same(tmp_path, scenario)
    finally:
        gc.enable()
    assert log[-1] == ("contents", ("ok", [(b"a", b"1"), (b"b", b"2")]))
