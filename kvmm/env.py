"""The environment: one data file, its lock file, and what its transactions share.

``kvmm.open(path)`` returns an :class:`Environment`, the object py-lmdb calls
``Environment``: it opens (or creates) the files, holds the metas (``kvmm.metas``) and
the database handles, begins transactions, and coordinates what ends them (close,
fork, set_mapsize). What every transaction of this process shares of the files — the
map of the data file, its pages, the reader slots and the writer lock, the writing of
a commit — is the environment's :class:`~kvmm.store.Store`.
"""

from __future__ import annotations

import builtins
import os
import threading
import weakref
from types import TracebackType
from typing import Any, Literal, Self, overload

from . import format as fmt
from . import orders
from .errors import (
    BadTxnError,
    CorruptedError,
    DbsFullError,
    Error,
    IncompatibleError,
    InvalidError,
    InvalidParameterError,
    NotFoundError,
    ReadonlyError,
)
from .lmdbfiles import refuse_lmdb
from .lock import LockFile
from .mapfile import DataFile
from .metas import Metas
from .store import Store, ThreadWriter
from .txn import Transaction

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]

DATA_NAME = "data.kvmm"
LOCK_NAME = "lock.kvmm"
LOCK_SUFFIX = "-lock"

DEFAULT_CACHE_SIZE = 256 << 20

_open_envs: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's environments: it holds none of the
    parent's locks. Mark them, and end their transactions, so use raises Error."""
    for env in list(_open_envs):
        env._store.forked = True
        for ref in list(env._store.txns.values()):
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
        self._store: Any = None  # made once the files are open; until then, closed
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
        # What flags() reports: every option as given, as py-lmdb's.
        self._flags = {"subdir": bool(subdir), "readonly": bool(readonly),
                       "metasync": bool(metasync), "sync": bool(sync),
                       "map_async": bool(map_async), "readahead": bool(readahead),
                       "writemap": bool(writemap), "meminit": bool(meminit),
                       "lock": bool(lock)}
        self._max_dbs = max_dbs
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
        # The writer lock: the lock file's, or with lock=False this process's.
        self._writer: Any = ThreadWriter()
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
                self._lock = self._writer = LockFile(lock_path, max_readers, file_mode,
                                                     True, spare=max_spare_txns)
            self._page_size = self._open_file(page_size)
        except BaseException:
            self._datafile.close()
            if self._lock is not None:
                self._lock.close()
            raise
        self._metas = Metas(self._datafile, self._page_size, self._boot_id, data_path)
        self._store = Store(self._datafile, self._lock, self._writer, self._metas,
                            self._page_size, cache_size, readonly=readonly, sync=sync,
                            metasync=metasync, boot_id=self._boot_id, path=data_path,
                            max_size=max_size)
        self._main_db = _Database(self, None, 0)
        self._dbs: dict[bytes, _Database] = {}
        _open_envs.add(self)
        if not readonly:
            self._metas.mend(self._store.map, self._writer)
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
            self._writer.lock_writer()
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
                self._writer.unlock_writer()
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

    # --- transactions ---------------------------------------------------------------

    def _usable(self) -> None:
        """Error when the environment is closed, or was opened before fork()."""
        if self._store is None:
            raise Error("environment is closed")
        self._store.usable()

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
        mm = self._store.map.cover(fmt.NUM_METAS * self._page_size)
        meta = self._metas.current(mm)[0]
        readers = self._lock.readers() if self._lock is not None else []
        cap = self._store.cap()
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

    def _set_cap(self, map_size: int) -> None:
        """Make ``map_size`` the cap, but never below the pages in use (as LMDB)."""
        mm = self._store.map.cover(fmt.NUM_METAS * self._page_size)
        used = self._metas.current(mm)[0].next_pgno * self._page_size
        self._store.map_size = max(map_size, used)

    def set_mapsize(self, map_size: int) -> None:
        """Move the cap (map_size) to ``map_size`` bytes, at least the pages in use;
        0 adopts the data file's current size (which other processes may have
        grown). As py-lmdb: refused (BadTxnError) while a write transaction of this
        environment is open in this thread, and this environment's read transactions
        end (their cursors with them). Another thread's write transaction is waited
        for, as a second writer waits, and none begins while the cap moves: a thread
        that commits in a loop leaves no gap between its transactions otherwise."""
        self._usable()
        _count("map_size", map_size)
        store = self._store
        if store.writer_owner == threading.get_ident():
            raise BadTxnError("cannot set_mapsize while a write transaction is open")
        if not self._readonly:  # a read-only environment has no writers
            store.begin_write()
        try:
            for ref in list(store.txns.values()):
                txn = ref()
                if txn is not None and not txn.write:
                    txn.abort()
            self._set_cap(map_size or self._datafile.size())
        finally:
            if not self._readonly:
                store.end_write()

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
        store = self._store
        if store.writer_owner == threading.get_ident():
            return  # this thread's write transaction will write a newer meta anyway
        self._writer.lock_writer()
        try:
            mm = store.map.cover(fmt.NUM_METAS * self._page_size)
            metas = self._metas
            metas.forget()
            meta, _, _, target = metas.current(mm)
            if not meta.steady:
                # The newest meta sits in the weak slot, `target`: rewrite it steady.
                steady_meta = fmt.Meta(meta.page_size, meta.txnid, meta.next_pgno,
                                       meta.flags | fmt.META_STEADY, meta.boot_id,
                                       meta.main, meta.free, meta.inline_free)
                metas.put(mm, target, steady_meta, True)
                store.unsynced = store.pinned = 0
                metas.forget()
        finally:
            self._writer.unlock_writer()

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
        store = self._store
        if store is None or store.closed:
            return
        # As py-lmdb does: open transactions are aborted (a writer's lock released),
        # so using one afterwards raises Error, not an error of a closed file.
        if not store.forked:
            for ref in list(store.txns.values()):
                txn = ref()
                if txn is not None:
                    txn.abort()
        _open_envs.discard(self)
        store.close()

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
