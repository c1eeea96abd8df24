"""The checker (kvmm/check.py): a clean file has no problem; each kind of damage, made
by hand with kvmm.format so that only the intended invariant breaks (pages keep valid
checksums), is reported with the page it concerns; and checking never writes to the
data file (its bytes hash the same before and after).
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest

import kvmm
from kvmm import format as fmt
from kvmm.btree import DbState, descend
from kvmm.check import Checker, check, check_env
from kvmm.lock import LockFile

PS = 4096
BIG = b"B" * 20_000  # an overflow run of several pages


def data_path(path) -> str:
    return os.path.join(str(path), "data.kvmm")


def sha(path) -> str:
    with open(data_path(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_at(path, offset: int, data: bytes) -> None:
    with open(data_path(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


class Built:
    """A database with a root branch, leaves, an overflow run, a named database and
    free pages; and where its parts are."""

    def __init__(self, path):
        self.path = path
        with kvmm.open(str(path), max_dbs=2) as env:
            named = env.open_db(b"named")
            with env.begin(write=True) as txn:
                for i in range(1500):
                    txn.put(b"key%05d" % i, b"v" * 100)
                    txn.put(b"n%04d" % i, b"w" * 10, db=named)
                txn.put(b"big", BIG)
            with env.begin(write=True) as txn:  # frees pages: an inline free list
                for i in range(0, 1500, 10):
                    txn.delete(b"key%05d" % i)
            assert check_env(env) == []
            with env.begin() as txn:
                self.meta = txn.meta
                main = DbState(self.meta.main)
                self.root = txn.load(main.root, main.root_txnid)
                self.leaf = txn.load(self.root.kids[1], self.root.ktxn[1])
                leaf, i = descend(txn.load, main, b"big")[-1]
                assert leaf.keys[i] == b"big" and leaf.flags[i] & fmt.F_OVERFLOW
                self.overflow = fmt.decode_overflow_ref(leaf.vals[i])[0]
        assert self.root.kids is not None and self.leaf.kids is None
        assert self.meta.inline_free and not any(t & (1 << 63) for t in self.meta.inline_free[::2])
        metas = [fmt.decode_meta(self.page(s)) for s in range(fmt.NUM_METAS)]
        self.slot = next(s for s, m in enumerate(metas) if m.txnid == self.meta.txnid)

    def page(self, pgno: int) -> bytes:
        with open(data_path(self.path), "rb") as f:
            f.seek(pgno * PS)
            return f.read(PS)

    def rewrite_meta(self, **changes) -> None:
        fields = {name: getattr(self.meta, name) for name in fmt.Meta.__slots__}
        fields.update(changes)
        write_at(self.path, self.slot * PS, fmt.encode_meta(fmt.Meta(**fields)))


@pytest.fixture
def built(tmp_path):
    return Built(tmp_path / "db")


def checked(path, notes: list | None = None) -> list[str]:
    """Check ``path`` read-only (the checker changes no byte; findings that lose
    nothing go to ``notes``), then through a read-write environment, which finds the
    same problems: opening one may mend a torn spare meta from the other (a crash
    can tear only the meta being written) but changes no byte beyond the metas.
    Returns the problems."""
    before = sha(path)
    problems = check(str(path), notes=notes)
    assert sha(path) == before
    data = _data_bytes(path)
    with kvmm.open(str(path), max_dbs=2) as env:
        assert check_env(env) == problems
    assert _data_bytes(path)[2 * PS :] == data[2 * PS :]
    return problems


def _data_bytes(path) -> bytes:
    with open(os.path.join(str(path), "data.kvmm"), "rb") as f:
        return f.read()


def reported(problems: list[str], pgno: int, words: str) -> bool:
    """Whether some problem names page ``pgno`` and contains ``words``."""
    return any(re.search(rf"\b{pgno}\b", p) and words in p for p in problems)


def test_a_clean_database_has_no_problem(built):
    assert checked(built.path) == []


def test_a_clean_checker_sees_every_page_below_next_pgno_exactly_once(built):
    with kvmm.open(str(built.path), max_dbs=2) as env, env.begin() as txn:
        checker = Checker(env, txn)
        assert checker.run() == []
        assert sorted(checker.seen) == list(range(fmt.NUM_METAS, txn.meta.next_pgno))
        kinds = {what.split(" ")[0] for what in checker.seen.values()}
        assert {"main", "database", "inline"} <= kinds


def test_a_lost_page_neither_used_nor_free_is_reported(built):
    lost = built.meta.next_pgno  # one more page in use, listed nowhere
    built.rewrite_meta(next_pgno=lost + 1)
    assert reported(checked(built.path), lost, "lost")


def test_a_page_referenced_twice_is_reported(built):
    root = built.root
    kids, ktxn = list(root.kids), list(root.ktxn)
    kids[1], ktxn[1] = kids[0], ktxn[0]  # child 1 now points at child 0's page
    write_at(
        built.path,
        root.pgno * PS,
        fmt.encode_branch(root.pgno, root.txnid, root.keys, kids, ktxn, PS),
    )
    problems = checked(built.path)
    assert reported(problems, kids[0], "used twice")
    assert reported(problems, root.kids[1], "lost")  # the page no longer referenced


def test_keys_out_of_order_in_a_leaf_are_reported(built):
    leaf = built.leaf
    keys, vals = list(leaf.keys), list(leaf.vals)
    keys[2], keys[3] = keys[3], keys[2]
    vals[2], vals[3] = vals[3], vals[2]
    write_at(
        built.path,
        leaf.pgno * PS,
        fmt.encode_leaf(leaf.pgno, leaf.txnid, keys, vals, leaf.flags, PS),
    )
    assert fmt.check_header(built.page(leaf.pgno), leaf.pgno, leaf.txnid)  # valid CRC
    assert reported(checked(built.path), leaf.pgno, "out of order")


def test_a_key_outside_its_parents_separators_is_reported(built):
    leaf = built.leaf
    keys = list(leaf.keys)
    keys[-1] = b"zzz"  # still in order inside the leaf, but above the next separator
    write_at(
        built.path,
        leaf.pgno * PS,
        fmt.encode_leaf(leaf.pgno, leaf.txnid, keys, leaf.vals, leaf.flags, PS),
    )
    assert reported(checked(built.path), leaf.pgno, "separator")


@pytest.mark.parametrize("which", ["older", "newest"])
def test_a_bad_meta_checksum_is_reported(built, which):
    slot = 1 - built.slot if which == "older" else built.slot
    write_at(built.path, slot * PS + 40, b"\xa5")
    notes: list[str] = []
    problems = checked(built.path, notes)
    # The other meta is steady: nothing is lost (a torn spare meta looks the same),
    # so the bad checksum is a note, and the other meta's snapshot is whole.
    assert reported(notes, slot, "meta") and problems == [], (notes, problems)


def test_a_broken_overflow_run_is_reported(built):
    write_at(built.path, built.overflow * PS, bytes(PS))
    problems = checked(built.path)
    assert reported(problems, built.overflow, "page")


def test_a_changed_byte_inside_an_overflow_value_is_reported(built):
    write_at(built.path, built.overflow * PS + fmt.HEADER_SIZE + 5000, b"X")
    assert reported(checked(built.path), built.overflow, "checksum")


def test_a_free_page_still_reachable_is_reported(built):
    meta, leaf = built.meta, built.leaf
    pairs = list(zip(meta.inline_free[::2], meta.inline_free[1::2]))
    pairs.append((meta.txnid, leaf.pgno))  # the newest tag: the list stays sorted
    pairs.sort(key=lambda pair: pair[0])
    built.rewrite_meta(inline_free=tuple(x for pair in pairs for x in pair))
    problems = checked(built.path)
    assert reported(problems, leaf.pgno, "used twice")


def test_a_wrong_entry_count_in_a_database_record_is_reported(built):
    main = list(built.meta.main)
    main[4] += 1  # entries
    built.rewrite_meta(main=tuple(main))
    assert any("entries" in p for p in checked(built.path))


def test_a_page_with_a_flipped_byte_is_reported_with_its_page_number(built):
    write_at(built.path, built.leaf.pgno * PS + 200, b"\xff")
    assert reported(checked(built.path), built.leaf.pgno, "checksum")


def test_every_damage_at_once_is_listed_not_just_the_first(built):
    leaf, root = built.leaf, built.root
    write_at(built.path, built.overflow * PS, bytes(PS))
    write_at(built.path, (1 - built.slot) * PS + 40, b"\xa5")
    last_leaf = root.kids[-1]
    assert last_leaf != leaf.pgno
    write_at(built.path, last_leaf * PS + 300, b"\xff")
    keys, vals = list(leaf.keys), list(leaf.vals)
    keys[0], keys[1] = keys[1], keys[0]
    vals[0], vals[1] = vals[1], vals[0]
    write_at(
        built.path,
        leaf.pgno * PS,
        fmt.encode_leaf(leaf.pgno, leaf.txnid, keys, vals, leaf.flags, PS),
    )
    notes: list[str] = []
    problems = checked(built.path, notes)
    assert reported(problems, built.overflow, "page")
    assert reported(notes, 1 - built.slot, "meta")
    assert reported(problems, last_leaf, "checksum")
    assert reported(problems, leaf.pgno, "out of order")


def test_readers_newer_than_the_snapshot_checked_are_no_problem(tmp_path, monkeypatch):
    """A live database: readers that began after the check's snapshot, one of them
    while the reader table is being read (the race, made deterministic), are sound."""
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            txn.put(b"a", b"1")
        checked = env.begin()  # the check's snapshot
        with env.begin(write=True) as txn:
            txn.put(b"b", b"2")
        newer = [env.begin()]
        read_table = LockFile.readers

        def readers_while_a_writer_commits(lock):
            slots = read_table(lock)
            monkeypatch.undo()  # the commit below reads the table too
            with env.begin(write=True) as txn:
                txn.put(b"c", b"3")
            newer.append(env.begin())
            return slots + [s for s in read_table(lock) if s not in slots]

        monkeypatch.setattr(LockFile, "readers", readers_while_a_writer_commits)
        assert Checker(env, checked).run() == []
        assert [t.id() for t in newer] == [checked.id() + 1, checked.id() + 2]
        for txn in [checked, *newer]:
            txn.abort()


def test_a_reader_slot_newer_than_every_commit_is_reported(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            txn.put(b"a", b"1")
        reader = env.begin()
        last = reader.id()
        env._lock.set_slot(reader._slot, last + 5)
        problems = check_env(env)
        reader.abort()
    assert len(problems) == 1
    assert re.fullmatch(rf"reader slot \d+ \(pid \d+\): snapshot {last + 5} newer than "
                        rf"the last commit {last}", problems[0]), problems
