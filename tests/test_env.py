"""The environment (kvmm/env.py): the page size kept in the file, the choice between
the two metas, where a commit writes its meta, the file's growth and shrinking, the
``max_size`` cap, and ``sync()`` (docs/reference.md sections 2, 3, 8 and 9).

Metas are read straight from the data file with ``kvmm.format.decode_meta`` and
damaged or rewritten in place to stand for a torn write or a power loss.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import weakref
import zlib
from itertools import pairwise

import pytest

import kvmm
import kvmm.env
import kvmm.metas
import kvmm.reclaim
import kvmm.store
import kvmm.txn
from kvmm import format as fmt
from kvmm.check import check_env
from kvmm.mapfile import DataFile
from kvmm.pagecache import node_bytes
from kvmm.reclaim import ReclaimPolicy

MIB = 1 << 20


def data_path(path) -> str:
    return os.path.join(str(path), "data.kvmm")


def read_metas(path, page_size=4096) -> list:
    """Both metas as decoded from the file (None for one that does not decode)."""
    with open(data_path(path), "rb") as f:
        head = f.read(fmt.NUM_METAS * page_size)
    out = []
    for slot in range(fmt.NUM_METAS):
        try:
            out.append(fmt.decode_meta(head[slot * page_size : (slot + 1) * page_size]))
        except kvmm.Error:
            out.append(None)
    return out


def newest_slot(path, page_size=4096) -> int:
    metas = read_metas(path, page_size)
    return max(range(fmt.NUM_METAS), key=lambda s: metas[s].txnid)


def write_at(path, offset: int, data: bytes) -> None:
    with open(data_path(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


def rewrite_meta(path, slot: int, page_size=4096, **changes) -> None:
    """Re-encode the meta in ``slot`` with some fields changed (a valid checksum)."""
    meta = read_metas(path, page_size)[slot]
    for name, value in changes.items():
        setattr(meta, name, value)
    write_at(path, slot * page_size, fmt.encode_meta(meta))


def put(env, records: dict) -> None:
    with env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)


def contents(env) -> dict:
    with env.begin() as txn:
        return dict(txn.cursor())


def sha(path) -> str:
    with open(data_path(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- the page size ------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [16384, 65536])
def test_page_size_is_read_back_from_the_file_whatever_page_size_is_passed(tmp_path, page_size):
    path = tmp_path / "db"
    with kvmm.open(str(path), page_size=page_size) as env:
        put(env, {b"k%d" % i: b"v" * 100 for i in range(500)})
    with kvmm.open(str(path), page_size=4096) as env:
        assert env.stat()["psize"] == page_size
        assert len(contents(env)) == 500
        put(env, {b"more": b"x" * (page_size // 2)})  # writes pages of the file's size
        assert check_env(env) == []
    assert os.path.getsize(data_path(path)) % page_size == 0
    assert read_metas(path, page_size)[newest_slot(path, page_size)].page_size == page_size


# --- choosing a meta ----------------------------------------------------------------------


def _three_commits(path, **options) -> tuple[dict, dict]:
    """Three commits; returns the contents after the second and after the third."""
    with kvmm.open(str(path), **options) as env:
        put(env, {b"a": b"1"})
        put(env, {b"b": b"2"})
        second = contents(env)
        put(env, {b"c": b"3", b"a": b"changed"})
        third = contents(env)
    return second, third


def test_a_commit_writes_its_meta_into_the_other_slot_so_the_previous_commit_survives(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        seen = []
        for i in range(6):
            put(env, {b"k": b"%d" % i})
            metas = read_metas(path)
            seen.append((newest_slot(path), sorted(m.txnid for m in metas)))
        # Each commit replaces the older meta: the two slots hold the two newest.
        for i, (slot, txnids) in enumerate(seen):
            assert txnids == [i, i + 1]
            assert slot != seen[i - 1][0] if i else True


@pytest.mark.parametrize("page_size", [4096, 16384])
def test_a_damaged_newest_meta_falls_back_to_the_other_and_check_reports_it(tmp_path, page_size):
    path = tmp_path / "db"
    second, _third = _three_commits(path, page_size=page_size)
    slot = newest_slot(path, page_size)
    assert slot == 0  # commits 1 and 3 go to meta 0, commit 2 to meta 1
    write_at(path, 40, b"\xff")  # a byte of meta 0's txnid and next fields
    with kvmm.open(str(path), readonly=True) as env:  # page_size found from meta 1
        assert env.stat()["psize"] == page_size
        assert contents(env) == second
        notes: list[str] = []
        assert check_env(env, notes=notes) == []  # meta 1 is steady: nothing lost
    assert any(p.startswith("meta 0") for p in notes), notes
    # A read-write open mends the torn meta from the other one: clean again.
    with kvmm.open(str(path)) as env:
        assert contents(env) == second
        assert check_env(env) == []


def test_a_damaged_older_meta_changes_nothing_read_and_check_reports_it(tmp_path):
    path = tmp_path / "db"
    _second, third = _three_commits(path)
    write_at(path, 4096 + 40, b"\xff")  # meta 1: the second commit's
    with kvmm.open(str(path), readonly=True) as env:
        assert contents(env) == third
        notes: list[str] = []
        assert check_env(env, notes=notes) == []
    assert any(p.startswith("meta 1") for p in notes), notes


def test_with_both_metas_damaged_open_raises_corrupted_error_and_leaves_the_file(tmp_path):
    path = tmp_path / "db"
    _three_commits(path)
    write_at(path, 40, b"\xff")
    write_at(path, 4096 + 40, b"\xff")
    before = sha(path)
    with pytest.raises(kvmm.CorruptedError):
        kvmm.open(str(path))
    assert sha(path) == before


def other_boot() -> bytes:
    return bytes(b ^ 0xFF for b in kvmm.env.BOOT_ID)


def test_a_weak_meta_from_another_boot_is_skipped_for_the_steady_one(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path), sync=False) as env:
        put(env, {b"a": b"1"})
        env.sync()
        steady = contents(env)
        put(env, {b"b": b"2"})
        weak = contents(env)
    metas = read_metas(path)
    slot = newest_slot(path)
    assert not metas[slot].steady and metas[1 - slot].steady
    # Same boot: the weak meta's pages are still in the page cache; it is used.
    with kvmm.open(str(path), sync=False) as env:
        assert contents(env) == weak
    # The machine restarted since (another boot id): its pages may never have reached
    # the disk, so the steady meta is used.
    rewrite_meta(path, slot, boot_id=other_boot())
    with kvmm.open(str(path), sync=False) as env:
        assert contents(env) == steady
        assert check_env(env) == []
        # The next commit goes on from the steady meta, and is read back.
        put(env, {b"c": b"3"})
        assert contents(env) == {**steady, b"c": b"3"}


def test_a_steady_meta_from_another_boot_is_used(tmp_path):
    path = tmp_path / "db"
    _second, third = _three_commits(path)
    slot = newest_slot(path)
    assert read_metas(path)[slot].steady
    rewrite_meta(path, slot, boot_id=other_boot())
    with kvmm.open(str(path)) as env:
        assert contents(env) == third


def test_with_sync_false_weak_commits_never_overwrite_the_newest_steady_meta(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path), sync=False) as env:
        put(env, {b"a": b"1"})
        env.sync()
        steady_slot = newest_slot(path)
        steady = read_metas(path)[steady_slot]
        for i in range(5):
            put(env, {b"k%d" % i: b"v"})
            metas = read_metas(path)
            assert metas[steady_slot].txnid == steady.txnid and metas[steady_slot].steady
            assert metas[1 - steady_slot].txnid == steady.txnid + i + 1
            assert not metas[1 - steady_slot].steady


def test_env_sync_makes_a_sync_false_commit_steady(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path), sync=False) as env:
        put(env, {b"a": b"1"})
        put(env, {b"b": b"2"})
        slot = newest_slot(path)
        weak = read_metas(path)[slot]
        assert not weak.steady
        env.sync()
        metas = read_metas(path)
        assert metas[slot].txnid == weak.txnid and metas[slot].steady
        # Being steady now, it survives a restart.
        rewrite_meta(path, slot, boot_id=other_boot())
    with kvmm.open(str(path)) as env:
        assert contents(env) == {b"a": b"1", b"b": b"2"}


class CountingFile(DataFile):
    """A data file that counts its syncs."""

    syncs = 0

    def sync(self) -> None:
        CountingFile.syncs += 1
        super().sync()


def syncs_of(env, records: dict) -> int:
    before = CountingFile.syncs
    put(env, records)
    return CountingFile.syncs - before


def file_reader(path):
    """A ``pread(n, offset)`` of the data file."""
    def read(n: int, offset: int) -> bytes:
        with open(data_path(path), "rb") as f:
            f.seek(offset)
            return f.read(n)
    return read


def test_a_small_durable_commit_syncs_once_and_its_meta_lists_the_pages_it_wrote(tmp_path):
    path = tmp_path / "db"
    with kvmm.Environment(str(path), datafile_class=CountingFile) as env:
        put(env, {b"%06d" % i: b"v" * 100 for i in range(2000)})  # a few levels
        assert syncs_of(env, {b"000500": b"new", b"x" * 20: b"y" * 9000}) == 1
        meta = read_metas(path)[newest_slot(path)]
        assert meta.steady and meta.flags & fmt.META_WRITTEN
        # The pages it lists are the ones it wrote: new leaves, branches, an overflow run.
        kinds = set()
        for pgno in meta.written[0::2]:
            header = fmt.PAGE_HEADER.unpack(file_reader(path)(fmt.HEADER_SIZE, pgno * 4096))
            assert header[3] == pgno and header[4] == meta.txnid
            kinds.add(header[1])
        assert kinds >= {fmt.LEAF, fmt.BRANCH, fmt.OVERFLOW}
        assert fmt.written_intact(meta, file_reader(path))
        # A commit of more pages than a meta lists syncs before and after the meta.
        assert syncs_of(env, {b"%06d" % i: b"w" * 100 for i in range(0, 2000, 20)}) == 2
        meta = read_metas(path)[newest_slot(path)]
        assert meta.steady and not meta.flags & fmt.META_WRITTEN and meta.written == ()
    # metasync=False: the pages are synced, the meta is not (the next commit's sync).
    with kvmm.Environment(str(path), datafile_class=CountingFile, metasync=False) as env:
        assert syncs_of(env, {b"000501": b"new"}) == 1
        assert not read_metas(path)[newest_slot(path)].flags & fmt.META_WRITTEN
    with kvmm.Environment(str(path), datafile_class=CountingFile, sync=False) as env:
        assert syncs_of(env, {b"000502": b"new"}) == 0


def _one_flush_commits(path) -> tuple[dict, dict, int]:
    """Two durable commits; returns the contents after each and the second's slot."""
    with kvmm.open(str(path)) as env:
        put(env, {b"%06d" % i: b"v" * 100 for i in range(500)})
        first = contents(env)
        put(env, {b"000100": b"changed", b"new": b"n"})
        second = contents(env)
    slot = newest_slot(path)
    assert read_metas(path)[slot].flags & fmt.META_WRITTEN
    return first, second, slot


def _recovers_to(path, expected: dict) -> None:
    with kvmm.open(str(path), readonly=True) as env:
        assert contents(env) == expected
        assert check_env(env) == []
    with kvmm.open(str(path)) as env:  # mends the passed-over slot; goes on from there
        assert contents(env) == expected
        put(env, {b"after": b"a"})
        assert contents(env) == {**expected, b"after": b"a"}
        assert check_env(env) == []


@pytest.mark.parametrize("lost", range(3))
def test_after_a_restart_a_one_flush_commit_missing_a_page_gives_way_to_the_one_before(
        tmp_path, lost):
    """A power loss may keep a one-flush commit's meta and lose one of its pages (the
    page then holds what it held before): the commit before it is used, whole."""
    path = tmp_path / "db"
    first, second, slot = _one_flush_commits(path)
    rewrite_meta(path, slot, boot_id=other_boot())
    meta = read_metas(path)[slot]
    # Restarted with every page on disk: the commit stands.
    with kvmm.open(str(path), readonly=True) as env:
        assert contents(env) == second
    pgno = meta.written[2 * (lost % (len(meta.written) // 2))]
    write_at(path, pgno * 4096 + 200, b"\x5a")
    _recovers_to(path, first)


def test_a_page_with_the_right_txnid_but_not_the_listed_checksum_is_a_lost_write(tmp_path):
    """A commit lost to an earlier power loss may have written the same page under the
    same txnid: its bytes check out by themselves but are not what the meta lists."""
    path = tmp_path / "db"
    first, _second, slot = _one_flush_commits(path)
    rewrite_meta(path, slot, boot_id=other_boot())
    pgno = read_metas(path)[slot].written[0]
    page = bytearray(file_reader(path)(4096, pgno * 4096))
    page[-1] ^= 0x01
    page[0:4] = struct.pack("<I", zlib.crc32(page[4:]))  # a page valid in itself
    write_at(path, pgno * 4096, bytes(page))
    _recovers_to(path, first)


def test_a_one_flush_commit_whose_file_was_cut_short_gives_way_to_the_one_before(tmp_path):
    path = tmp_path / "db"
    first, _second, slot = _one_flush_commits(path)
    rewrite_meta(path, slot, boot_id=other_boot())
    last = max(read_metas(path)[slot].written[0::2])
    os.truncate(data_path(path), last * 4096)
    _recovers_to(path, first)


def test_a_tree_page_whose_count_overruns_the_page_is_a_corrupted_error_on_read(tmp_path):
    """Damage that passes the checksum (a collision or a bad writer) must still be a
    CorruptedError (docs/reference.md section 8), never struct.error."""
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        put(env, {b"a": b"1", b"b": b"2"})
        with env.begin() as txn:
            root = txn.meta.main[0]
    with open(data_path(path), "rb") as f:
        f.seek(root * 4096)
        page = bytearray(f.read(4096))
    struct.pack_into("<H", page, 6, 1000)  # count: 1000 entries, 6000 bytes of lengths
    struct.pack_into("<I", page, 0, fmt._crc32(bytes(page[4:])))
    write_at(path, root * 4096, bytes(page))
    with kvmm.open(str(path)) as env:
        with env.begin() as txn, pytest.raises(kvmm.CorruptedError):
            txn.get(b"a")
        assert any(f"page {root}" in p for p in check_env(env))


def test_a_file_of_another_format_version_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "db"
    _three_commits(path)
    for slot in range(fmt.NUM_METAS):
        meta = fmt.encode_meta(read_metas(path)[slot])
        body = bytearray(meta[: -fmt.META_CRC.size])
        struct.pack_into("<I", body, len(fmt.MAGIC), fmt.VERSION + 1)
        write_at(path, slot * 4096, bytes(body) + fmt.META_CRC.pack(fmt._crc32(body)))
    before = sha(path)
    with pytest.raises(kvmm.VersionMismatchError):
        kvmm.open(str(path))
    assert sha(path) == before


# --- growth and shrinking -----------------------------------------------------------------


class Growth:
    """Fill an environment with 300 commits of 50 KB each, recording every change of
    the data file's size (with the commit that made it) and every new map."""

    COMMITS = 300

    def __init__(self, path, monkeypatch):
        monkeypatch.setattr(kvmm.txn, "_STRICT", False)  # checked once, at the end
        self.resizes: list[tuple[int, int]] = []  # (commit, new size)
        self.sizes: list[int] = []  # the file's size after each commit
        self.maps: list = []
        with kvmm.open(str(path), sync=False) as env:
            resize = env._datafile.truncate
            commit = 0

            def truncate(size):
                self.resizes.append((commit, size))
                resize(size)

            monkeypatch.setattr(env._datafile, "truncate", truncate)
            for commit in range(self.COMMITS):
                put(env, {b"%05d" % (commit * 20 + j): b"v" * 2500 for j in range(20)})
                with env.begin() as txn:
                    assert txn.get(b"%05d" % (commit * 20)) == b"v" * 2500
                self.sizes.append(os.path.getsize(data_path(path)))
                if not self.maps or env._store.map.mm is not self.maps[-1]:
                    self.maps.append(env._store.map.mm)
            assert check_env(env) == []
        assert self.sizes[-1] >= self.COMMITS * 20 * 2500


def test_the_file_grows_geometrically_so_many_commits_remap_few_times(tmp_path, monkeypatch):
    growth = Growth(tmp_path / "db", monkeypatch)
    sizes = sorted(set(growth.sizes))
    assert sizes == list(dict.fromkeys(growth.sizes))  # it only grew
    # Each growth adds half the file (GROW_MIN at least): O(log size) steps, here
    # 1, 2, 3, 4.5, 6.75, 10, 15 MiB and one more at most.
    for a, b in pairwise(sizes):
        step = min(max(a // 2, kvmm.store.GROW_MIN), kvmm.store.GROW_MAX)
        assert b >= a + step, (a, b, sizes)
    assert len(sizes) <= 9, sizes
    assert len(growth.maps) <= 10, len(growth.maps)


def test_a_commit_that_grows_the_file_does_not_cut_it_back(tmp_path, monkeypatch):
    """Growth and giving space back must not fight: the slack a growth step adds is
    not "free space at the end" to be truncated by the same commit."""
    growth = Growth(tmp_path / "db", monkeypatch)
    per_commit: dict[int, list[int]] = {}
    for commit, size in growth.resizes:
        per_commit.setdefault(commit, []).append(size)
    both = {c: s for c, s in per_commit.items() if len(s) > 1}
    assert both == {}, both


def test_the_file_shrinks_within_two_commits_after_most_data_is_deleted(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        put(env, {b"k%05d" % i: bytes([i % 256]) * 6000 for i in range(3000)})
        peak = os.path.getsize(data_path(path))
        assert peak >= 3000 * 6000
        with env.begin(write=True) as txn:
            for i in range(300, 3000):
                txn.delete(b"k%05d" % i)
        put(env, {b"x": b"1"})
        put(env, {b"y": b"2"})
        size = os.path.getsize(data_path(path))
        assert size < peak / 3, (peak, size)
        assert size >= (env.info()["last_pgno"] + 1) * 4096
        assert check_env(env) == []
        kept = contents(env)
    assert len(kept) == 302
    assert all(kept[b"k%05d" % i] == bytes([i % 256]) * 6000 for i in range(300))
    with kvmm.open(str(path)) as env:
        assert contents(env) == kept


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_a_commit_that_frees_most_of_the_file_gives_it_back_before_commit_returns(
        tmp_path, sync):
    """No later commit is needed: deleting everything leaves a file of a few pages."""
    path = tmp_path / "db"
    records = {b"%06d" % i: bytes([i % 256]) * 200 for i in range(20000)}
    with kvmm.open(str(path), sync=sync) as env:
        put(env, records)
        put(env, {k: v[::-1] for k, v in records.items()})  # the tree moves up the file
        env.sync()  # with sync=False: a power loss would fall back to this tree
        peak = os.path.getsize(data_path(path))
        before = env.info()["last_txnid"]
        with env.begin(write=True) as txn:
            for k in records:
                txn.delete(k)
        size = os.path.getsize(data_path(path))
        assert size <= max(kvmm.reclaim.SHRINK_MIN, peak // 8), (peak, size)
        assert env.info()["last_txnid"] == before + 2  # the deletes, then an empty commit
        assert contents(env) == {}
        assert check_env(env) == []
        put(env, {b"after": b"a"})
    with kvmm.open(str(path)) as env:
        assert contents(env) == {b"after": b"a"}


def test_a_reader_of_an_older_snapshot_keeps_the_file_from_being_given_back(tmp_path):
    path = tmp_path / "db"
    records = {b"%06d" % i: b"v" * 200 for i in range(20000)}
    with kvmm.open(str(path)) as env:
        put(env, records)
        reader = env.begin()
        peak = os.path.getsize(data_path(path))
        before = env.info()["last_txnid"]
        with env.begin(write=True) as txn:
            for k in records:
                txn.delete(k)
        assert env.info()["last_txnid"] == before + 1  # no empty commit: nothing to gain
        assert os.path.getsize(data_path(path)) >= peak
        assert reader.get(b"000123") == b"v" * 200
        assert sum(1 for _ in reader.cursor()) == len(records)
        reader.abort()


def test_short_runs_are_written_through_the_map_into_a_file_without_holes(tmp_path):
    """Writing through a map into a hole of a full disk would be a SIGBUS, not an
    error: so the writer reserves the disk space of the whole file before its first
    write through the map, and every growth reserves what it adds."""
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        put(env, {b"a": b"1"})
    os.truncate(data_path(path), 8 * MIB)  # a file with a hole, as a sparse growth left it
    with kvmm.open(str(path), sync=False) as env:
        assert env._datafile.map_writes  # the plain DataFile, on Linux
        copies = []
        real = kvmm.store.Store._write_run

        def write_run(wmap, write, start, end, chunks):  # True: copied into the map
            copies.append(wmap is not None and end - start <= kvmm.store.MAP_WRITE_PAGES)
            real(env._store, wmap, write, start, end, chunks)

        env._store._write_run = write_run
        reserved = []
        allocate = env._datafile.allocate
        env._datafile.allocate = lambda offset, n: reserved.append((offset, n)) or allocate(
            offset, n)
        put(env, {b"b": b"2"})
        assert copies and all(copies)  # one small run, copied into the map
        assert reserved == [(0, 8 * MIB)]  # the whole file, hole included, first
        put(env, {b"%06d" % i: b"v" * 40000 for i in range(300)})  # grows the file
        size = os.path.getsize(data_path(path))
        assert size > 8 * MIB
        assert os.stat(data_path(path)).st_blocks * 512 >= size
        assert not all(copies)  # overflow runs of 10 pages went through write()
        assert contents(env)[b"b"] == b"2"
        assert check_env(env) == []
    with kvmm.open(str(path)) as env:
        assert contents(env)[b"000123"] == b"v" * 40000


def test_where_space_cannot_be_reserved_pages_are_written_with_write(tmp_path, monkeypatch):
    monkeypatch.setattr(DataFile, "allocate", lambda self, offset, length: False)
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        put(env, {b"a": b"1"})
        assert not env._store._map_writes
        put(env, {b"%06d" % i: b"v" * 300 for i in range(3000)})
        assert check_env(env) == []
    with kvmm.open(str(path)) as env:
        assert len(contents(env)) == 3001


def test_max_size_raises_map_full_error_keeps_the_contents_and_the_env_stays_usable(tmp_path):
    path = tmp_path / "db"
    limit = 3 * MIB
    with kvmm.open(str(path), max_size=limit) as env:
        put(env, {b"k%04d" % i: b"v" * 1000 for i in range(1000)})
        before = contents(env)
        before_info = env.info()
        with pytest.raises(kvmm.MapFullError), env.begin(write=True) as txn:
            txn.put(b"a", b"1")
            txn.put(b"huge", b"x" * (4 * MIB))
        assert contents(env) == before
        assert env.info()["last_txnid"] == before_info["last_txnid"]
        assert os.path.getsize(data_path(path)) <= limit
        assert check_env(env) == []
        put(env, {b"small": b"ok"})  # still usable
        assert contents(env) == {**before, b"small": b"ok"}
        # Room made by deleting is usable up to the cap.
        with env.begin(write=True) as txn:
            for i in range(1000):
                txn.delete(b"k%04d" % i)
        put(env, {b"big": b"y" * MIB})
        assert os.path.getsize(data_path(path)) <= limit
        assert check_env(env) == []
    with kvmm.open(str(path)) as env:
        assert contents(env) == {b"small": b"ok", b"big": b"y" * MIB}


def test_the_page_cache_stays_within_cache_size_and_keeps_the_branches(tmp_path):
    """cache_size bounds the estimated memory of decoded pages: reading a database
    several times larger than it evicts leaves, never the branches, and every read
    still returns the right value. (A get searches a leaf the cache lacks in the
    map, without caching it; a cursor decodes and caches the leaves it walks.)"""
    records = {b"%08d" % i: bytes([i % 251]) * 100 for i in range(20000)}
    with kvmm.open(str(tmp_path / "db")) as env:
        put(env, records)
    budget = 512 << 10
    with kvmm.open(str(tmp_path / "db"), cache_size=budget) as env:
        for _ in range(2):
            with env.begin() as txn:
                for key, value in records.items():
                    assert txn.get(key) == value
                    assert env._store.cache.bytes <= budget
                for key, value in txn.cursor():  # a scan decodes and caches leaves
                    assert records[key] == value
                    assert env._store.cache.bytes <= budget
        leaves = sum(node.kids is None for node in env._store.cache.nodes())
        branches = sum(node.kids is not None for node in env._store.cache.nodes())
        assert leaves > 0
        assert env.stat()["leaf_pages"] > 2 * leaves  # most of the leaves went
        assert branches == env.stat()["branch_pages"]  # no branch went
        assert env._store.cache.bytes == sum(node_bytes(n) for n in env._store.cache.nodes())


def test_a_commit_drops_the_cached_nodes_it_replaced_and_older_readers_still_read(tmp_path):
    """Left in the cache, the old versions of the pages a commit rewrote would push
    live pages out of a full cache; a reader of the older snapshot decodes them again."""
    records = {b"%08d" % i: b"old" + bytes([i % 251]) * 100 for i in range(5000)}
    with kvmm.open(str(tmp_path / "db")) as env:
        put(env, records)
        assert contents(env) == records  # every page cached
        before = {(n.pgno, n.txnid): weakref.ref(n) for n in env._store.cache.nodes()}
        changed = dict(records)
        with env.begin(write=True) as txn:
            for key in list(records)[::500]:
                changed[key] = b"new"
                txn.put(key, b"new")
        after = {(n.pgno, n.txnid) for n in env._store.cache.nodes()}
        replaced = set(before) - after
        assert len(replaced) >= 10 + 1  # ten leaves and the branches above them
        assert env._store.cache.bytes == sum(node_bytes(n) for n in env._store.cache.nodes())
        # Nothing holds the old versions any more.
        assert all(before[old]() is None for old in replaced)
        old_reader, seen = env.begin(), dict(changed)
        with env.begin(write=True) as txn:
            for key in list(records)[::250]:
                changed[key] = b"newer"
                txn.put(key, b"newer")
        assert dict(old_reader.cursor()) == seen  # decoded again where dropped
        old_reader.abort()
        assert contents(env) == changed


def test_reclaim_attempts_that_cut_only_a_few_pages_back_off():
    """An attempt to give the tail back gathers every reusable page. When attempts
    keep cutting just a few pages (lowest-first allocation frees the tail slowly),
    they must back off as fruitless ones do, not run on every commit."""
    from types import SimpleNamespace

    policy = ReclaimPolicy()
    txn = SimpleNamespace(txnid=100, next_pgno=100_000,
                          free_db=SimpleNamespace(entries=50_000),
                          freelist=SimpleNamespace(inline=()),
                          meta=SimpleNamespace(inline_free=()))
    assert policy.want_reclaim(txn)  # half the file is free
    for txnid in (100, 101):  # two attempts in a row, 3 pages cut each
        txn.txnid = txnid
        policy.reclaimed(txn, 3, 50_000)
    txn.txnid = 102
    assert not policy.want_reclaim(txn)
    txn.txnid = 102 + kvmm.reclaim.RECLAIM_RETRY
    assert policy.want_reclaim(txn)  # later, it tries again
    policy.reclaimed(txn, 20_000, 50_000)  # a fifth of the file cut: no waiting
    assert policy.tries == 0 and policy.wait == kvmm.reclaim.RECLAIM_RETRY


def test_reclaim_attempts_while_free_pages_are_pinned_wait_in_proportion_to_their_cost():
    """While most free pages wait for a reader or a sync, an attempt is retried soon,
    but not before one commit per RECLAIM_PAGES_PER_COMMIT pages it had to gather:
    with 10^4 reusable pages, an attempt every 8 commits made each commit several
    times slower."""
    from types import SimpleNamespace

    policy = ReclaimPolicy()
    txn = SimpleNamespace(txnid=100, next_pgno=100_000,
                          free_db=SimpleNamespace(entries=50_000),
                          freelist=SimpleNamespace(inline=()),
                          meta=SimpleNamespace(inline_free=()))
    assert policy.want_reclaim(txn)
    policy.reclaimed(txn, 0, 10_000)  # a fifth of the free pages reusable: pinned
    wait = 10_000 // kvmm.reclaim.RECLAIM_PAGES_PER_COMMIT
    assert wait > kvmm.reclaim.RECLAIM_RETRY
    for txnid, want in ((101, False), (100 + wait - 1, False), (100 + wait, True)):
        txn.txnid = txnid
        assert policy.want_reclaim(txn) is want, txnid
    policy.reclaimed(txn, 0, 100)  # few reusable pages: retried after a few commits
    txn.txnid += kvmm.reclaim.RECLAIM_RETRY // 8
    assert policy.want_reclaim(txn)


def test_threads_reading_while_a_thread_writes_and_caches_churn_raise_nothing(tmp_path):
    """Reader threads sharing one environment with a writer thread, a cache far smaller
    than the data: trims run in whichever thread goes over, while the others cache
    and drop nodes (a trim once iterated the live cache and raised)."""
    import sys
    import threading
    import traceback

    rng = random.Random(3)
    model = {}
    with kvmm.open(str(tmp_path / "db"), cache_size=32 << 10, sync=False) as env:
        with env.begin(write=True) as txn:
            for _ in range(20000):
                key = b"%08d" % rng.randrange(10**8)
                txn.put(key, b"v" * 20)
                model[key] = b"v" * 20
        errors: list = []
        done = threading.Event()

        def writer():
            try:
                wrng = random.Random(4)
                for _ in range(12):
                    with env.begin(write=True) as txn:
                        for _ in range(2000):
                            key = b"%08d" % wrng.randrange(10**8)
                            if wrng.random() < 0.7:
                                txn.put(key, b"w" * wrng.randrange(5, 60))
                            else:
                                txn.delete(key)
            except Exception:  # noqa: BLE001 - reported below
                errors.append(traceback.format_exc())
            finally:
                done.set()

        def reader(seed):
            try:
                rrng = random.Random(seed)
                keys = list(model)
                while not done.is_set():
                    with env.begin() as txn:
                        for _ in range(200):
                            txn.get(keys[rrng.randrange(len(keys))])
            except Exception:  # noqa: BLE001 - reported below
                errors.append(traceback.format_exc())

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
        try:
            threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
            threads.append(threading.Thread(target=writer))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            sys.setswitchinterval(interval)
        assert not errors, errors[0]
        assert check_env(env) == []


def _meta_slots(path) -> list:
    """The two meta pages of the data file at ``path``, and each one's txnid field."""
    with open(data_path(path), "rb") as f:
        raw = f.read(2 * 4096)
    pages = [raw[:4096], raw[4096:]]
    at = fmt.META_TXNID_OFFSET
    return [(page, fmt.META_TXNID.unpack_from(page, at)[0]) for page in pages]


def _write_slot(path, slot: int, page: bytes) -> None:
    with open(data_path(path), "r+b") as f:
        f.seek(slot * 4096)
        f.write(page)


def _torn(page: bytes) -> bytes:
    """``page`` with one byte changed past its txnid field: its CRC fails."""
    torn = bytearray(page)
    torn[100] ^= 0xFF
    return bytes(torn)


def test_a_reader_that_begins_while_the_newest_meta_is_being_written_waits_for_it(tmp_path):
    """With sync=False every commit rewrites the same meta slot; the other holds the
    last steady commit, here the empty database. A reader that found the newest
    slot half written used to fall back to that one: a snapshot from before every
    commit (bench.py's readers_2p caught 200 keys missing). It must wait for the
    write and see the last commit."""
    import threading

    path = tmp_path / "db"
    with kvmm.open(str(path), sync=False) as env:
        put(env, {b"%04d" % i: b"v" for i in range(200)})
        put(env, {b"last": b"commit"})
        slots = _meta_slots(path)
        newest = max(range(2), key=lambda s: slots[s][1])
        assert fmt.decode_meta(slots[1 - newest][0]).txnid < slots[newest][1]
        _write_slot(path, newest, _torn(slots[newest][0]))  # as if being written
        finish = threading.Timer(0.01, _write_slot, (path, newest, slots[newest][0]))
        finish.start()
        try:
            with kvmm.open(str(path), readonly=True) as reader, reader.begin() as txn:
                assert txn.get(b"last") == b"commit"
                assert txn.get(b"0123") == b"v"
        finally:
            finish.join()


def test_a_meta_a_crash_tore_is_waited_for_once_then_the_steady_one_is_read(
        tmp_path, monkeypatch):
    path = tmp_path / "db"
    with kvmm.open(str(path), sync=False) as env:
        put(env, {b"a": b"1"})
        slots = _meta_slots(path)
    newest = max(range(2), key=lambda s: slots[s][1])
    _write_slot(path, newest, _torn(slots[newest][0]))  # and nobody mends it
    monkeypatch.setattr(kvmm.metas, "META_WAIT", 0.02)
    with kvmm.open(str(path), readonly=True) as reader:
        sleeps = []
        real_sleep = kvmm.metas.time.sleep
        monkeypatch.setattr(kvmm.metas.time, "sleep", lambda s: sleeps.append(s) or real_sleep(s))
        with reader.begin() as txn:
            assert txn.get(b"a") is None  # the steady meta: the empty database
        waited = len(sleeps)
        assert waited > 0
        for _ in range(3):
            with reader.begin() as txn:
                assert txn.get(b"a") is None
        assert len(sleeps) == waited  # the same torn bytes are not waited for again
