"""Free pages (kvmm/freelist.py): freed pages are reused, but never while a snapshot
that may still be read — by a live reader, or after a power loss with ``sync=False``
the last steady commit — reaches them (docs/reference.md sections 8 and 9).

Which pages a snapshot reaches is read with ``kvmm.check.Checker``'s ``seen`` map;
that a page was not reused is shown by its bytes in the data file being unchanged.
"""

from __future__ import annotations

import os
from itertools import pairwise

import pytest

import kvmm
import kvmm.env
import kvmm.store
from kvmm import format as fmt
from kvmm.check import Checker, check_env

KEYS = [b"key%05d" % i for i in range(2000)]
FEW_KEYS = KEYS[:500]


def data_path(env) -> str:
    return os.path.join(env.path(), "data.kvmm")


def rewrite_all(env, round_: int, keys=KEYS) -> None:
    """One commit giving every key a new value: every leaf and branch is rewritten."""
    with env.begin(write=True) as txn:
        for key in keys:
            txn.put(key, bytes([round_ % 256]) * 200)


def snapshot_pages(env, txn) -> list[int]:
    """The pages snapshot ``txn`` reaches: tree pages and overflow runs of every
    database, the free tree included (not the pages it lists as free)."""
    checker = Checker(env, txn)
    assert checker.run() == []
    pages = [
        p
        for p, what in checker.seen.items()
        if not what.startswith(("free record", "inline free list"))
    ]
    assert pages
    return sorted(pages)


def read_pages(env, pgnos) -> dict[int, bytes]:
    ps = env._page_size
    with open(data_path(env), "rb") as f:
        out = {}
        for p in pgnos:
            f.seek(p * ps)
            out[p] = f.read(ps)
    return out


def newest_meta(env) -> fmt.Meta:
    with env.begin() as txn:
        return txn.meta


def last_pgno(env) -> int:
    return env.info()["last_pgno"]


# --- a steady size ------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False])
def test_rewriting_the_same_keys_many_times_reaches_a_steady_file_size(tmp_path, sync):
    with kvmm.open(str(tmp_path / "db"), sync=sync) as env:
        last_pgnos, sizes = [], []
        for round_ in range(45):
            rewrite_all(env, round_)
            last_pgnos.append(last_pgno(env))
            sizes.append(os.path.getsize(data_path(env)))
        leaf_pages = env.stat()["leaf_pages"]
        assert check_env(env) == []
    # 45 rounds each rewrote every page: without reuse the file would hold 45 copies.
    assert max(last_pgnos[15:]) <= max(last_pgnos[:15]), last_pgnos
    assert max(sizes[15:]) <= max(sizes[:15]), sizes
    # With sync=False one more copy waits for the next steady commit (see below).
    assert max(last_pgnos) <= (2 if sync else 3) * (leaf_pages + 1) + 2


def test_with_sync_false_pages_of_the_last_steady_commit_are_not_reused_before_the_next(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "db")
    with kvmm.open(path, sync=False) as env:
        rewrite_all(env, 0, FEW_KEYS)
        env.sync()
        with env.begin() as txn:
            steady = txn.meta
            assert steady.steady
            pinned = snapshot_pages(env, txn)
            steady_contents = dict(txn.cursor())
        before = read_pages(env, pinned)
        peak = last_pgno(env)
        # Few enough bytes that no commit becomes steady by itself (AUTOSYNC_MIN,
        # AUTOSYNC_WRITTEN).
        assert 24 * (len(pinned) + 2) * env._page_size < kvmm.store.AUTOSYNC_MIN
        for round_ in range(1, 25):
            rewrite_all(env, round_, FEW_KEYS)
            meta = newest_meta(env)
            # Still weak: the steady commit is still the one a power loss returns to.
            assert not meta.steady and meta.txnid > steady.txnid
            assert read_pages(env, pinned) == before, f"round {round_}"
            peak = max(peak, last_pgno(env))
        # Pages written after the steady commit were reused at once: the file holds
        # the steady copy, about two more, not 24.
        assert peak <= 4 * len(pinned), (peak, len(pinned))
        assert check_env(env) == []
    # A power loss: the weak metas are of another boot now, and are skipped.
    monkeypatch.setattr(kvmm.env, "BOOT_ID", bytes(16) if any(kvmm.env.BOOT_ID) else b"x" * 16)
    with kvmm.open(path, sync=False) as env:
        with env.begin() as txn:
            assert txn.meta.txnid == steady.txnid
            assert dict(txn.cursor()) == steady_contents
        assert check_env(env) == []


def test_after_env_sync_the_old_steady_commits_pages_are_reused(tmp_path):
    with kvmm.open(str(tmp_path / "db"), sync=False) as env:
        rewrite_all(env, 0)
        env.sync()
        with env.begin() as txn:
            pinned = snapshot_pages(env, txn)
        before = read_pages(env, pinned)
        rewrite_all(env, 1)
        env.sync()  # the next steady commit: the first one's pages may go now
        for round_ in range(2, 6):
            rewrite_all(env, round_)
        after = read_pages(env, pinned)
        assert sum(after[p] != before[p] for p in pinned) > len(pinned) // 2
        assert check_env(env) == []


# --- readers ------------------------------------------------------------------------------


def test_a_live_reader_pins_its_snapshot_and_once_it_ends_its_pages_are_reused(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        rewrite_all(env, 0)
        reader = env.begin()
        pinned = snapshot_pages(env, reader)
        before = read_pages(env, pinned)
        grown = [last_pgno(env)]
        for round_ in range(1, 9):
            rewrite_all(env, round_)
            assert read_pages(env, pinned) == before, f"round {round_}"
            assert reader.get(KEYS[round_]) == bytes([0]) * 200
            grown.append(last_pgno(env))
        assert dict(reader.cursor()) == dict.fromkeys(KEYS, bytes([0]) * 200)
        # Nothing freed after the reader's snapshot was reused: the file kept growing.
        assert all(a < b for a, b in pairwise(grown)), grown
        reader.abort()
        after = []
        for round_ in range(9, 21):
            rewrite_all(env, round_)
            after.append(last_pgno(env))
        # The file stopped growing (it may even give pages back) and settled.
        assert all(b <= a for a, b in pairwise([grown[-1], *after])), (grown, after)
        assert len(set(after[-6:])) == 1, after
        assert check_env(env) == []


def test_pages_freed_while_a_reader_lived_are_reused_or_given_back_after_it_ends(tmp_path):
    """docs/reference.md section 9: pages freed by commits are reused once no reader
    can still see them —
    also the many copies a long reader kept out of reach: once it ends, the file
    comes back to the size it has without readers (two copies of the tree), whether
    the free pages are reused or given back to the file system."""
    with kvmm.open(str(tmp_path / "db")) as env:
        rewrite_all(env, 0)
        reader = env.begin()
        for round_ in range(1, 9):
            rewrite_all(env, round_)
        reader.abort()
        held = newest_meta(env).next_pgno
        tree = env.stat()["leaf_pages"] + env.stat()["branch_pages"]
        assert held >= 8 * tree  # eight copies were kept for the reader
        for round_ in range(9, 30):
            rewrite_all(env, round_)
        meta = newest_meta(env)
        free = meta.free[4] + len(meta.inline_free) // 2
        assert meta.next_pgno <= 2 * tree + 4, (held, meta.next_pgno, tree)
        assert free <= tree + 4, (free, tree)
        assert check_env(env) == []


def test_a_reader_pins_overflow_runs_too(tmp_path):
    big = {b"big%d" % i: bytes([i]) * 20_000 for i in range(5)}
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for k, v in big.items():
                txn.put(k, v)
        reader = env.begin()
        pinned = snapshot_pages(env, reader)
        assert len(pinned) >= 5 * fmt.overflow_pages(20_000, 4096)
        before = read_pages(env, pinned)
        for round_ in range(4):
            with env.begin(write=True) as txn:
                for k in big:
                    txn.put(k, bytes([100 + round_]) * 20_000)
        assert read_pages(env, pinned) == before
        assert {k: reader.get(k) for k in big} == big
        reader.abort()


# --- the inline list and the free tree ------------------------------------------------------


def test_the_inline_free_list_spills_into_the_free_tree_and_comes_back(tmp_path):
    keys = [b"key%05d" % i for i in range(6000)]
    with kvmm.open(str(tmp_path / "db")) as env:
        inline_max = fmt.inline_free_max(env._page_size)
        rewrite_all(env, 0, keys)
        assert check_env(env) == []
        with env.begin(write=True) as txn:
            for key in keys:
                txn.delete(key)
        meta = newest_meta(env)
        freed = meta.free[4] + len(meta.inline_free) // 2
        assert freed > inline_max  # the deleted tree's pages do not fit in a meta ...
        assert meta.free[4] > 0 and meta.free[0] != 0  # ... so they are in the free tree
        assert check_env(env) == []
        rewrite_all(env, 1, keys)  # the same pages again, taken from the free tree
        meta = newest_meta(env)
        assert meta.free[4] == 0 and meta.free[0] == 0  # the free tree is empty again
        assert len(meta.inline_free) // 2 <= inline_max
        assert last_pgno(env) <= freed + 5  # the refill reused the freed pages
        assert check_env(env) == []
        with env.begin() as txn:
            assert dict(txn.cursor()) == dict.fromkeys(keys, bytes([1]) * 200)


def test_every_page_below_next_pgno_is_used_or_free_exactly_once_through_churn(tmp_path):
    """The free-list invariant (freelist.py): checked by the checker's page accounting
    after commits that free, reuse, spill and trim."""
    with kvmm.open(str(tmp_path / "db"), sync=False) as env:
        for round_ in range(12):
            with env.begin(write=True) as txn:
                for i in range(round_ * 300 % 2000, 2000, 3 + round_ % 4):
                    txn.put(KEYS[i], bytes([round_]) * (50 + 37 * round_ % 300))
                for i in range(round_ % 5, 2000, 7):
                    txn.delete(KEYS[i])
                if round_ % 3 == 0:
                    txn.put(b"big", b"B" * (3000 * (round_ + 1)))
            if round_ % 4 == 3:
                env.sync()
            with env.begin() as txn:
                checker = Checker(env, txn)
                assert checker.run() == []
                assert set(checker.seen) == set(range(fmt.NUM_METAS, txn.meta.next_pgno))
