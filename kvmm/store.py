"""The store: what transactions use of an environment's files.

An :class:`~kvmm.env.Environment` opens the data file and the lock file, reads the
page size, and makes one :class:`Store` of them; every transaction of the environment
works through it. It holds the map of the data file, its pages (``kvmm.pages``: read,
verified and cached), the metas (``kvmm.metas``), the reader slots and the writer
lock, and does the writing of a commit: growing the file, writing the dirty pages,
writing the meta, giving the file's free end back.

Interface (what :class:`~kvmm.txn.Transaction` and :mod:`kvmm.nested` call):

- ``usable()``: Error when the environment is closed or was opened before fork().
- ``begin_read() -> (meta, slot, map)``: a reader's snapshot, published in a reader slot.
- ``end_read(slot)``: give the reader slot back.
- ``begin_write()``: take the writer lock (writing back a failed commit's meta first).
- ``end_write()``: let the writer lock go.
- ``write_snapshot() -> (meta, newest txnid, steady txnid, meta slot)``: a writer's start.
- ``oldest_reader()``: the txnid of the oldest snapshot a reader holds, or None.
- ``grow(end, txnid)``: commit step 4, make the file at least ``end`` bytes.
- ``write_pages(txn) -> written``: commit step 5, write the dirty pages and overflow runs.
- ``write_meta(meta, txn, written)``: commit steps 6-8, then give the file's free end back.
- ``txns``: the live transactions by id (the environment ends them at close and fork).
- ``policy``: when to give space back (``kvmm.reclaim.ReclaimPolicy``).
- what a transaction binds at begin: ``map``, ``pages``, ``cache``, ``page_size``,
  ``capacity``, ``max_entry``, ``metasync``, ``boot_id``, ``readonly``, ``forked``.

What the environment calls besides: ``cap()``, the cap on the file's size (it sets
``map_size``); ``close()``, closing the files.

Invariants:
- Only the holder of the writer lock writes to the data file, and it writes a meta
  only after the pages that meta reaches (see ``Transaction._commit``).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from . import format as fmt
from . import reclaim
from .errors import BadTxnError, DiskError, Error, MapFullError
from .mapfile import Map
from .pages import Pages
from .reclaim import ReclaimPolicy

# The file grows by half its size per step, at least GROW_MIN and at most GROW_MAX, so
# a growing database remaps O(log size) times.
GROW_MIN = 1 << 20
GROW_MAX = 1 << 30
# With sync=False, a commit becomes steady (synced) when either of two amounts since the
# last steady commit passes its threshold:
# - The pages that commit reaches and later commits freed (``pinned``) pass AUTOSYNC_MIN
#   and an AUTOSYNC_SHARE of the file's size. Until the next steady commit they are not
#   reused, but every page written after it is (see freelist): so the file holds at most
#   about that many bytes of the steady snapshot on top of the live data (a random fill
#   of 10^7 records: an eighth, where a wait of the whole file's size let the file reach
#   twice the live data).
# - The bytes written (``unsynced``) pass AUTOSYNC_WRITTEN and the file's size: that
#   bounds how far back an OS crash or power loss may send the database.
# The flush is what costs: it writes back every dirty page at once (~10 µs per one-put
# commit at a 64 MiB threshold, bench/smalltxn.py; less per byte the larger the
# threshold, as pages rewritten between two flushes are written back once), and once a
# steady commit reaches the tree's pages every page a later commit frees waits in the
# free list. Counting pinned pages, not bytes written, spares a store whose pages no
# steady commit reaches both: bench.py at 10^6 records used to flush in `overwrite`, and
# then its `mixed` wrote 668,090 waiting page numbers to the free database, 25,618 now.
AUTOSYNC_MIN = 256 << 20
AUTOSYNC_SHARE = 8
AUTOSYNC_WRITTEN = 1 << 30
# Runs of at most this many pages are written through the map, in commits of at most
# MAP_WRITE_COMMIT dirty pages and overflow runs (see write_pages).
MAP_WRITE_PAGES = 8
MAP_WRITE_COMMIT = 4096
_STRICT = os.environ.get("KVMM_STRICT", "") not in ("", "0")


class ThreadWriter:
    """The writer lock without a lock file (``lock=False``): one process, whose
    threads take turns. The lock file's (``LockFile``) otherwise."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def lock_writer(self) -> None:
        self._lock.acquire()

    def unlock_writer(self) -> None:
        self._lock.release()


class Store:
    """An open environment's data file, lock file and metas, as its transactions
    use them (the module docstring lists the interface)."""

    def __init__(self, datafile, lock, writer, metas, page_size: int, cache_size: int, *,
                 readonly: bool, sync: bool, metasync: bool, boot_id: bytes, path: str,
                 max_size: int | None) -> None:
        self.datafile = datafile
        self.lock = lock  # the LockFile, or None with lock=False
        self.writer = writer  # the lock file, or a ThreadWriter with lock=False
        self.metas = metas
        self.page_size = page_size
        self.capacity = fmt.page_capacity(page_size)
        self.max_entry = fmt.max_entry_size(page_size)
        self.readonly = readonly
        self.sync = sync
        self.metasync = metasync
        self.boot_id = boot_id
        self.path = path
        self.closed = False
        self.forked = False
        # The caps on the file's size: max_size, and map_size once set (see cap()).
        self.max_size = max_size
        self.map_size: Any = None
        self.writer_owner: Any = None  # the thread holding the write transaction
        # Short runs of pages are written through a writable map (see write_pages),
        # once the whole file has disk space reserved (_reserved).
        self._map_writes = datafile.map_writes
        self._reserved = False
        self.map = Map(datafile, writable=self._map_writes)
        self.map.cover(fmt.NUM_METAS * page_size)
        # Pages are read through the map and kept decoded in this process's cache.
        self.pages = Pages(page_size, max(64 * page_size, cache_size))
        self.cache = self.pages.cache
        # The slots of the dirty pages of this environment's write transactions, one
        # at a time (see btree.DirtyPages).
        self.dirty_slots: list = []
        self.policy = ReclaimPolicy()
        self.unsynced = 0  # bytes written since the last steady commit
        self.pinned = 0  # bytes of its pages freed since (see AUTOSYNC_MIN)
        self.file_size = 0  # the data file's size as this commit's grow found it
        # (txnid, size): the size this process left the file at with commit txnid. While
        # txnid is still the newest commit, nobody else resized the file (a writer
        # grows or shrinks it only in a commit), so the next commit skips the fstat.
        self._size_after = (-1, 0)
        # Live transactions by id (weak: a dropped one aborts itself), ended after fork().
        self.txns: dict[int, weakref.ref] = {}

    def usable(self) -> None:
        """Error when the environment is closed, or was opened before fork()."""
        if self.closed:
            raise Error("environment is closed")
        if self.forked:
            raise Error("environment was opened before fork(); open it again in the child")

    def close(self) -> None:
        """Close the files (a forked child's belong to its parent: only the map)."""
        self.closed = True
        self.map.close()
        self.pages.clear()
        if not self.forked:
            self.datafile.close()
            if self.lock is not None:
                self.lock.close()

    def cap(self) -> int | None:
        """The most bytes the file's pages may take: the smaller of map_size and
        max_size, or None when neither is set."""
        caps = [c for c in (self.map_size, self.max_size) if c is not None]
        return min(caps) if caps else None

    # --- readers and the writer ---------------------------------------------------------

    def begin_read(self):
        """(meta, slot, map): the newest commit, published in a reader slot (None
        with lock=False), and a map covering its pages."""
        self.usable()
        lock = self.lock
        mm = self.map.cover(fmt.NUM_METAS * self.page_size)
        slot = lock.acquire_slot() if lock is not None else None
        try:
            # Publish the snapshot, then check it is still the newest: a writer that
            # began before the slot was set may free only pages older than it.
            meta = self.metas.current(mm)[0]
            for _ in range(1000):
                if slot is not None:
                    lock.set_slot(slot, meta.txnid)
                now = self.metas.current(mm)[0]
                if now is meta:
                    break
                meta = now
            mm = self.map.cover(meta.next_pgno * self.page_size)
        except BaseException:
            if slot is not None:
                lock.release_slot(slot)
            raise
        return meta, slot, mm

    def end_read(self, slot) -> None:
        """Give back the reader slot of ``begin_read``."""
        if slot is not None and not self.closed and not self.forked:
            self.lock.release_slot(slot)

    def begin_write(self) -> None:
        """Take the writer lock for this thread; BadTxnError when it holds it already.
        A meta that a failed commit left in its slot is written back first."""
        self.usable()
        if self.writer_owner == threading.get_ident():
            raise BadTxnError("this thread already has a write transaction open")
        self.writer.lock_writer()
        self.writer_owner = threading.get_ident()
        metas = self.metas
        if metas.undo is not None:
            metas.write_back()
            if metas.undo is not None:
                self.end_write()
                raise DiskError(f"{self.path}: the disk still fails; the meta of "
                                "a failed commit could not be written back")

    def end_write(self) -> None:
        """Let the writer lock of ``begin_write`` go."""
        self.writer_owner = None
        if not self.closed and not self.forked:
            self.writer.unlock_writer()

    def write_snapshot(self) -> tuple:
        """(meta, newest txnid, steady txnid, meta slot to write) for a writer, read
        under the lock."""
        return self.metas.current(self.map.cover(fmt.NUM_METAS * self.page_size))

    def oldest_reader(self):
        """The txnid of the oldest snapshot a reader holds, or None."""
        return self.lock.oldest_reader() if self.lock is not None else None

    # --- commit support ---------------------------------------------------------------

    def grow(self, end: int, txnid: int) -> None:
        """Make the file at least ``end`` bytes (geometric steps, up to the cap) for
        commit ``txnid``; note its size for the rest of the commit (the writer lock is
        held: nobody else resizes it). MapFullError when ``end`` passes the cap."""
        cap = self.cap()
        if cap is not None and end > cap:
            raise MapFullError(f"commit needs {end} bytes, past the cap of {cap} bytes "
                               "(map_size or max_size; set_mapsize moves it)")
        last, size = self._size_after
        if last != txnid - 1:
            size = self.datafile.size()
        self.file_size = size
        if end <= size:
            return
        step = min(max(size // 2, GROW_MIN), GROW_MAX)
        new = max(end, size + step)
        ps = self.page_size
        new = (new + ps - 1) // ps * ps
        if cap is not None:
            new = max(end, min(new, cap // ps * ps))
        self.datafile.truncate(new)
        self.file_size = new
        if self._map_writes and not self.datafile.allocate(size, new - size):
            self._map_writes = False

    def _reserve(self) -> None:
        """Reserve disk space for the whole file once, before the first write through
        the map: a file written by another kvmm may have holes. Growth reserves what
        it adds (``grow``), so the file never has holes again."""
        if not self.datafile.allocate(0, self.file_size):
            self._map_writes = False
        self._reserved = True

    def write_pages(self, txn):
        """Write the transaction's dirty pages and overflow runs, contiguous pages in
        one call. Returns, for a durable commit few enough to list in its meta, its
        pages' (pgno, checksum) pairs flat (see ``write_meta``), else None.

        Pages are encoded in page order just before the call that writes their run,
        not all first: a large commit then reuses the memory of the runs before
        instead of touching fresh memory for every page (8.4 against 5.2 µs to
        encode a leaf at 10^6 records).
        """
        ps = self.page_size
        dirty = txn._dirty
        ovf = txn._ovf_dirty
        order = sorted(dirty) if not ovf else sorted([*dirty, *ovf])
        if self._map_writes and not self._reserved:
            self._reserve()
        # A run of a few pages is copied into the map: a write() of a page that is
        # not in the CPU's caches costs 8-13 µs on large files (the file system's
        # per-call work), a copy into a page already dirty under the map 0.5 µs.
        # Longer runs go in one write(), which touches no page table. So do all the
        # pages of a large commit: they are mostly clean (a flush came between their
        # writes), and a copy into a clean page takes a write fault (3-4 µs a page
        # against 2-3 for a write(), on a 2.4 GB file flushed between commits).
        wmap = (self.map.cover(txn.next_pgno * ps)
                if self._map_writes and len(order) <= MAP_WRITE_COMMIT else None)
        write = self.datafile.write
        run_start = run_end = 0
        chunks: list = []
        written = 0
        # (pgno, checksum) of each page a durable commit may list in its meta
        pairs = [] if self.sync and len(order) <= fmt.WRITTEN_MAX else None
        for pgno in order:
            node = dirty.get(pgno)
            if node is not None:
                parts = [self._page(txn, node, pgno)]
                n = 1
            else:
                head, value = fmt.encode_overflow(pgno, txn.txnid, ovf[pgno])
                n = fmt.overflow_pages(len(value), ps)
                parts = [head, value, bytes(n * ps - fmt.HEADER_SIZE - len(value))]
            if pgno != run_end or len(chunks) >= 512:
                if chunks:
                    self._write_run(wmap, write, run_start, run_end, chunks)
                run_start = pgno
                chunks = []
            chunks += parts
            run_end = pgno + n
            written += n
            if pairs is not None:
                pairs += (pgno, fmt.stored_checksum(parts[0]))
        if chunks:
            self._write_run(wmap, write, run_start, run_end, chunks)
        self.unsynced += written * ps
        if pairs is None or written > fmt.WRITTEN_PAGES_MAX:
            return None
        return tuple(pairs)

    def _page(self, txn, node, pgno: int) -> bytes:
        """The bytes of dirty page ``pgno``."""
        patched = node.patched  # None past PATCH_LEAF_MAX / PATCH_BRANCH_MAX entries
        if patched is None or not node.src:
            return self._encode(node, pgno, txn.txnid)
        # Changed in place only, in few entries: patch the committed source page's
        # bytes (not reused before this commit ends: it was freed by it).
        ps = self.page_size
        src = txn._mm[node.src * ps : (node.src + 1) * ps]
        if node.kids is None:
            page = fmt.patch_leaf(src, pgno, txn.txnid, node.keys, node.vals, patched)
        else:
            page = fmt.patch_branch(src, pgno, txn.txnid, node.kids, node.ktxn, patched)
        if _STRICT:
            assert page == self._encode(node, pgno, txn.txnid), f"page {pgno} patched wrong"
        return page

    def _write_run(self, wmap, write, start: int, end: int, chunks: list) -> None:
        """Write the pages ``start .. end-1`` (``chunks`` back to back)."""
        ps = self.page_size
        at = start * ps
        if wmap is None or end - start > MAP_WRITE_PAGES:
            write(at, chunks)
            return
        for chunk in chunks:
            n = len(chunk)
            wmap[at : at + n] = chunk
            at += n

    def _encode(self, node, pgno: int, txnid: int) -> bytes:
        ps = self.page_size
        if node.kids is None:
            return fmt.encode_leaf(pgno, txnid, node.keys, node.vals, node.flags, ps)
        return fmt.encode_branch(pgno, txnid, node.keys, node.kids, node.ktxn, ps)

    def write_meta(self, meta, txn, written) -> None:
        """Steps 6-8 of the commit: sync the pages (a steady commit), write the meta
        into the slot that does not hold the newest steady meta, sync it; then give
        the file's free end back.

        A torn meta write fails its checksum and the other slot, untouched, is used.
        A durable commit that listed the pages it wrote (``written``, from
        ``write_pages``) skips step 6: see ``Metas._intact``.
        """
        mm = self.map.cover(fmt.NUM_METAS * self.page_size)
        target = txn._meta_target
        size = self.map.size
        self.pinned += len(txn.freelist.freed) * self.page_size
        steady = (self.sync or self.pinned >= max(AUTOSYNC_MIN, size // AUTOSYNC_SHARE)
                  or self.unsynced >= max(AUTOSYNC_WRITTEN, size)
                  or self.policy.steady_to_give_back(txn))
        sync_meta = steady and (self.metasync or not self.sync)
        if steady:
            if (sync_meta and written is not None and len(written) // 2
                    <= fmt.written_room(meta.page_size, len(meta.inline_free) // 2)):
                # One flush, after the meta, makes both durable; the meta lists the
                # pages so a later boot can tell whether they all arrived.
                meta.flags |= fmt.META_STEADY | fmt.META_WRITTEN
                meta.written = written
            else:
                self.datafile.sync()  # 6. the pages are durable before a meta names them
                meta.flags |= fmt.META_STEADY
            self.unsynced = self.pinned = 0
        # 7. The commit point; 8. durable (and a steady meta safe before weak ones
        #    are written into the other slot).
        self.metas.put(mm, target, meta, sync_meta)
        self.metas.wrote(target, meta)
        try:
            self._shrink(self.file_size, meta)
        except DiskError:
            return  # giving space back is optional; the commit stands, size unknown
        self._size_after = (meta.txnid, self.file_size)

    def _shrink(self, size: int, meta) -> None:
        """Give free space at the file's end back, once it passes half the file.

        Only pages that were reusable were cut from ``next_pgno``: no snapshot a
        reader holds, nor the steady commit a power loss falls back to, reaches
        them, so the file may end before the older meta's ``next_pgno``.
        """
        ps = self.page_size
        end = meta.next_pgno * ps
        if size - end > max(reclaim.SHRINK_MIN, size // 2):
            new = end + min(end // 8 // ps * ps, GROW_MAX)
            self.datafile.truncate(new)
            self.file_size = new
