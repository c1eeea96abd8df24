"""A data file that can lose power: the model of what a disk keeps, after SQLite's
crash VFS (``src/test6.c``).

:class:`SimFile` is a :class:`kvmm.mapfile.DataFile` that really writes through to the
file, so the map sees every write as it would see the page cache, and beside it keeps a
:class:`Disk`: the bytes that are *durable* (survive a power loss) and the writes and
truncates made since the last sync. ``sync()`` makes them durable. At any instant,
``Disk.crash(rng)`` returns the bytes the file could hold after a power loss right
then: the durable image plus a random subset of the unsynced writes, in a random order,
each page of each write kept whole, dropped, or torn (only some of its 512-byte sectors
written); of the unsynced truncates, a random prefix has happened.

A test picks its crash points in two ways:

- ``Disk.fail_at = n``: the n-th write, sync or truncate raises :class:`PowerLoss`
  instead of happening, so the code under test stops dead between two I/Os;
- ``Disk.before_io``: a callback run before every write, sync and truncate, which may
  take crash images there and let the run go on (the disk state it sees is the one
  ``fail_at`` would leave, so one run yields a crash point per I/O).

The model's assumptions, each the weakest a real disk and file system give:

- a sector (512 bytes, aligned) is written whole or not at all;
- nothing written since the last sync is durable, and the page cache writes pages back
  in any order;
- a write past the end of the file extends it (the unwritten sectors read as zeros);
- a sync makes every earlier write and truncate durable, the file's size included.
"""

from __future__ import annotations

import functools

from kvmm.mapfile import DataFile

SECTOR = 512
OS_PAGE = 4096  # the unit the page cache writes back


class PowerLoss(BaseException):
    """The power went out at this I/O (a BaseException, so nothing swallows it)."""


class Disk:
    """What one data file holds durably, and what it was told since the last sync.

    ``pending`` holds ``("write", offset, bytes)`` and ``("truncate", size)`` in the
    order they were made. Counters for the tests: ``ios`` (writes, syncs and truncates
    so far), ``meta_writes`` (writes that touched the first ``meta_bytes`` of the file,
    where the metas live), ``synced_meta_writes`` (how many of those a completed sync
    has made durable) and ``last_meta`` (the bytes of the last of them).
    """

    def __init__(self, durable: bytes = b"", pending=(), meta_bytes: int = 2 * 4096):
        self.durable = bytearray(durable)
        self.pending: list[tuple] = list(pending)
        self.meta_bytes = meta_bytes
        self.ios = 0
        self.fail_at: int | None = None
        self.before_io = None
        self.meta_writes = 0
        self.synced_meta_writes = 0
        self.last_meta = b""  # the bytes of the last write to the metas

    @classmethod
    def of_file(cls, path: str, **kwargs) -> Disk:
        """A disk whose durable image is the file's current bytes (empty when missing)."""
        try:
            with open(path, "rb") as f:
                return cls(f.read(), **kwargs)
        except FileNotFoundError:
            return cls(**kwargs)

    def datafile_class(self):
        """What to pass as ``kvmm.Environment(..., datafile_class=...)``."""
        return functools.partial(SimFile, disk=self)

    def clone(self) -> Disk:
        """An independent copy of the durable image and the unsynced operations."""
        twin = Disk(bytes(self.durable), self.pending, self.meta_bytes)
        twin.meta_writes = self.meta_writes
        twin.synced_meta_writes = self.synced_meta_writes
        twin.last_meta = self.last_meta
        return twin

    # --- called by SimFile ----------------------------------------------------------

    def io(self, kind: str) -> None:
        """Count one I/O; run ``before_io``; lose power if this is the chosen one."""
        self.ios += 1
        if self.before_io is not None:
            self.before_io(self, kind)
        if self.fail_at is not None and self.ios >= self.fail_at:
            raise PowerLoss(f"power lost at I/O {self.ios} ({kind})")

    def wrote(self, offset: int, data: bytes) -> None:
        self.pending.append(("write", offset, data))
        if offset < self.meta_bytes:
            self.meta_writes += 1
            self.last_meta = data

    def truncated(self, size: int) -> None:
        self.pending.append(("truncate", size))

    def synced(self) -> None:
        """Everything so far is durable: replay it, in order, onto the durable image."""
        image = self.durable
        for op in self.pending:
            if op[0] == "truncate":
                _resize(image, op[1])
            else:
                _put(image, op[1], op[2])
        self.pending = []
        self.synced_meta_writes = self.meta_writes

    # --- power loss -----------------------------------------------------------------

    def crash(self, rng, stats: dict | None = None) -> bytes:
        """The file's bytes after a power loss now: one random outcome of the unsynced
        operations. ``stats`` (if given) counts the pages kept, torn and dropped."""
        pending = self.pending
        truncs = [i for i, op in enumerate(pending) if op[0] == "truncate"]
        happened = rng.randint(0, len(truncs))  # a prefix of the truncates happened
        cut = truncs[happened - 1] if happened else -1
        image = bytearray(self.durable)
        if happened:
            _resize(image, pending[cut][1])
        size = len(image)
        # Split every unsynced write into page-cache pages; each meets its own fate.
        # Writes made before the last truncate that happened lose what lies past it.
        pieces = []
        for i, op in enumerate(pending):
            if op[0] != "write":
                continue
            offset, data = op[1], op[2]
            end = offset + len(data)
            if i < cut:
                end = min(end, size)
            pos = offset
            while pos < end:
                stop = min((pos // OS_PAGE + 1) * OS_PAGE, end)
                pieces.append((pos, data[pos - offset : stop - offset]))
                pos = stop
        rng.shuffle(pieces)
        keep = rng.random()  # how much reached the disk: from nearly nothing to all
        tear = rng.random() * (1 - keep)
        for pos, chunk in pieces:
            r = rng.random()
            if r < keep:
                _put(image, pos, chunk)
                fate = "kept"
            elif r < keep + tear:
                _tear(image, pos, chunk, rng)
                fate = "torn"
            else:
                fate = "dropped"
            if stats is not None:
                stats[fate] = stats.get(fate, 0) + 1
        return bytes(image)

    def outcome(self, keep, truncates: bool) -> bytes:
        """One chosen power-loss outcome: the unsynced writes for which ``keep(offset,
        data)`` returns the bytes that reached the disk (``data``, a torn prefix of it,
        or None for nothing), applied in order; all unsynced truncates happened, or
        none. For tests that need one precise outcome."""
        image = bytearray(self.durable)
        for op in self.pending:
            if op[0] == "truncate":
                if truncates:
                    _resize(image, op[1])
                continue
            kept = keep(op[1], op[2])
            if kept:
                _put(image, op[1], kept)
        return bytes(image)


def _resize(image: bytearray, size: int) -> None:
    if size < len(image):
        del image[size:]
    else:
        image.extend(bytes(size - len(image)))


def _put(image: bytearray, offset: int, data: bytes) -> None:
    end = offset + len(data)
    if end > len(image):
        image.extend(bytes(end - len(image)))
    image[offset:end] = data


def _tear(image: bytearray, offset: int, data: bytes, rng) -> None:
    """Write only some of the sectors of ``data`` (at least one, not all when there
    are two or more); the file still grows to the write's end, as an allocated block
    whose unwritten sectors read as zeros."""
    end = offset + len(data)
    if end > len(image):
        image.extend(bytes(end - len(image)))
    starts = list(range(offset - offset % SECTOR, end, SECTOR))
    if len(starts) > 1:
        chosen = rng.sample(starts, rng.randint(1, len(starts) - 1))
    else:
        chosen = starts if rng.random() < 0.5 else []
    for s in chosen:
        lo, hi = max(s, offset), min(s + SECTOR, end)
        image[lo:hi] = data[lo - offset : hi - offset]


class SimFile(DataFile):
    """A DataFile that writes through and records what a power loss could undo."""

    def __init__(self, path: str, *, readonly: bool, create: bool, mode: int, disk: Disk):
        super().__init__(path, readonly=readonly, create=create, mode=mode)
        self.disk = disk

    def write(self, offset: int, chunks: list) -> None:
        self.disk.io("write")
        super().write(offset, chunks)
        self.disk.wrote(offset, b"".join(chunks))

    def sync(self) -> None:
        # No real fdatasync: durability is what the model says, and the tests run fast.
        self.disk.io("sync")
        self.disk.synced()

    def truncate(self, size: int) -> None:
        self.disk.io("truncate")
        super().truncate(size)
        self.disk.truncated(size)


# --- workloads ------------------------------------------------------------------------
#
# The crash and fault tests replay the same kind of workload: a list of steps made from
# a seed, each either a commit (a list of operations) or an ``env.sync()``, together
# with the contents the database must hold after each step. Contents are
# ``{None: {key: value}, name: {key: value}, ...}``: the main database (without the
# records of named databases) and each named database that exists.

NAMES = (b"db-a", b"db-b", b"db-c")


def make_workload(seed: int, steps: int, *, huge: int = 0, sync_steps: bool = False):
    """``(steps, states)``: ``states[i]`` is the contents after the first ``i`` steps.

    Commits put small values (many per page, so pages split), medium ones, overflow
    values (``huge`` bytes at most: 0 for a few pages), delete runs of neighbouring keys
    (so pages merge), write into named databases and now and then drop one.
    """
    import random

    rng = random.Random(seed)
    state: dict = {None: {}}
    states = [_copy(state)]
    out = []
    for _ in range(steps):
        if sync_steps and rng.random() < 0.15:
            out.append(("sync",))
            states.append(_copy(state))
            continue
        ops = []
        for _ in range(rng.choice((1, 2, 4, 8, 16, 32))):
            r = rng.random()
            name = rng.choice(NAMES) if rng.random() < 0.3 else None
            if r < 0.03 and name is not None and name in state:
                ops.append(("drop", name))
                del state[name]
                continue
            data = state.setdefault(name, {})
            if r < 0.25 and data:
                # a run of neighbours: leaves empty out and merge
                keys = sorted(data)
                at = rng.randrange(len(keys))
                for key in keys[at : at + rng.choice((1, 3, 20, 60))]:
                    ops.append(("del", name, key))
                    del data[key]
                continue
            key = b"k%04d" % rng.randrange(600)
            size = rng.random()
            if size < 0.06:
                n = rng.randint(2000, max(2000, huge) if huge else 12000)
            elif size < 0.25:
                n = rng.randint(100, 1500)
            else:
                n = rng.randint(0, 60)
            value = rng.randbytes(n)
            ops.append(("put", name, key, value))
            data[key] = value
        out.append(("commit", ops))
        states.append(_copy(state))
    return out, states


def _copy(state: dict) -> dict:
    return {name: dict(data) for name, data in state.items()}


def apply_ops(env, txn, ops) -> None:
    """Do a workload step's operations (put, del, drop) in write transaction ``txn``."""
    for op in ops:
        db = env.open_db(op[1], txn=txn) if op[1] is not None else None
        if op[0] == "put":
            txn.put(op[2], op[3], db=db)
        elif op[0] == "del":
            txn.delete(op[2], db=db)
        else:
            txn.drop(db, delete=True)


def report_figures(request, title: str, figures: dict) -> None:
    """Print a test module's figures at the end of the run (pytest's terminal)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"{title}: " + ", ".join(f"{k} {v}" for k, v in figures.items())
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


def run_step(env, step) -> None:
    """Run one workload step on ``env``: a commit (aborted if anything fails), or a sync."""
    if step[0] == "sync":
        env.sync()
        return
    txn = env.begin(write=True)
    try:
        apply_ops(env, txn, step[1])
        txn.commit()
    except BaseException:
        txn.abort()
        raise


def read_all(env, txn=None) -> dict:
    """The contents of ``env``'s newest snapshot (or of read transaction ``txn``), in
    the workloads' form."""
    if txn is None:
        with env.begin() as snapshot:
            return read_all(env, snapshot)
    main = dict(txn.cursor().iternext())
    out = {None: {k: v for k, v in main.items() if k not in NAMES}}
    for name in NAMES:
        if name in main:
            db = env.open_db(name, txn=txn, create=False)
            out[name] = dict(txn.cursor(db=db).iternext())
    return out

