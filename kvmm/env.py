"""The environment: one data file, its lock file, and what its transactions share.

``kvmm.open(path)`` returns an :class:`Environment`, the object py-lmdb calls
``Environment``: it opens (or creates) the files, begins transactions, and holds what
every transaction of this process shares — the map of the data file, its pages
(``kvmm.pages``: read, verified and cached), and the cached newest meta.

Invariants:
- Only the holder of the writer lock writes to the data file, and it writes a meta
  only after the pages that meta reaches (see ``Transaction._commit``).
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Literal, Self, overload

from . import format as fmt
from . import orders
from .errors import (
    BadTxnError,
    CorruptedError,
    DbsFullError,
    DiskError,
    Error,
    IncompatibleError,
    InvalidError,
    InvalidParameterError,
    MapFullError,
    NotFoundError,
    ReadonlyError,
)
from .lmdbfiles import refuse_lmdb
from .lock import LockFile
from .mapfile import DataFile, Map
from .pages import Pages
from .txn import Transaction

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]

DATA_NAME = "data.kvmm"
LOCK_NAME = "lock.kvmm"
LOCK_SUFFIX = "-lock"

# The file grows by half its size per step, at least GROW_MIN and at most GROW_MAX, so
# a growing database remaps O(log size) times.
GROW_MIN = 1 << 20
GROW_MAX = 1 << 30
# Free space at the end is given back when it passes half the file (more than a
# growth step leaves) and SHRINK_MIN; what stays is a slack of an eighth of the used
# size.
SHRINK_MIN = 4 << 20
# With sync=False, a commit becomes steady (synced) once the bytes written since the
# last steady commit pass AUTOSYNC_MIN and an AUTOSYNC_SHARE of the file's size. Until
# then the pages the steady commit reaches are not reused, but every page written
# after it is (see freelist): so the file holds at most about that many bytes of the
# steady snapshot on top of the live data (a random fill of 10^7 records: an eighth,
# where a wait of the whole file's size let the file reach twice the live data). The
# flush is what costs: it writes back every dirty page at once, ~10 µs per one-put
# commit at a 64 MiB threshold (bench/smalltxn.py), less per byte the larger the
# threshold, as pages rewritten between two flushes are written back once.
AUTOSYNC_MIN = 256 << 20
AUTOSYNC_SHARE = 8
DEFAULT_CACHE_SIZE = 256 << 20
# Runs of at most this many pages are written through the map (see _write_pages).
MAP_WRITE_PAGES = 8
# Commits between two attempts to give the tail back that found nothing to give.
RECLAIM_RETRY = 64
RECLAIM_RETRY_MAX = 4096
# How long a look at the metas waits for a newer meta that fails its checks to become
# whole: another process is writing it (a commit's meta is one write of a page), or a
# crash tore it, which the wait cannot tell apart from a writer that was descheduled.
META_WAIT = 0.05
# While free pages are pinned, an attempt to give space back is retried after one
# commit per this many reusable pages it had to gather (see _reclaimed).
RECLAIM_PAGES_PER_COMMIT = 16
_STRICT = os.environ.get("KVMM_STRICT", "") not in ("", "0")

_open_envs: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's environments: it holds none of the
    parent's locks. Mark them, and end their transactions, so use raises Error."""
    for env in list(_open_envs):
        env._forked = True
        for ref in list(env._txns.values()):
            txn = ref()
            if txn is not None:
                txn._mark_done()
                txn._dbs.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _read_boot_id() -> bytes:
    try:
        with builtins.open("/proc/sys/kernel/random/boot_id", "rb") as f:
            text = f.read().strip().replace(b"-", b"")
        return bytes.fromhex(text.decode())[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


BOOT_ID = _read_boot_id()


class _Database:
    """A handle on the main database (name None) or a named one, as py-lmdb's.

    ``_flags`` are its record's flags (``format.DB_*``). A handle that
    ``open_db(txn=...)`` opened belongs to that transaction (and its children) until
    it ends (``_txn``, a weak reference): its commit shares the handle with every
    transaction, its abort closes it, as in LMDB.
    """

    __slots__ = ("__weakref__", "_dropped", "_flags", "_txn", "env", "name")

    def __init__(self, env: Environment, name: bytes | None, flags: int) -> None:
        self.env = env
        self.name = name
        self._flags = flags
        self._dropped = False
        self._txn: Any = None

    def flags(self, *args: Any) -> dict[str, bool]:
        """py-lmdb's dict of the database's ``open_db`` flags (a transaction may be
        passed, as to py-lmdb's; the handle knows them)."""
        if len(args) > 1:
            raise TypeError("flags takes 0 or 1 arguments")
        return orders.flag_dict(self._flags)

    def __repr__(self) -> str:
        return f"<kvmm database {self.name!r}>"


def _count(name: str, value) -> int:
    """An option that counts something: an int, TypeError otherwise; OverflowError
    when negative, as py-lmdb's."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise OverflowError(f"{name} must be >= 0, not {value}")
    return value


class Environment:
    """An open kvmm environment (py-lmdb's ``Environment``); ``kvmm.open`` lists
    the options and docs/reference.md of the project every method."""

    def __init__(self, path: PathLike, map_size: int | None = None, subdir: bool = True,
                 readonly: bool = False, metasync: bool = True, sync: bool = True,
                 map_async: bool = False, mode: int = 0o644, create: bool = True,
                 readahead: bool = True, writemap: bool = False, meminit: bool = True,
                 max_readers: int = 126, max_dbs: int = 0, max_spare_txns: int = 1,
                 lock: bool = True, page_size: int = fmt.DEFAULT_PAGE_SIZE,
                 max_size: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE,
                 datafile_class: type[DataFile] = DataFile) -> None:
        self._closed = True
        self._forked = False
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not fmt.valid_page_size(page_size):
            raise InvalidParameterError(f"page_size {page_size}: a power of two, 4096-65536")
        if map_size is not None:
            _count("map_size", map_size)
        for name, value in (("max_readers", max_readers), ("max_dbs", max_dbs),
                            ("max_spare_txns", max_spare_txns)):
            _count(name, value)
        self._path = path
        self._subdir = subdir
        self._readonly = readonly
        self._sync = sync
        self._metasync = metasync
        self._lock_enabled = lock
        # What flags() reports: every option as given, as py-lmdb's.
        self._flags = {"subdir": bool(subdir), "readonly": bool(readonly),
                       "metasync": bool(metasync), "sync": bool(sync),
                       "map_async": bool(map_async), "readahead": bool(readahead),
                       "writemap": bool(writemap), "meminit": bool(meminit),
                       "lock": bool(lock)}
        self._max_dbs = max_dbs
        self._max_size = max_size
        self._map_size: Any = None  # the cap map_size sets; see _set_cap
        self._mode = mode
        self._boot_id = BOOT_ID
        refuse_lmdb(path, os.path.join(path, DATA_NAME) if subdir else path)
        # As LMDB: the directory gets ``mode`` (and x where it has r, so that a mode
        # meant for files leaves it usable), the files ``mode`` without x.
        file_mode = mode & ~0o111
        if subdir:
            if os.path.exists(path) and not os.path.isdir(path):
                raise InvalidError(f"{path} is a file, not an environment directory "
                                   "(a file is opened with subdir=False)")
            if not os.path.isdir(path):
                if not create or readonly:
                    raise NotFoundError(f"{path}: no such environment directory")
                try:
                    os.mkdir(path, mode | (mode & 0o444) >> 2)
                except FileExistsError:
                    pass  # made by another process meanwhile
                except FileNotFoundError:
                    raise NotFoundError(f"{path}: its parent directory does not exist") from None
            data_path = os.path.join(path, DATA_NAME)
            lock_path = os.path.join(path, LOCK_NAME)
        else:
            data_path = path
            lock_path = path + LOCK_SUFFIX
        # ``create`` is about the directory, as in py-lmdb: files are made in it.
        if readonly and not os.path.exists(data_path):
            raise NotFoundError(f"{data_path}: no such file")
        self._data_path = data_path
        self._lock: Any = None
        self._thread_writer = threading.Lock()  # used when lock=False
        self._writer_owner: Any = None
        # The I/O seam: tests pass a subclass that injects faults or loses writes.
        try:
            self._datafile = datafile_class(data_path, readonly=readonly, create=True,
                                            mode=file_mode)
        except FileNotFoundError:
            raise NotFoundError(f"{data_path}: no such file or directory") from None
        try:
            # A file that is not kvmm's is refused before a lock file is made for it.
            if self._datafile.size():
                self._open_file(page_size, may_create=False)
            if lock:
                self._lock = LockFile(lock_path, max_readers, file_mode, True,
                                      spare=max_spare_txns)
            self._page_size = self._open_file(page_size)
        except BaseException:
            self._datafile.close()
            if self._lock is not None:
                self._lock.close()
            raise
        self._capacity = fmt.page_capacity(self._page_size)
        self._max_entry = fmt.max_entry_size(self._page_size)
        # Short runs of pages are written through a writable map (see _write_pages),
        # once the whole file has disk space reserved (_reserved).
        self._map_writes = self._datafile.map_writes
        self._reserved = False
        self._map = Map(self._datafile, writable=self._map_writes)
        self._map.cover(fmt.NUM_METAS * self._page_size)
        # Pages are read through the map and kept decoded in this process's cache.
        self._pages = Pages(self._page_size, max(64 * self._page_size, cache_size))
        self._cache = self._pages.cache
        self._meta_key: Any = None
        self._meta_undo: Any = None  # (slot, bytes) a failed commit left to write back
        self._intact_seen: dict = {}  # (txnid, written) of a one-flush meta -> intact
        self._meta_seen: Any = None
        self._meta_pick: Any = None
        self._torn_seen: Any = None  # bytes of a newer meta slot that stayed torn (a crash)
        self._main_db = _Database(self, None, 0)
        self._dbs: dict[bytes, _Database] = {}
        self._unsynced = 0
        self._file_size = 0  # the data file's size as this commit's _grow found it
        # (txnid, size): the size this process left the file at with commit txnid. While
        # txnid is still the newest commit, nobody else resized the file (a writer
        # grows or shrinks it only in a commit), so the next commit skips the fstat.
        self._size_after = (-1, 0)
        # Live transactions by id (weak: a dropped one aborts itself), ended after fork().
        self._txns: dict[int, weakref.ref] = {}
        self._reclaim_floor = 0  # free pages after the last fruitless reclaim
        self._reclaim_retry = 0  # the txnid from which to try again anyway
        self._reclaim_tries = 0
        self._reclaim_wait = RECLAIM_RETRY  # commits until the next try after two failed
        self._pid = os.getpid()
        self._closed = False
        _open_envs.add(self)
        if not readonly:
            self._mend_metas()
        if map_size is not None:
            self._set_cap(map_size)

    # --- opening --------------------------------------------------------------------

    def _open_file(self, page_size: int, may_create: bool = True) -> int:
        """Create the two metas of a new file, or read the page size of an existing
        one. Returns the page size. Refuses files that are not kvmm's.

        A file whose creation a crash cut short (see ``_unborn``) is created anew:
        it holds no commit. Without ``may_create`` (no lock file yet) such a file is
        only recognised.
        """
        df = self._datafile
        if not self._readonly and self._unborn():
            if not may_create:
                return page_size
            self._lock_writer()
            try:
                if self._unborn():
                    empty = (0, 0, 0, 0, 0, 0, 0, 0)
                    meta = fmt.Meta(page_size, 0, fmt.NUM_METAS, fmt.META_STEADY,
                                    self._boot_id, empty, empty)
                    page = fmt.encode_meta(meta).ljust(page_size, b"\0")
                    df.truncate(0)
                    df.write(0, [page, page])
                    df.sync()
                    return page_size
            finally:
                self._unlock_writer()
        size = df.size()
        head = df.pread(fmt.MAX_PAGE_SIZE, 0)
        first_error = None
        try:
            meta = fmt.decode_meta(head)
            if size < fmt.NUM_METAS * meta.page_size:
                raise InvalidError(f"{self._data_path}: file too short for a kvmm data file")
            return meta.page_size
        except (InvalidError, CorruptedError) as e:
            first_error = e
        # The first meta is unreadable: find the second at each possible page size.
        psize = fmt.MIN_PAGE_SIZE
        while psize <= fmt.MAX_PAGE_SIZE and size >= 2 * psize:
            try:
                meta = fmt.decode_meta(df.pread(psize, psize))
                if meta.page_size == psize:
                    return psize
            except Error:
                pass
            psize *= 2
        raise type(first_error)(f"{self._data_path}: {first_error}")

    def _unborn(self) -> bool:
        """Whether the data file holds no commit because its creation never finished:
        it is empty, or at most two of the largest pages, starts with kvmm's magic or
        zeros, names no commit in meta 0 and holds no valid meta but the creating one
        cut short. O(1)."""
        df = self._datafile
        size = df.size()
        if size == 0:
            return True
        if size > fmt.NUM_METAS * fmt.MAX_PAGE_SIZE:
            return False
        head = df.pread(size, 0)
        if head[: len(fmt.MAGIC)] not in (fmt.MAGIC, bytes(len(fmt.MAGIC))):
            return False
        at = fmt.META_TXNID_OFFSET
        if any(head[at : at + 8]):
            return False  # meta 0 names a commit: a damaged database, not an unborn one
        try:
            meta = fmt.decode_meta(head)
            return meta.txnid == 0 and size < fmt.NUM_METAS * meta.page_size
        except Error:
            pass
        psize = fmt.MIN_PAGE_SIZE
        while psize <= fmt.MAX_PAGE_SIZE and size >= 2 * psize:
            try:
                fmt.decode_meta(head[psize:])
                return False
            except Error:
                psize *= 2
        return True

    # --- metas ----------------------------------------------------------------------

    def _metas(self, mm) -> tuple:
        """Decode both metas from the map (None for one that fails its checks)."""
        out = []
        for slot in range(fmt.NUM_METAS):
            off = slot * self._page_size
            try:
                meta = fmt.decode_meta(mm[off : off + self._page_size])
            except Error:
                meta = None
            if meta is not None and not self._intact(meta):
                meta = None  # a one-flush commit a power loss tore: as if never written
            out.append(meta)
        return tuple(out)

    def _intact(self, meta) -> bool:
        """Whether a meta's commit reached the disk whole. Only a one-flush meta
        (META_WRITTEN) from an earlier boot can be in doubt: within one boot the page
        cache holds every page written before it. Answers are kept per commit."""
        if not meta.flags & fmt.META_WRITTEN or meta.boot_id == self._boot_id:
            return True
        key = (meta.txnid, meta.written)
        known = self._intact_seen.get(key)
        if known is None:
            known = fmt.written_intact(meta, self._datafile.pread)
            self._intact_seen[key] = known
        return known

    def _pick(self, metas) -> tuple:
        """(meta to use, newest txnid seen, newest steady txnid, slot to write next).

        A weak (not synced) meta from an earlier boot may reach pages that never made
        it to disk, so it is passed over for the steady one.
        """
        boot = self._boot_id
        usable = [(m.txnid, -s, m) for s, m in enumerate(metas)
                  if m is not None and (m.steady or m.boot_id == boot)]
        if not usable:
            raise CorruptedError(f"{self._data_path}: no valid meta page")
        meta = max(usable)[2]
        newest = max(m.txnid for m in metas if m is not None)
        steadies = [(m.txnid, s) for s, m in enumerate(metas) if m is not None and m.steady]
        if steadies:
            steady_txnid, steady_slot = max(steadies)
            target = 1 - steady_slot
        else:
            steady_txnid = meta.txnid
            target = 1 - metas.index(meta)
        return meta, newest, steady_txnid, target

    def _current(self, mm) -> tuple:
        """The cached result of ``_pick``, decoded again only when a meta changed.

        A meta slot that fails its checks yet names a newer txnid than the meta
        picked is, most likely, a commit's meta being written by another process
        right now: with ``sync=False`` every commit rewrites the same slot, and the
        other one holds the last steady commit, which may be far older (at first the
        empty database). A transaction begun then must see the newest commit (docs/reference.md:
        "a snapshot of the last commit at begin()"), so the look waits, up to
        META_WAIT, for the slot to become whole. A slot still torn after that was
        torn by a crash: the steady meta is what the file holds, and the same torn
        bytes are not waited for again.
        """
        key = self._meta_txnids(mm)
        if key != self._meta_key:
            metas = self._metas(mm)
            torn = self._newer_torn(mm, metas)
            if torn is not None and torn != self._torn_seen:
                deadline = time.monotonic() + META_WAIT
                while torn is not None and time.monotonic() < deadline:
                    time.sleep(0)  # let the writer finish its write
                    key = self._meta_txnids(mm)
                    metas = self._metas(mm)
                    torn = self._newer_torn(mm, metas)
                self._torn_seen = torn
            if self._meta_undo is not None:
                # A failed commit's meta is in the slot: what counts is what it held.
                slot, old = self._meta_undo
                patched = list(metas)
                try:
                    patched[slot] = fmt.decode_meta(old)
                except Error:
                    patched[slot] = None
                metas = tuple(patched)
            self._meta_seen = metas
            self._meta_pick = self._pick(metas)
            # A torn slot may become whole without its txnid changing: look again.
            self._meta_key = None if self._meta_undo is not None or torn else key
        return self._meta_pick

    def _meta_txnids(self, mm) -> tuple:
        """The raw txnid field of each meta slot: what ``_current`` keys its cache on."""
        ps = self._page_size
        at = fmt.META_TXNID_OFFSET
        return tuple(mm[s * ps + at : s * ps + at + 8] for s in range(fmt.NUM_METAS))

    def _newer_torn(self, mm, metas) -> bytes | None:
        """The bytes of a meta slot that fails its checks but names a txnid above
        every valid meta's, or None."""
        valid = [m.txnid for m in metas if m is not None]
        newest = max(valid, default=-1)
        ps = self._page_size
        for slot, meta in enumerate(metas):
            if meta is None:
                (txnid,) = fmt.META_TXNID.unpack_from(mm, slot * ps + fmt.META_TXNID_OFFSET)
                if txnid > newest:
                    return mm[slot * ps : (slot + 1) * ps]
        return None

    def _put_meta(self, mm, slot: int, meta, sync: bool) -> None:
        """Write ``meta`` into ``slot`` (and sync). If that fails, the caller hears
        that its commit failed, so the meta must not show: the slot's old bytes are
        written back. On a disk that still fails, this environment ignores the slot
        and the next writer writes them back first."""
        ps = self._page_size
        old = mm[slot * ps : (slot + 1) * ps]
        try:
            self._datafile.write(slot * ps, [fmt.encode_meta(meta)])
            if sync:
                self._datafile.sync()
        except BaseException:
            self._meta_key = None
            self._meta_undo = (slot, old)
            self._undo_meta()
            raise

    def _undo_meta(self) -> None:
        """Write back the meta slot a failed commit wrote (see ``_write_meta``);
        DiskError while the disk still fails."""
        slot, old = self._meta_undo
        try:
            self._datafile.write(slot * self._page_size, [old])
            self._datafile.sync()
        except DiskError:
            return
        self._meta_undo = None
        self._meta_key = None

    def _mend_metas(self) -> None:
        """Rewrite a meta slot that a crash tore, from the other, steady, meta.

        A commit writes its meta into the slot that does not hold the newest steady
        meta, so an interrupted meta write can only tear that slot; the database
        already opens at the other. Copying it back makes the file whole again (and
        ``kvmm check`` clean) before any writer relies on having two metas.
        """
        ps = self._page_size
        if None not in self._metas(self._map.cover(fmt.NUM_METAS * ps)):
            return
        self._lock_writer()
        try:
            metas = self._metas(self._map.cover(fmt.NUM_METAS * ps))
            good = [m for m in metas if m is not None]
            if len(good) == 1 and good[0].steady:
                slot = metas.index(None)
                self._datafile.write(slot * ps, [fmt.encode_meta(good[0])])
                self._datafile.sync()
                self._meta_key = None
        finally:
            self._unlock_writer()

    def _wrote_meta(self, slot: int, meta) -> None:
        """Update the cached metas after this process wrote ``meta`` into ``slot``:
        the newest meta now, the newest steady one if it is steady (else the steady
        one stays where it was, and so does the slot the next commit writes)."""
        key = self._meta_key
        if key is None or None in self._meta_seen:
            self._meta_key = None  # decode both again at the next look
            return
        metas = list(self._meta_seen)
        metas[slot] = meta
        _, _, steady_txnid, target = self._meta_pick
        if meta.steady:
            steady_txnid, target = meta.txnid, 1 - slot
        self._meta_seen = tuple(metas)
        self._meta_pick = (meta, meta.txnid, steady_txnid, target)
        key = list(key)
        key[slot] = fmt.META_TXNID.pack(meta.txnid)
        self._meta_key = tuple(key)

    # --- transactions ---------------------------------------------------------------

    def _usable(self) -> None:
        if self._closed:
            raise Error("environment is closed")
        if self._forked:
            raise Error("environment was opened before fork(); open it again in the child")

    @overload
    def begin(self, db: _Database | None = None, parent: Transaction[Any] | None = None,
              write: bool = False, buffers: Literal[False] = False) -> Transaction[bytes]: ...
    @overload
    def begin(self, db: _Database | None, parent: Transaction[Any] | None, write: bool,
              buffers: Literal[True]) -> Transaction[memoryview]: ...
    @overload
    def begin(self, db: _Database | None = None, parent: Transaction[Any] | None = None,
              write: bool = False, *, buffers: Literal[True]) -> Transaction[memoryview]: ...
    @overload
    def begin(self, db: _Database | None = None, parent: Transaction[Any] | None = None,
              write: bool = False, buffers: bool = False) -> Transaction[Any]: ...
    def begin(self, db: _Database | None = None, parent: Transaction[Any] | None = None,
              write: bool = False, buffers: bool = False) -> Transaction[Any]:
        """Begin a read (default) or write transaction. A write waits for the writer;
        with ``parent`` (a write transaction) it is a nested one (kvmm.nested)."""
        return Transaction(self, db=db, parent=parent, write=write, buffers=buffers)

    def _begin_read(self):
        self._usable()
        lock = self._lock
        mm = self._map.cover(fmt.NUM_METAS * self._page_size)
        slot = lock.acquire_slot() if lock is not None else None
        try:
            # Publish the snapshot, then check it is still the newest: a writer that
            # began before the slot was set may free only pages older than it.
            meta = self._current(mm)[0]
            for _ in range(1000):
                if slot is not None:
                    lock.set_slot(slot, meta.txnid)
                now = self._current(mm)[0]
                if now is meta:
                    break
                meta = now
            mm = self._map.cover(meta.next_pgno * self._page_size)
        except BaseException:
            if slot is not None:
                lock.release_slot(slot)
            raise
        return meta, slot, mm

    def _end_read(self, slot) -> None:
        if slot is not None and not self._closed and not self._forked:
            self._lock.release_slot(slot)

    def _lock_writer(self) -> None:
        if self._lock is not None:
            self._lock.lock_writer()
        else:
            self._thread_writer.acquire()

    def _unlock_writer(self) -> None:
        if self._lock is not None:
            self._lock.unlock_writer()
        else:
            self._thread_writer.release()

    def _begin_write(self, txn) -> None:
        self._usable()
        if self._writer_owner == threading.get_ident():
            raise BadTxnError("this thread already has a write transaction open")
        self._lock_writer()
        self._writer_owner = threading.get_ident()
        if self._meta_undo is not None:
            self._undo_meta()
            if self._meta_undo is not None:
                self._end_write(txn)
                raise DiskError(f"{self._data_path}: the disk still fails; the meta of "
                                "a failed commit could not be written back")

    def _end_write(self, txn) -> None:
        self._writer_owner = None
        if not self._closed and not self._forked:
            self._unlock_writer()

    def _write_snapshot(self) -> tuple:
        """(meta, newest txnid, steady txnid, meta slot to write) for a writer, read
        under the lock."""
        return self._current(self._map.cover(fmt.NUM_METAS * self._page_size))

    def _oldest_reader(self):
        return self._lock.oldest_reader() if self._lock is not None else None

    # --- pages ----------------------------------------------------------------------

    # --- commit support ---------------------------------------------------------------

    def _want_reclaim(self, txn) -> bool:
        """Whether this commit should gather every reusable free page, to give the
        file's tail back: when an eighth of the file or more is free, and either more
        pages are free than after the last attempt that gave nothing back, or
        RECLAIM_RETRY commits have passed since (readers may have let go)."""
        free = txn.free_db.entries + len(txn.meta.inline_free) // 2
        if free < 64 or free * 8 < txn.next_pgno:
            return False
        return free * 2 > self._reclaim_floor * 3 or txn.txnid >= self._reclaim_retry

    def _frees_much(self, txn, freed: int) -> bool:
        """Whether a commit that frees ``freed`` pages is worth giving space back at
        once: a quarter of the pages in use or more (SHRINK_MIN at least), and it
        wrote nothing in the top quarter of the file (a commit that rewrote the
        whole tree into the file's end, say, leaves no free tail to cut)."""
        end = txn.next_pgno
        if freed * 4 < end or freed * self._page_size < SHRINK_MIN:
            return False
        top = max(max(txn._dirty, default=0), max(txn._ovf_dirty, default=0))
        return top * 4 < end * 3

    def _steady_to_give_back(self, txn) -> bool:
        """With sync=False, whether this commit should be steady (synced) all the
        same: it frees much of the file (or gives space back), some of it pages the
        last steady commit reaches, which only a steady commit lets go of (they may
        pin the tail)."""
        fl = txn.freelist
        return bool(fl.freed) and (txn._giving_back or self._frees_much(
            txn, len(fl.freed) + len(fl.freed_weak)))

    def _worth_giving_back(self, txn) -> bool:
        """Whether the commit just made freed so much of the file that an empty
        commit should give it back now, instead of leaving the file large until the
        next writer's commit. Only when that commit may reuse them: no reader holds
        an older snapshot, the meta is durable or needs no sync (metasync), and pages
        the steady commit reaches are not counted (see ``_write_meta``: such a commit
        is made steady)."""
        fl = txn.freelist
        freed = len(fl.freed_weak)
        if txn.txnid <= self._meta_pick[2]:  # this commit is steady
            freed += len(fl.freed)
        if not self._frees_much(txn, freed) or not self._metasync:
            return False
        oldest = self._oldest_reader()
        return oldest is None or oldest >= txn.txnid

    def _give_back(self) -> None:
        """The empty commits of ``_worth_giving_back``: each gathers the reusable
        pages and cuts the file's free tail (see ``_want_reclaim``). The first one
        frees the free tree's own old pages as it empties it; they may pin the tail
        until a commit after it (steady, see ``_steady_to_give_back``), so a second
        one follows when the first cut nothing. They take the writer lock again,
        after any writer waiting for it. Giving space back is optional: a failure
        here leaves the file as the last commit left it."""
        for _ in range(2):
            size = self._file_size
            try:
                txn = self.begin(write=True)
            except Error:
                return
            txn._giving_back = True
            try:
                if not txn._reclaim:
                    txn._reclaim = True
                    txn.freelist.load_all()
                txn.commit()
            except Error:
                txn.abort()
                return  # the commit stands; the space is given back by a later one
            if self._file_size < size:
                return

    @staticmethod
    def _worth_moving(txn, reusable: int) -> bool:
        """Move pages that pin the tail only when most free pages are reusable: while
        readers (or, with sync=False, the last steady commit) pin them, moving would
        not free the tail yet."""
        return reusable * 2 >= txn.free_db.entries + len(txn.meta.inline_free) // 2

    def _reclaimed(self, txn, trimmed: int, reusable: int) -> None:
        """After an attempt. While free pages are pinned, try again soon: after a
        number of commits in proportion to the reusable pages it gathered, what an
        attempt costs (at 10^6 records, ~10^4 reusable pages once sync=False leaves
        half the file waiting for the next sync: gathered every 8 commits, they made
        each commit several times slower). A tail still in use is often the free tree
        itself, which the attempt moved down, so one more attempt follows; after two
        that gave nothing back, attempts wait (see ``_want_reclaim``), twice as long
        after each such pair, up to RECLAIM_RETRY_MAX commits: an attempt gathers every
        reusable page, which costs milliseconds in a large file whose tail stays in
        use (say, after rewriting every key in one transaction). An attempt that cut
        less than 1/64 of the file counts as one that gave nothing back: else a tail
        that frees a few pages per commit would have every commit gather them all."""
        if trimmed * 64 >= txn.next_pgno + trimmed:
            self._reclaim_tries = 0
            self._reclaim_wait = RECLAIM_RETRY
            return
        if not self._worth_moving(txn, reusable):
            # Gathering the reusable pages and writing them back costs about 0.4 µs
            # a page: wait commits in proportion, so this costs the commits in
            # between a few µs each at most (a commit of 10 puts takes ~500 µs).
            self._reclaim_retry = txn.txnid + max(RECLAIM_RETRY // 8,
                                                  reusable // RECLAIM_PAGES_PER_COMMIT)
            self._reclaim_floor = txn.free_db.entries + len(txn.freelist.inline) // 2
            return
        self._reclaim_tries += 1
        if self._reclaim_tries >= 2:
            self._reclaim_tries = 0
            self._reclaim_floor = txn.free_db.entries + len(txn.freelist.inline) // 2
            self._reclaim_retry = txn.txnid + self._reclaim_wait
            self._reclaim_wait = min(2 * self._reclaim_wait, RECLAIM_RETRY_MAX)

    def _grow(self, end: int, txn) -> None:
        """Make the file at least ``end`` bytes (geometric steps, up to the cap); note
        its size for the rest of the commit (the writer lock is held: nobody else
        resizes it). MapFullError when ``end`` passes the cap."""
        cap = self._cap()
        if cap is not None and end > cap:
            raise MapFullError(f"commit needs {end} bytes, past the cap of {cap} bytes "
                               "(map_size or max_size; set_mapsize moves it)")
        txnid, size = self._size_after
        if txnid != txn.txnid - 1:
            size = self._datafile.size()
        self._file_size = size
        if end <= size:
            return
        step = min(max(size // 2, GROW_MIN), GROW_MAX)
        new = max(end, size + step)
        ps = self._page_size
        new = (new + ps - 1) // ps * ps
        if cap is not None:
            new = max(end, min(new, cap // ps * ps))
        self._datafile.truncate(new)
        self._file_size = new
        if self._map_writes and not self._datafile.allocate(size, new - size):
            self._map_writes = False

    def _reserve(self) -> None:
        """Reserve disk space for the whole file once, before the first write through
        the map: a file written by another kvmm may have holes. Growth reserves what
        it adds (``_grow``), so the file never has holes again."""
        if not self._datafile.allocate(0, self._file_size):
            self._map_writes = False
        self._reserved = True

    def _write_pages(self, txn):
        """Write the transaction's dirty pages and overflow runs, contiguous pages in
        one call. Returns, for a durable commit few enough to list in its meta, its
        pages' (pgno, checksum) pairs flat (see ``_write_meta``), else None.

        Pages are encoded in page order just before the call that writes their run,
        not all first: a large commit then reuses the memory of the runs before
        instead of touching fresh memory for every page (8.4 against 5.2 µs to
        encode a leaf at 10^6 records).
        """
        ps = self._page_size
        dirty = txn._dirty
        ovf = txn._ovf_dirty
        order = sorted(dirty) if not ovf else sorted([*dirty, *ovf])
        if self._map_writes and not self._reserved:
            self._reserve()
        # A run of a few pages is copied into the map: a write() of a page that is
        # not in the CPU's caches costs 8-13 µs on large files (the file system's
        # per-call work), a copy into a page already dirty under the map 0.5 µs.
        # Longer runs go in one write(), which touches no page table.
        wmap = self._map.cover(txn.next_pgno * ps) if self._map_writes else None
        write = self._datafile.write
        run_start = run_end = 0
        chunks: list = []
        written = 0
        # (pgno, checksum) of each page a durable commit may list in its meta
        pairs = [] if self._sync and len(order) <= fmt.WRITTEN_MAX else None
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
        self._unsynced += written * ps
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
        ps = self._page_size
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
        ps = self._page_size
        at = start * ps
        if wmap is None or end - start > MAP_WRITE_PAGES:
            write(at, chunks)
            return
        for chunk in chunks:
            n = len(chunk)
            wmap[at : at + n] = chunk
            at += n

    def _encode(self, node, pgno: int, txnid: int) -> bytes:
        ps = self._page_size
        if node.kids is None:
            return fmt.encode_leaf(pgno, txnid, node.keys, node.vals, node.flags, ps)
        return fmt.encode_branch(pgno, txnid, node.keys, node.kids, node.ktxn, ps)

    def _write_meta(self, meta, txn, written) -> None:
        """Steps 6-8 of the commit: sync the pages (a steady commit), write the meta
        into the slot that does not hold the newest steady meta, sync it.

        A torn meta write fails its checksum and the other slot, untouched, is used.
        A durable commit that listed the pages it wrote (``written``, from
        ``_write_pages``) skips step 6: see ``_intact``.
        """
        mm = self._map.cover(fmt.NUM_METAS * self._page_size)
        target = txn._meta_target
        steady = (self._sync or self._unsynced >= max(AUTOSYNC_MIN, self._map.size // AUTOSYNC_SHARE)
                  or self._steady_to_give_back(txn))
        sync_meta = steady and (self._metasync or not self._sync)
        if steady:
            if (sync_meta and written is not None and len(written) // 2
                    <= fmt.written_room(meta.page_size, len(meta.inline_free) // 2)):
                # One flush, after the meta, makes both durable; the meta lists the
                # pages so a later boot can tell whether they all arrived.
                meta.flags |= fmt.META_STEADY | fmt.META_WRITTEN
                meta.written = written
            else:
                self._datafile.sync()  # 6. the pages are durable before a meta names them
                meta.flags |= fmt.META_STEADY
            self._unsynced = 0
        # 7. The commit point; 8. durable (and a steady meta safe before weak ones
        #    are written into the other slot).
        self._put_meta(mm, target, meta, sync_meta)
        self._wrote_meta(target, meta)
        try:
            self._shrink(self._file_size, meta)
        except DiskError:
            return  # giving space back is optional; the commit stands, size unknown
        self._size_after = (meta.txnid, self._file_size)

    def _shrink(self, size: int, meta) -> None:
        """Give free space at the file's end back, once it passes half the file.

        Only pages that were reusable were cut from ``next_pgno``: no snapshot a
        reader holds, nor the steady commit a power loss falls back to, reaches
        them, so the file may end before the older meta's ``next_pgno``.
        """
        ps = self._page_size
        end = meta.next_pgno * ps
        if size - end > max(SHRINK_MIN, size // 2):
            new = end + min(end // 8 // ps * ps, GROW_MAX)
            self._datafile.truncate(new)
            self._file_size = new

    def _strict_check(self) -> None:
        from .check import check_env

        problems = check_env(self)
        if problems:
            raise CorruptedError("strict mode: " + "; ".join(problems[:5]))

    # --- databases ------------------------------------------------------------------

    def open_db(self, key: bytes | None = None, txn: Transaction[Any] | None = None,
                reverse_key: bool = False, dupsort: bool = False, create: bool = True,
                integerkey: bool = False, integerdup: bool = False,
                dupfixed: bool = False) -> _Database:
        """A handle on the main database (``key=None``) or on named database ``key``,
        created when missing (in ``txn``, or in a transaction of its own), with the
        orders of :mod:`kvmm.orders`. As in py-lmdb, the flags are those the database
        was created with: for an existing one the arguments are ignored."""
        self._usable()
        if key is None:
            if reverse_key or dupsort or integerkey or integerdup or dupfixed:
                raise ValueError("May not set flags on the main database")
            return self._main_db
        if isinstance(key, str):
            raise TypeError("database names are bytes")
        key = bytes(key)
        db = self._dbs.get(key)
        if db is not None:
            return db
        flags = orders.db_flags(reverse_key, dupsort, integerkey, integerdup, dupfixed)
        if len(self._dbs) >= self._max_dbs:
            raise DbsFullError(f"max_dbs={self._max_dbs} named databases are already open: "
                               "open with a larger max_dbs=")
        db = _Database(self, key, flags)
        own = txn is None
        work: Any = self.begin(write=create and not self._readonly) if own else txn
        try:
            record = work._find_db_record(key)
            if record is None:
                if not create:
                    raise NotFoundError(f"named database {key!r} does not exist")
                if not work.write:
                    raise ReadonlyError(f"cannot create database {key!r} read-only")
                work._create_db(db)
            else:
                problem = orders.flags_problem(record[3])
                if problem is not None:
                    raise IncompatibleError(f"database {key!r}: {problem}")
                db._flags = record[3]
            if own:
                work.commit()
            else:
                # The handle is the transaction's until it ends (see _Database).
                db._txn = weakref.ref(work)
                work._opened.append(db)
        except BaseException:
            if own:
                work.abort()
            raise
        self._dbs[key] = db
        return db

    def _forget_db(self, db) -> None:
        db._dropped = True
        self._dbs.pop(db.name, None)

    # --- information ----------------------------------------------------------------

    def stat(self) -> dict[str, int]:
        """py-lmdb's statistics of the main database."""
        with self.begin() as txn:
            return txn.stat()

    def dbs(self, txn: Transaction[Any] | None = None) -> list[bytes]:
        """The names of the named databases, in key order (in ``txn``'s view, else
        in a read transaction of its own). O(entries of the main database)."""
        self._usable()
        own = txn is None
        work: Any = self.begin() if own else txn
        try:
            return work._db_names()
        finally:
            if own:
                work.abort()

    def info(self) -> dict[str, int]:
        """map_size (the cap when one is set, else the file's size), last_pgno,
        last_txnid, max_readers, num_readers."""
        self._usable()
        mm = self._map.cover(fmt.NUM_METAS * self._page_size)
        meta = self._current(mm)[0]
        readers = self._lock.readers() if self._lock is not None else []
        cap = self._cap()
        return {
            "map_addr": 0,
            "map_size": self._datafile.size() if cap is None else cap,
            "last_pgno": meta.next_pgno - 1,
            "last_txnid": meta.txnid,
            "max_readers": self.max_readers(),
            "num_readers": len(readers),
        }

    def path(self) -> str:
        """The path the environment was opened with."""
        self._usable()
        return self._path

    def max_key_size(self) -> int:
        """The longest key (and dupsort value) in bytes."""
        self._usable()
        return fmt.MAX_KEY_SIZE

    def max_readers(self) -> int:
        """The size of the reader table (0 with lock=False)."""
        self._usable()
        return self._lock.max_readers if self._lock is not None else 0

    def flags(self) -> dict[str, bool]:
        """The options the environment was opened with, by py-lmdb's names."""
        self._usable()
        return dict(self._flags)

    # --- the map size cap -------------------------------------------------------------

    def _cap(self) -> int | None:
        """The most bytes the file's pages may take: the smaller of map_size and
        max_size, or None when neither is set."""
        caps = [c for c in (self._map_size, self._max_size) if c is not None]
        return min(caps) if caps else None

    def _set_cap(self, map_size: int) -> None:
        """Make ``map_size`` the cap, but never below the pages in use (as LMDB)."""
        mm = self._map.cover(fmt.NUM_METAS * self._page_size)
        used = self._current(mm)[0].next_pgno * self._page_size
        self._map_size = max(map_size, used)

    def set_mapsize(self, map_size: int) -> None:
        """Move the cap (map_size) to ``map_size`` bytes, at least the pages in use;
        0 adopts the data file's current size (which other processes may have
        grown). As py-lmdb: refused (BadTxnError) while a write transaction of this
        environment is open, and this environment's read transactions end (their
        cursors with them)."""
        self._usable()
        _count("map_size", map_size)
        if self._writer_owner is not None:
            raise BadTxnError("cannot set_mapsize while a write transaction is open")
        for ref in list(self._txns.values()):
            txn = ref()
            if txn is not None and not txn.write:
                txn.abort()
        self._set_cap(map_size or self._datafile.size())

    # --- readers ------------------------------------------------------------------------

    def readers(self) -> str:
        """The reader table as py-lmdb prints it: a line per slot a process holds
        (its pid, a thread column kvmm does not track, and the txnid it reads, or
        "-" between transactions; a snapshot of txnid 0, the empty first commit,
        shows as "-" too: it pins no page), or "(no active readers)"."""
        self._usable()
        slots = self._lock.readers() if self._lock is not None else []
        if not slots:
            return "(no active readers)\n"
        lines = ["    pid     thread     txnid"]
        for _slot, pid, txnid, _alive in slots:
            lines.append(f"{pid:>10} {0:x} {txnid or '-'}")
        return "\n".join(lines) + "\n"

    def reader_check(self) -> int:
        """Clear reader slots of processes that died; return how many."""
        self._usable()
        return self._lock.reader_check() if self._lock is not None else 0

    # --- maintenance ----------------------------------------------------------------

    def sync(self, force: bool = False) -> None:
        """Make every commit so far durable, even those made with sync=False."""
        self._usable()
        if self._readonly:
            return
        self._datafile.sync()
        if self._writer_owner == threading.get_ident():
            return  # this thread's write transaction will write a newer meta anyway
        self._lock_writer()
        try:
            mm = self._map.cover(fmt.NUM_METAS * self._page_size)
            self._meta_key = None
            meta, _, _, target = self._current(mm)
            if not meta.steady:
                # The newest meta sits in the weak slot, `target`: rewrite it steady.
                steady_meta = fmt.Meta(meta.page_size, meta.txnid, meta.next_pgno,
                                       meta.flags | fmt.META_STEADY, meta.boot_id,
                                       meta.main, meta.free, meta.inline_free)
                self._put_meta(mm, target, steady_meta, True)
                self._unsynced = 0
                self._meta_key = None
        finally:
            self._unlock_writer()

    def copy(self, path: PathLike, compact: bool = False,
             txn: Transaction[Any] | None = None) -> None:
        """Write a consistent copy of the environment to ``path``: a directory, or for a
        ``subdir=False`` environment the data file, as py-lmdb's copy does; of the
        snapshot of ``txn`` (py-lmdb takes one with ``compact`` only) or of the last
        commit."""
        from .copy import copy_env

        self._copy_txn(compact, txn)
        copy_env(self, os.fsdecode(path), compact=compact, txn=txn)

    def copyfd(self, fd: int, compact: bool = False,
               txn: Transaction[Any] | None = None) -> None:
        """Write a consistent copy of the environment's data file to descriptor
        ``fd``; ``compact`` and ``txn`` as in copy()."""
        from .copy import copy_to_fd

        self._copy_txn(compact, txn)
        copy_to_fd(self, fd, compact=compact, txn=txn)

    def _copy_txn(self, compact: bool, txn) -> None:
        """Refuse what py-lmdb refuses: a copy of a given snapshot that is not
        compacted, or of another environment's."""
        self._usable()
        if txn is not None:
            if not compact:
                raise InvalidParameterError("copy(txn=...) needs compact=True, as in py-lmdb")
            if txn.env is not self:
                raise InvalidParameterError("the transaction belongs to another environment")

    def close(self) -> None:
        """Close the environment; its transactions and cursors become unusable."""
        if self._closed:
            return
        # As py-lmdb does: open transactions are aborted (a writer's lock released),
        # so using one afterwards raises Error, not an error of a closed file.
        if not self._forked:
            for ref in list(self._txns.values()):
                txn = ref()
                if txn is not None:
                    txn.abort()
        self._closed = True
        _open_envs.discard(self)
        self._map.close()
        self._pages.clear()
        if not self._forked:
            self._datafile.close()
            if self._lock is not None:
                self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - a finalizer must not raise
            pass


def open(path: PathLike, map_size: int | None = None, subdir: bool = True,
         readonly: bool = False, metasync: bool = True, sync: bool = True,
         map_async: bool = False, mode: int = 0o644, create: bool = True,
         readahead: bool = True, writemap: bool = False, meminit: bool = True,
         max_readers: int = 126, max_dbs: int = 0, max_spare_txns: int = 1,
         lock: bool = True, page_size: int = fmt.DEFAULT_PAGE_SIZE,
         max_size: int | None = None,
         cache_size: int = DEFAULT_CACHE_SIZE) -> Environment:
    """Open (by default create) the environment at ``path`` (py-lmdb's ``lmdb.open``,
    a name that shadows the builtin inside kvmm.env).

    ``path`` is a directory holding ``data.kvmm`` and ``lock.kvmm`` (with
    ``subdir=False``: the data file itself, its lock file ``path + "-lock"``).

    - ``map_size``: not passed, no cap (the file grows and shrinks by itself); passed,
      the cap on the file's size, as in LMDB (a commit past it raises MapFullError).
    - ``subdir``: ``path`` is a directory (True) or the data file (False).
    - ``readonly``: no write transactions; the files must exist.
    - ``metasync``, ``sync``: a commit syncs its meta page / its pages (``sync=False``:
      a power loss may roll back to the last synced commit, never to a torn state).
    - ``mode``: the directory's mode (x added where it has r); the files get it
      without x bits.
    - ``create``: create the directory when missing.
    - ``max_readers``: reader slots in the lock file (126).
    - ``max_dbs``: named databases ``open_db`` may open (0: only the main one).
    - ``max_spare_txns``: reader slots kept between read transactions (1).
    - ``lock``: False runs without a lock file (one process only; the caller
      serialises writers).
    - ``page_size``: 4096 to 65536, a power of two; for a new file only.
    - ``max_size``: a cap, as ``map_size``.
    - ``cache_size``: bytes of decoded pages kept per process (256 MiB).
    - ``map_async``, ``readahead``, ``writemap``, ``meminit``: py-lmdb's, accepted and
      reported by ``flags()``; they change nothing.

    See docs/reference.md of the project for durability and concurrency rules.
    """
    return Environment(path, map_size=map_size, subdir=subdir, readonly=readonly,
                       metasync=metasync, sync=sync, map_async=map_async, mode=mode,
                       create=create, readahead=readahead, writemap=writemap,
                       meminit=meminit, max_readers=max_readers, max_dbs=max_dbs,
                       max_spare_txns=max_spare_txns, lock=lock, page_size=page_size,
                       max_size=max_size, cache_size=cache_size)
