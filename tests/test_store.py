"""The store (kvmm.store) and the seam it makes: transactions use an environment's
files through the store's public interface, not the environment's private names."""

from __future__ import annotations

import pathlib
import re

import pytest

import kvmm
import kvmm.reclaim
import kvmm.store
from kvmm.errors import BadTxnError, MapFullError

KVMM_DIR = pathlib.Path(kvmm.__file__).parent
#: What Transaction and kvmm.nested may still read of the environment: how to find
#: its store, and its database handles (the environment's own job).
ENV_NAMES_ALLOWED = {"_store", "_main_db", "_forget_db"}


def _public(cls) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


@pytest.mark.parametrize("module", ["txn.py", "nested.py"])
def test_transactions_reach_into_the_environment_only_for_its_store_and_handles(module):
    text = (KVMM_DIR / module).read_text()
    used = set(re.findall(r"\benv\._(\w+)", text))
    assert {"_" + name for name in used} <= ENV_NAMES_ALLOWED


@pytest.mark.parametrize(("module", "cls"), [(kvmm.store, kvmm.store.Store),
                                             (kvmm.reclaim, kvmm.reclaim.ReclaimPolicy)])
def test_the_module_docstring_lists_every_public_call(module, cls):
    methods = {name for name in _public(cls) if callable(getattr(cls, name))}
    assert methods
    missing = {name for name in methods if f"``{name}(" not in module.__doc__}
    assert not missing


def test_a_reader_slot_of_begin_read_shows_its_snapshot_until_end_read(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        store = env._store
        meta, slot, mm = store.begin_read()
        assert meta.txnid == env.info()["last_txnid"] == 1
        assert store.oldest_reader() == 1
        assert len(mm) >= meta.next_pgno * store.page_size
        store.end_read(slot)
        assert store.oldest_reader() is None


def test_begin_write_refuses_a_second_write_of_one_thread_and_end_write_lets_go(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        store = env._store
        store.begin_write()
        with pytest.raises(BadTxnError):
            store.begin_write()
        store.end_write()
        with env.begin(write=True) as txn:  # the lock is free again
            txn.put(b"k", b"v")
        assert store.writer_owner is None


def test_grow_past_the_cap_raises_map_full_error_and_leaves_the_file(tmp_path):
    with kvmm.open(str(tmp_path / "db"), map_size=1 << 20) as env:
        store = env._store
        size = store.datafile.size()
        with pytest.raises(MapFullError):
            store.grow((1 << 20) + store.page_size, txnid=5)
        assert store.datafile.size() == size
        store.grow(1 << 20, txnid=5)  # up to the cap it grows
        assert store.datafile.size() == 1 << 20


def test_a_large_commit_writes_its_pages_with_write_calls_a_small_one_through_the_map(
        tmp_path, monkeypatch):
    """Commits of more than MAP_WRITE_COMMIT pages go through DataFile.write (the pages
    are mostly clean, and a copy into a clean mapped page costs a write fault); the
    pages read back the same either way."""
    import kvmm.mapfile

    real = kvmm.mapfile.DataFile.write
    model = {b"%06d" % (i * 7919 % 5000): b"%d" % i * 20 for i in range(5000)}
    written = {}
    for limit in (0, 1 << 20):
        monkeypatch.setattr(kvmm.store, "MAP_WRITE_COMMIT", limit)
        calls: list[int] = []
        monkeypatch.setattr(kvmm.mapfile.DataFile, "write",
                            lambda self, at, chunks, calls=calls:
                            calls.append(len(chunks)) or real(self, at, chunks))
        with kvmm.open(str(tmp_path / str(limit))) as env:
            with env.begin(write=True) as txn:
                for key, value in model.items():
                    txn.put(key, value)
            for key in list(model)[::250]:  # small commits: a leaf and the root
                with env.begin(write=True) as txn:
                    txn.put(key, b"changed")
                    model[key] = b"changed"
            with env.begin() as txn:
                assert dict(txn.cursor()) == model
            pages = env.stat()["leaf_pages"] + env.stat()["branch_pages"]
        written[limit] = sum(calls)
    assert written[0] > pages + 20  # every page of every commit
    assert written[1 << 20] < written[0] - 20  # the small commits' went through the map


def test_with_sync_off_a_commit_becomes_steady_once_its_pinned_pages_or_written_bytes_pass_a_threshold(
        tmp_path, monkeypatch):
    """sync=False: pages freed that no steady commit reaches are reused at once, so
    freeing them never forces a flush; pages a steady commit reaches do, once they pass
    AUTOSYNC_MIN; bytes written do too, once they pass AUTOSYNC_WRITTEN."""
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_MIN", 16 * 4096)
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_WRITTEN", 1 << 30)
    keys = [b"%05d" % i for i in range(3000)]  # ~100 leaves

    def rewrite(env, round_: int) -> list[bool]:
        """40 commits, each rewriting 150 neighbouring keys (~5 leaves) of the next
        slice; whether each commit was steady."""
        steady = []
        for r in range(40):
            with env.begin(write=True) as txn:
                at = r % 20 * 150
                for key in keys[at : at + 150]:
                    txn.put(key, b"%d" % (round_ * 100 + r) * 30)
            with env.begin() as txn:
                steady.append(txn.meta.steady)
        return steady

    with kvmm.open(str(tmp_path / "a"), sync=False) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, b"-" * 90)
        # The steady commit is the empty database's: every freed page is reused at once.
        assert rewrite(env, 0) == [False] * 40
        env.sync()
        # Now each commit frees a few pages the steady commit reaches (here ~4, against
        # a threshold of an eighth of the file, 32 pages): every ninth is steady.
        steps = [i for i, s in enumerate(rewrite(env, 1)) if s]
        assert 3 <= len(steps) <= 20, steps
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_WRITTEN", 64 * 4096)
    with kvmm.open(str(tmp_path / "b"), sync=False) as env:
        steady = []
        for r in range(20):  # ~100 pages a commit, against a threshold of the file's size
            with env.begin(write=True) as txn:
                for key in keys:
                    txn.put(key, b"%d" % r * 30)
            with env.begin() as txn:
                steady.append(txn.meta.steady)
        assert 3 <= sum(steady) <= 15, steady  # written bytes alone make commits steady
