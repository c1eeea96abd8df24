"""``map_size``: when passed, the cap on the file's pages, as in LMDB; ``set_mapsize``
moves it with py-lmdb's rules; not passed, no cap (docs/reference.md section 3)."""

from __future__ import annotations

import os
import threading

import pytest

import kvmm

PS = 4096
MIB = 1 << 20


def _put_until_full(env, value=b"v" * 100, limit=3000) -> int:
    """Commit one put at a time until a commit raises MapFullError; how many went in."""
    for i in range(limit):
        try:
            with env.begin(write=True) as txn:
                txn.put(b"k%06d" % i, value)
        except kvmm.MapFullError:
            return i
    raise AssertionError(f"{limit} commits fitted under the cap")


def _contents(env) -> dict:
    with env.begin() as txn:
        return dict(txn.cursor())


def test_a_commit_past_map_size_raises_map_full_and_changes_nothing(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path, map_size=16 * PS) as env:
        n = _put_until_full(env)
        assert n > 0
        before = _contents(env)
        info = env.info()
        assert (info["last_pgno"] + 1) * PS <= 16 * PS
        with pytest.raises(kvmm.MapFullError), env.begin(write=True) as txn:
            txn.put(b"big", b"x" * (20 * PS))
        assert _contents(env) == before
        assert env.info()["last_txnid"] == info["last_txnid"]
        # Deletes still commit: they need no more pages than the cap.
        with env.begin(write=True) as txn:
            txn.delete(b"k000000")
    with kvmm.open(path) as env:  # no cap when not passed: the same file takes more
        assert len(_contents(env)) == n - 1
        with env.begin(write=True) as txn:
            txn.put(b"big", b"x" * (20 * PS))


def test_map_size_below_the_pages_in_use_is_raised_to_them_as_lmdb_does(tmp_path):
    with kvmm.open(str(tmp_path / "db"), map_size=10) as env:
        assert env.info()["map_size"] == 2 * PS  # the two metas
        with pytest.raises(kvmm.MapFullError), env.begin(write=True) as txn:
            txn.put(b"a", b"a")
        assert env.info()["last_txnid"] == 0


def test_info_reports_the_cap_and_without_one_the_file_size(tmp_path):
    with kvmm.open(str(tmp_path / "a"), map_size=8 * PS + 1) as env:
        assert env.info()["map_size"] == 8 * PS + 1
    with kvmm.open(str(tmp_path / "b")) as env:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        assert env.info()["map_size"] == os.path.getsize(tmp_path / "b" / "data.kvmm")
    with kvmm.open(str(tmp_path / "c"), map_size=64 * PS, max_size=32 * PS) as env:
        assert env.info()["map_size"] == 32 * PS  # the smaller cap is the one in force


def test_set_mapsize_moves_the_cap(tmp_path):
    big = b"v" * 1000
    with kvmm.open(str(tmp_path / "db"), map_size=16 * PS) as env:
        n = _put_until_full(env, big)
        env.set_mapsize(48 * PS)
        assert env.info()["map_size"] == 48 * PS
        assert _put_until_full(env, big) > n
        used = (env.info()["last_pgno"] + 1) * PS
        env.set_mapsize(PS)  # below the pages in use: raised to them
        assert env.info()["map_size"] == used


def test_set_mapsize_zero_adopts_the_file_size(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v" * (3 * MIB))
    with kvmm.open(path, map_size=PS) as env:
        env.set_mapsize(0)
        size = os.path.getsize(os.path.join(path, "data.kvmm"))
        assert env.info()["map_size"] == size
        with pytest.raises(kvmm.MapFullError), env.begin(write=True) as txn:
            txn.put(b"more", b"v" * size)  # a cap, not a hint


def test_set_mapsize_without_map_size_sets_a_cap(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        env.set_mapsize(16 * PS)
        assert _put_until_full(env) > 0
        assert (env.info()["last_pgno"] + 1) * PS <= 16 * PS


def test_set_mapsize_is_refused_during_a_write_transaction(tmp_path):
    with kvmm.open(str(tmp_path / "db"), map_size=16 * PS) as env:
        txn = env.begin(write=True)
        with pytest.raises(kvmm.Error):
            env.set_mapsize(32 * PS)
        assert env.info()["map_size"] == 16 * PS
        txn.put(b"k", b"v")  # the transaction goes on
        txn.commit()


def test_set_mapsize_waits_for_another_threads_write_transaction(tmp_path):
    """Refused only in the thread that has the write transaction open: from another
    thread it waits for that transaction to end, as a second writer would (a thread
    committing in a loop otherwise left it no gap to move the cap in)."""
    with kvmm.open(str(tmp_path / "db"), map_size=16 * PS) as env:
        opened, release = threading.Event(), threading.Event()

        def write():
            with env.begin(write=True) as txn:
                txn.put(b"k", b"v")
                opened.set()
                release.wait(10)

        writer = threading.Thread(target=write)
        writer.start()
        assert opened.wait(10)
        moved: list = []
        resizer = threading.Thread(target=lambda: moved.append(env.set_mapsize(32 * PS)))
        resizer.start()
        resizer.join(0.3)
        assert resizer.is_alive() and not moved  # waiting for the write transaction
        release.set()
        writer.join(10)
        resizer.join(10)
        assert moved == [None]
        assert env.info()["map_size"] == 32 * PS
        with env.begin() as txn:
            assert txn.get(b"k") == b"v"  # the transaction it waited for committed


def test_set_mapsize_ends_read_transactions_and_their_cursors(tmp_path):
    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        db = env.open_db(b"named")
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v", db=db)
        txn = env.begin()
        cur = txn.cursor(db=db)
        assert cur.first()
        env.set_mapsize(64 * PS)
        with pytest.raises(kvmm.Error):
            txn.get(b"k", db=db)
        with pytest.raises(kvmm.Error):
            cur.first()
        with env.begin(db=db) as fresh:  # handles opened before stay usable
            assert fresh.get(b"k") == b"v"


@pytest.mark.parametrize("size", [-1, -2015])
def test_negative_map_sizes_raise_overflow_error(tmp_path, size):
    with pytest.raises(OverflowError):
        kvmm.open(str(tmp_path / "a"), map_size=size)
    with kvmm.open(str(tmp_path / "b")) as env, pytest.raises(OverflowError):
        env.set_mapsize(size)


def test_a_full_map_with_sync_off_still_takes_a_delete(tmp_path):
    # py-lmdb's TxnFullTest: a store filled to its cap one commit at a time.
    with kvmm.open(str(tmp_path / "db"), map_size=9 * PS, sync=False) as env:
        n = _put_until_full(env, value=b"x")
        assert n > 0
        with env.begin(write=True) as txn:
            assert txn.delete(b"k000001")
        assert len(_contents(env)) == n - 1
