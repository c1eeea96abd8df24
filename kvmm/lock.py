"""The lock file (``lock.kvmm``): the writer lock, the reader table, dead-reader reclaim.

The file holds a header and ``max_readers`` reader slots (layout in :mod:`kvmm.format`).
A read transaction publishes the txnid of its snapshot in a slot; the writer asks
:meth:`LockFile.oldest_reader` which snapshots are still read, so it never reuses a page
one of them may reach. Byte-range locks (``fcntl``, POSIX record locks) mark who holds
what; they need no bytes in the file, and the kernel drops them when their process dies,
which is how a dead reader is told from a live one:

- byte ``WRITER_LOCK_BYTE``: held while the process has a write transaction open.
  Threads of one process exclude each other with a ``threading.Lock`` taken first,
  because POSIX locks belong to the process, not the thread.
- byte ``TABLE_LOCK_BYTE``: held for the few microseconds a process claims or frees
  slots, or reclaims dead ones (blocking ``F_SETLKW``; nothing waits while holding it).
- byte ``SLOT_LOCK_BASE + i``: held by slot ``i``'s owner for as long as it owns it. A
  slot whose pid is set but whose byte nobody holds (``F_GETLK``) belongs to a dead
  process and is reclaimed: zeroed, and free for the next claim.

A process claims a slot once and keeps it: a read transaction that ends sets the txnid
to 0 and puts the slot in the process's pool, and the next one takes it from there with
no syscall. The pool keeps as many slots as the handle that releases one allows
(``spare``, py-lmdb's ``max_spare_txns``); a slot past that goes back to the table at
once. All slots go back when the process's last handle closes (or it dies).

Handles are closed by finalizers too (an environment dropped without ``close()``), and
the cyclic GC runs finalizers inside whatever the thread was doing, possibly while it
holds ``_registry_lock`` or a table lock. So closing a handle never waits for either:
the part of a close that needs ``_registry_lock`` is left in ``_deferred`` when the lock
is taken, and whoever releases the lock next finishes it (``_release_registry``); a
slot that cannot be given back at once stays in the pool.

POSIX locks are per process, and closing ANY descriptor of the file drops ALL of the
process's locks on it. So each process keeps one shared state per lock file (keyed by
``(st_dev, st_ino)``): one descriptor, one map, the threading locks, the pool, and a
count of the :class:`LockFile` handles on it. Two environments on the same path in one
process share it, and closing one never drops the other's locks. Nothing else in kvmm may
open the lock file; ``mmap`` keeps a duplicate of the descriptor, so the map is closed
only with the state. POSIX locks rather than Linux's OFD locks: they exist on every Unix,
a forked child does not inherit them (so it cannot release the parent's), and they die
with their process, where an OFD lock lives on in any forked child that kept the
descriptor and would make a dead reader look alive.

After ``fork()`` the child's copy of every state is dead: its descriptors are closed and
its maps unmapped at once (the child holds no locks yet, so this drops nothing), the
state leaves the registry, and any use of a handle opened before the fork raises
:class:`kvmm.errors.Error`. ``LockFile(path)`` in the child opens a fresh state.

For the caller (the transaction code): publish a snapshot with :meth:`LockFile.set_slot`,
then re-read the meta and retry if a newer commit appeared; a writer that scanned the
table just before the publish cannot have seen it.

Invariants:
- A slot's pid changes only under the table lock (threading lock, then TABLE_LOCK_BYTE).
  A claim takes the slot's byte before writing the pid; a free zeroes the slot before
  dropping the byte. So a pid with no lock on its byte, seen under the table lock, is a
  dead owner's, and zeroing it cannot hurt a live reader.
- While this process owns slot ``i`` (``i in state.owned``) it holds byte
  ``SLOT_LOCK_BASE + i`` and the slot's pid is this process's pid.
- Only a slot's owner writes its txnid. The pool holds owned slots with txnid 0, each
  once, none of them in use by a handle.
- One state per lock file per process; its descriptor is closed only when its last
  handle closes, and then every owned slot is zeroed first.
- The writer lock is the threading lock plus WRITER_LOCK_BYTE, taken in that order and
  released in the reverse one.
- The txnid is stored and loaded as one aligned native 8-byte word (``READER_SLOT`` is
  native), so no process ever reads a torn txnid.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import sys
import threading
import time
from contextlib import contextmanager
from struct import Struct

from .errors import (
    BadRslotError,
    BadTxnError,
    Error,
    InvalidError,
    InvalidParameterError,
    LockError,
    ReadersFullError,
    VersionMismatchError,
)
from .format import (
    LOCK_HEADER,
    LOCK_HEADER_SIZE,
    LOCK_MAGIC,
    LOCK_VERSION,
    READER_SLOT,
    READER_SLOT_TXNID,
    SLOT_LOCK_BASE,
    TABLE_LOCK_BYTE,
    WRITER_LOCK_BYTE,
    lock_file_size,
    slot_offset,
)

__all__ = ["LockFile"]

# How long oldest_reader trusts an "alive" verdict on another process's slot. A busy
# writer then pays one F_GETLK per foreign reader per second, not per commit; a reader
# that died is taken for alive at most this long, which only delays page reuse.
ALIVE_CACHE_SECONDS = 1.0

# Linux reports EDEADLK for F_SETLKW when it sees a cycle between processes, and it
# counts a process as waiting when any one of its threads waits, so threads make it see
# cycles that are not there. The wait is retried after this pause.
DEADLOCK_RETRY_SECONDS = 0.001

# struct flock, for F_GETLK (the OS's struct, not the lock file's layout).
if sys.platform.startswith("linux"):
    _FLOCK = Struct("@hhqqi")  # l_type, l_whence, l_start, l_len, l_pid
    _FLOCK_TYPE = 0

    def _flock_arg(start: int) -> bytes:
        return _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0) + bytes(32)
else:  # the BSDs and macOS
    _FLOCK = Struct("@qqihh")  # l_start, l_len, l_pid, l_type, l_whence
    _FLOCK_TYPE = 3

    def _flock_arg(start: int) -> bytes:
        return _FLOCK.pack(start, 1, 0, fcntl.F_WRLCK, os.SEEK_SET) + bytes(32)


_pack_slot = READER_SLOT.pack_into
_unpack_slot = READER_SLOT.unpack_from
_EMPTY_SLOT = (0, 0, 0)


# --- byte locks ---------------------------------------------------------------------


def _lock(fd: int, byte: int) -> None:
    """Block until this process holds a write lock on ``byte``."""
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, byte)
            return
        except OSError as e:
            if e.errno != errno.EDEADLK:
                raise LockError(f"cannot lock byte {byte} of the lock file: {e}") from e
        time.sleep(DEADLOCK_RETRY_SECONDS)


def _try_lock(fd: int, byte: int) -> bool:
    """Lock ``byte`` if no other process holds it; never waits."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
        return True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise LockError(f"cannot lock byte {byte} of the lock file: {e}") from e


def _unlock(fd: int, byte: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)


def _held(fd: int, byte: int) -> bool:
    """Whether another process holds a lock on ``byte`` (one F_GETLK; this process's own
    locks are never reported)."""
    res = fcntl.fcntl(fd, fcntl.F_GETLK, _flock_arg(byte))
    return _FLOCK.unpack_from(res)[_FLOCK_TYPE] != fcntl.F_UNLCK


# --- the per-process state ----------------------------------------------------------


class _Shared:
    """This process's one view of one lock file, shared by its LockFile handles."""

    __slots__ = (
        "alive",
        "fd",
        "forked",
        "free",
        "key",
        "max_readers",
        "mm",
        "offsets",
        "owned",
        "path",
        "pid",
        "refs",
        "spare_fds",
        "table",
        "table_lock",
        "txnid_table",
        "writer_lock",
        "writer_thread",
    )

    def __init__(self, path: str, key: tuple, fd: int, mm: mmap.mmap, max_readers: int):
        self.path = path
        self.key = key
        self.fd = fd
        self.mm = mm
        self.pid = os.getpid()
        self.max_readers = max_readers
        self.offsets = tuple(slot_offset(i) for i in range(max_readers))
        # The whole slot table in one unpack: pid, pad, txnid for each slot in turn.
        self.table = Struct(READER_SLOT.format[0] + READER_SLOT.format[1:] * max_readers)
        assert self.table.size == lock_file_size(max_readers) - slot_offset(0)
        # ... and its txnids alone (a third of the values: the check a writer makes at
        # every begin, when usually no reader is in a transaction).
        self.txnid_table = Struct(READER_SLOT_TXNID.format[0]
                                  + READER_SLOT_TXNID.format[1:] * max_readers)
        self.writer_lock = threading.Lock()
        self.writer_thread: int | None = None  # the thread holding writer_lock
        self.table_lock = threading.Lock()
        self.owned: set[int] = set()
        self.free: list[int] = []
        self.refs = 1
        self.forked = False
        self.alive: dict[int, tuple[int, float]] = {}  # slot -> (pid, when seen alive)
        self.spare_fds: list[int] = []

    @contextmanager
    def locked_table(self):
        """Hold the table lock: the threading lock, then TABLE_LOCK_BYTE."""
        with self.table_lock:
            _lock(self.fd, TABLE_LOCK_BYTE)
            try:
                yield
            finally:
                _unlock(self.fd, TABLE_LOCK_BYTE)

    def slots(self) -> tuple:
        """(pid, pad, txnid) of every slot, flattened; one unpack, no syscall."""
        return self.table.unpack_from(self.mm, slot_offset(0))

    def txnids(self) -> tuple:
        """The txnid of every slot (0: none published); one unpack, no syscall."""
        return self.txnid_table.unpack_from(self.mm, slot_offset(0))

    def dead(self, slot: int, pid: int) -> bool:
        """Whether ``slot`` holds ``pid`` of a process that no longer owns it."""
        return pid != 0 and slot not in self.owned and not _held(self.fd, SLOT_LOCK_BASE + slot)

    def reclaim(self, found: list[tuple[int, int]]) -> int:
        """Zero the slots in ``found`` (slot, pid) that are still dead under the table
        lock; return how many. One F_GETLK per slot."""
        n = 0
        mm, offsets = self.mm, self.offsets
        with self.locked_table():
            for slot, pid in found:
                if _unpack_slot(mm, offsets[slot])[0] == pid and self.dead(slot, pid):
                    _pack_slot(mm, offsets[slot], *_EMPTY_SLOT)
                    self.alive.pop(slot, None)
                    n += 1
        return n

    def claim(self) -> int:
        """A slot from the pool if another thread just released one, else a slot taken
        from the table for this process: O(max_readers) under the table lock, an
        F_GETLK per other process's slot only when no slot is free."""
        mm, offsets, fd, owned = self.mm, self.offsets, self.fd, self.owned
        with self.table_lock:
            try:
                return self.free.pop()
            except IndexError:
                pass
        with self.locked_table():
            pids = self.slots()[::3]
            for slot, pid in enumerate(pids):
                if pid == 0 and _try_lock(fd, SLOT_LOCK_BASE + slot):
                    break
            else:
                for slot, pid in enumerate(pids):
                    if self.dead(slot, pid) and _try_lock(fd, SLOT_LOCK_BASE + slot):
                        self.alive.pop(slot, None)
                        break
                else:
                    raise ReadersFullError(
                        f"all {self.max_readers} reader slots of {self.path} are in use"
                    )
            _pack_slot(mm, offsets[slot], self.pid, 0, 0)
            owned.add(slot)
        return slot

    def give_back(self, slot: int) -> bool:
        """Return owned ``slot`` to the table: zeroed, then its byte unlocked. False
        (nothing done) when another holder of the table lock would make this wait: a
        finalizer may run in a thread that holds it."""
        if not self.table_lock.acquire(blocking=False):
            return False
        try:
            _lock(self.fd, TABLE_LOCK_BYTE)
            try:
                _pack_slot(self.mm, self.offsets[slot], *_EMPTY_SLOT)
                _unlock(self.fd, SLOT_LOCK_BASE + slot)
                self.owned.discard(slot)
            finally:
                _unlock(self.fd, TABLE_LOCK_BYTE)
        finally:
            self.table_lock.release()
        return True

    def close(self) -> None:
        """Zero and unlock every owned slot, then close the map and the descriptor."""
        mm, offsets, fd = self.mm, self.offsets, self.fd
        with self.locked_table():
            for slot in self.owned:
                _pack_slot(mm, offsets[slot], *_EMPTY_SLOT)
                _unlock(fd, SLOT_LOCK_BASE + slot)
        self.owned.clear()
        self.free.clear()
        self.forget()

    def forget(self) -> None:
        """Close the map and every descriptor, without touching any lock or slot."""
        try:
            self.mm.close()
        except BufferError:
            pass  # a view of the map is still alive; it goes when that view does
        for fd in (self.fd, *self.spare_fds):
            try:
                os.close(fd)
            except OSError:
                pass


_registry: dict[tuple, _Shared] = {}
_registry_lock = threading.Lock()
# States whose handle closed while _registry_lock was taken: each owes one release of a
# reference, made by whoever releases the lock next (see the module docstring).
_deferred: list[_Shared] = []


def _unref(sh: _Shared) -> None:
    """Drop one handle's reference to ``sh``; the last one closes it. The caller holds
    _registry_lock."""
    sh.refs -= 1
    if sh.refs == 0:
        del _registry[sh.key]
        sh.close()


def _release_registry() -> None:
    """Release _registry_lock, then make the releases that closes left in _deferred
    while it was held. A close that defers tries the lock again after it appended, so
    either it makes its release itself or the holder it found sees its entry here."""
    _registry_lock.release()
    while _deferred:
        if not _registry_lock.acquire(blocking=False):
            return  # its holder makes them when it releases it
        try:
            while _deferred:
                _unref(_deferred.pop())
        finally:
            _registry_lock.release()


def _after_fork_in_child() -> None:
    """Disown every state inherited from the parent (see the module docstring)."""
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent's may have been held by another thread
    _deferred.clear()
    for sh in _registry.values():
        sh.forked = True
        sh.free.clear()
        sh.forget()
    _registry.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_shared(path: str, max_readers: int, mode: int, create: bool) -> _Shared:
    """The state of the lock file at ``path``: this process's, or a new one."""
    _registry_lock.acquire()
    try:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            sh = _registry.get((st.st_dev, st.st_ino))
            if sh is not None:
                sh.refs += 1
                return sh
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), mode)
        except FileNotFoundError:
            raise InvalidError(f"lock file {path} does not exist") from None
        except OSError as e:
            raise LockError(f"cannot open lock file {path}: {e.strerror or e}") from e
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        sh = _registry.get(key)
        if sh is not None:
            # The file was renamed into place between stat and open. Closing this fd
            # would drop the state's locks, so the state keeps it until it closes.
            sh.spare_fds.append(fd)
            sh.refs += 1
            return sh
        try:
            mm, max_readers = _map(fd, path, max_readers)
        except BaseException:
            os.close(fd)  # this process holds no other lock on the file: nothing is lost
            raise
        sh = _registry[key] = _Shared(path, key, fd, mm, max_readers)
        return sh
    finally:
        _release_registry()


def _map(fd: int, path: str, max_readers: int) -> tuple[mmap.mmap, int]:
    """Check the header, or write it if the file is new; map the table. Returns the map
    and the table size stored in the file. Under TABLE_LOCK_BYTE, so that one process
    initialises a new file and the others wait for it."""
    _lock(fd, TABLE_LOCK_BYTE)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, LOCK_HEADER.size, 0)
        if size == 0 or (len(head) == LOCK_HEADER.size and not any(head)):
            # New, or its creator died before writing the header: nobody uses it.
            header = LOCK_HEADER.pack(LOCK_MAGIC, LOCK_VERSION, max_readers)
            body = header.ljust(LOCK_HEADER_SIZE, b"\0") + bytes(
                lock_file_size(max_readers) - LOCK_HEADER_SIZE
            )
            if os.pwrite(fd, body, 0) != len(body):
                raise LockError(f"cannot initialise lock file {path}: short write")
            size = max(size, len(body))
            head = header
        if len(head) < LOCK_HEADER.size:
            raise LockError(f"{path} is not a kvmm lock file (too short)")
        magic, version, stored = LOCK_HEADER.unpack(head)
        if magic != LOCK_MAGIC:
            raise LockError(f"{path} is not a kvmm lock file (bad magic)")
        if version != LOCK_VERSION:
            raise VersionMismatchError(
                f"kvmm lock file {path} of format version {version}; "
                f"this kvmm uses version {LOCK_VERSION}"
            )
        if stored < 1 or size < lock_file_size(stored):
            raise LockError(f"kvmm lock file {path} is truncated or damaged")
        return mmap.mmap(fd, lock_file_size(stored)), stored
    finally:
        _unlock(fd, TABLE_LOCK_BYTE)


# --- handles ------------------------------------------------------------------------


class LockFile:
    """A handle on an environment's lock file; cheap, and any number per process.

    Handles on one file in one process share one state (see the module docstring).
    ``max_readers`` is the table size stored in the file: its creator chose it.
    ``spare``: how many unused slots the process's pool may keep when this handle
    releases one (None: no bound).
    """

    __slots__ = (
        "_closed",
        "_free",
        "_mm",
        "_offsets",
        "_pid",
        "_shared",
        "_slots",
        "_spare",
        "_writer",
        "max_readers",
        "path",
    )

    def __init__(self, path: str, max_readers: int = 126, mode: int = 0o644, create: bool = True,
                 spare: int | None = None):
        if not isinstance(max_readers, int) or max_readers < 1:
            raise InvalidParameterError(f"max_readers must be at least 1, not {max_readers!r}")
        sh = _open_shared(path, max_readers, mode, create)
        self.path = path
        self.max_readers = sh.max_readers
        self._spare = (1 << 62) if spare is None else spare
        self._shared = sh
        # Copies for the hot paths, which then read one attribute each.
        self._mm = sh.mm
        self._offsets = sh.offsets
        self._pid = sh.pid
        self._free = sh.free
        self._slots: set[int] = set()  # slots in use through this handle
        self._writer = False  # this handle holds the writer lock
        self._closed = False

    def __repr__(self) -> str:
        return f"LockFile({self.path!r}, max_readers={self.max_readers})"

    # --- writer ---

    def lock_writer(self) -> None:
        """Block until this handle holds the writer lock. Not reentrant: BadTxnError
        when this thread holds it already (through any handle), which would wait for
        itself forever. Uncontended: one fcntl."""
        sh = self._usable()
        me = threading.get_ident()
        if sh.writer_thread == me:
            raise BadTxnError(f"this thread already holds the writer lock of {self.path} "
                              "(a write transaction is open); waiting would deadlock")
        sh.writer_lock.acquire()
        try:
            _lock(sh.fd, WRITER_LOCK_BYTE)
        except BaseException:
            sh.writer_lock.release()
            raise
        sh.writer_thread = me
        self._writer = True

    def unlock_writer(self) -> None:
        """Release the writer lock this handle holds. One fcntl."""
        sh = self._usable()
        if not self._writer:
            raise LockError(f"the writer lock of {self.path} is not held by this handle")
        self._writer = False
        sh.writer_thread = None
        _unlock(sh.fd, WRITER_LOCK_BYTE)
        sh.writer_lock.release()

    # --- reader slots ---

    def acquire_slot(self) -> int:
        """A slot for a read transaction, with txnid 0. O(1) and no syscall from this
        process's pool; else a claim: O(max_readers) under the table lock, F_GETLKs
        only when the table looks full. ReadersFullError when no slot is free."""
        try:
            slot = self._free.pop()
        except IndexError:
            slot = self._claim()
        self._slots.add(slot)
        return slot

    def _claim(self) -> int:
        return self._usable().claim()

    def set_slot(self, slot: int, txnid: int) -> None:
        """Publish ``txnid`` as the snapshot ``slot`` reads (0: none). O(1), no syscall:
        one pack_into. ``slot`` must come from this handle's acquire_slot."""
        try:
            _pack_slot(self._mm, self._offsets[slot], self._pid, 0, txnid)
        except (TypeError, ValueError, IndexError) as e:
            self._fail(slot, e)

    def release_slot(self, slot: int) -> None:
        """End the use of ``slot``: txnid 0, back to this process's pool (still owned),
        O(1) and no syscall; or, when the pool holds ``spare`` slots already, back to
        the table (three fcntls under the table lock)."""
        slots = self._slots
        if slot not in slots:
            self._fail(slot, BadRslotError(f"reader slot {slot} is not in use by this handle"))
        try:
            _pack_slot(self._mm, self._offsets[slot], self._pid, 0, 0)
        except TypeError as e:  # another thread closed the handle meanwhile
            self._fail(slot, e)
        slots.discard(slot)
        free = self._free
        if len(free) < self._spare or not self._shared.give_back(slot):
            free.append(slot)

    def _fail(self, slot, exc: Exception):
        """Raise the error that explains why ``slot`` could not be used."""
        self._usable()
        if not isinstance(slot, int) or not 0 <= slot < self.max_readers:
            raise BadRslotError(f"no reader slot {slot!r} in {self.path}") from exc
        raise exc

    def oldest_reader(self) -> int | None:
        """The smallest txnid a live reader has published, or None. One unpack of the
        table; then, in txnid order until a live one, an F_GETLK per other process's
        slot not seen alive in the last ALIVE_CACHE_SECONDS. Dead slots met on the way
        are reclaimed."""
        sh = self._usable()
        if not any(sh.txnids()):  # the common case of a lone writer, without a loop
            return None
        t = sh.slots()
        txnids = t[2::3]
        published = [(txnid, slot) for slot, txnid in enumerate(txnids) if txnid]
        published.sort()
        owned, alive, fd = sh.owned, sh.alive, sh.fd
        now, ttl = time.monotonic(), ALIVE_CACHE_SECONDS
        dead = []
        oldest = None
        for txnid, slot in published:
            pid = t[3 * slot]
            if slot not in owned:
                seen = alive.get(slot)
                if seen is None or seen[0] != pid or now - seen[1] >= ttl:
                    if not _held(fd, SLOT_LOCK_BASE + slot):
                        dead.append((slot, pid))
                        continue
                    alive[slot] = (pid, now)
            oldest = txnid
            break
        if dead:
            sh.reclaim(dead)
        return oldest

    def readers(self) -> list[tuple[int, int, int, bool]]:
        """(slot, pid, txnid, alive) for every slot with an owner, dead or alive.
        O(max_readers); an F_GETLK per other process's slot. Reclaims nothing."""
        sh = self._usable()
        t = sh.slots()
        owned, fd = sh.owned, sh.fd
        out = []
        for slot in range(sh.max_readers):
            pid = t[3 * slot]
            if pid:
                live = slot in owned or _held(fd, SLOT_LOCK_BASE + slot)
                out.append((slot, pid, t[3 * slot + 2], live))
        return out

    def reader_check(self) -> int:
        """Zero the slots of processes that died; return how many. O(max_readers) under
        the table lock; an F_GETLK per other process's slot."""
        sh = self._usable()
        pids = sh.slots()[::3]
        return sh.reclaim([(slot, pid) for slot, pid in enumerate(pids) if pid])

    # --- life ---

    def close(self) -> None:
        """Release this handle: its writer lock, its slots; the last handle of the
        process also frees the process's slots and closes the file. Idempotent.

        Safe in a finalizer: it waits for no lock (see the module docstring). Its
        writer lock and slots are released at once; the release of its reference
        to the state waits in ``_deferred`` while another close or open holds
        ``_registry_lock``, and the last reference closes the file then."""
        if self._closed:
            return
        self._closed = True
        sh = self._shared
        slots, self._slots = self._slots, set()
        self._free = []  # acquire_slot now finds no pool, and _claim reports the close
        self._mm = None  # type: ignore[assignment]  # closed: never used again
        if sh.forked:
            return  # the parent's: nothing of it is this process's to release
        # The handle holds a reference: the state, its descriptor and map stay open.
        if self._writer:
            self._writer = False
            sh.writer_thread = None
            _unlock(sh.fd, WRITER_LOCK_BYTE)
            sh.writer_lock.release()
        for slot in slots:
            _pack_slot(sh.mm, sh.offsets[slot], sh.pid, 0, 0)
            sh.free.append(slot)
        if _registry_lock.acquire(blocking=False):
            try:
                _unref(sh)
            finally:
                _release_registry()
            return
        _deferred.append(sh)
        if _registry_lock.acquire(blocking=False):  # its holder let go meanwhile
            _release_registry()

    def _usable(self) -> _Shared:
        """The state, or kvmm.errors.Error if this handle is closed or was inherited."""
        sh = self._shared
        if self._closed:
            raise Error(f"lock file {self.path} is closed")
        if sh.forked:
            raise Error(
                f"lock file {self.path} was opened by process {sh.pid} before fork(); "
                "open the environment afresh in this process"
            )
        return sh

    def _check(self) -> None:
        """Assert every invariant this process can see (for tests)."""
        sh = self._usable()
        magic, version, stored = LOCK_HEADER.unpack_from(sh.mm, 0)
        assert (magic, version, stored) == (LOCK_MAGIC, LOCK_VERSION, sh.max_readers)
        t = sh.slots()
        for slot in sh.owned:
            assert t[3 * slot] == sh.pid, f"owned slot {slot} has pid {t[3 * slot]}"
        assert len(set(sh.free)) == len(sh.free), f"a slot twice in the pool: {sh.free}"
        for slot in sh.free:
            assert slot in sh.owned, f"pooled slot {slot} is not owned"
            assert t[3 * slot + 2] == 0, f"pooled slot {slot} publishes a txnid"
            assert slot not in self._slots, f"slot {slot} is both pooled and in use"
        assert self._slots <= sh.owned, f"in use but not owned: {self._slots - sh.owned}"
        assert sh.refs >= 1
