"""Disk full and I/O errors at every write, sync and truncate (docs/reference.md section 8).

:class:`FaultFile` is a :class:`kvmm.mapfile.DataFile` that fails its n-th write, sync
or truncate with ``ENOSPC`` or ``EIO``, as the real one reports a failure (a
``kvmm.DiskError`` raised from the ``OSError``); a failing write may first write part of
its bytes, as a short write on a full disk does. A workload of commits with page splits,
merges, overflow values, file growth and shrinking (``crashsim.make_workload``) runs
with the fault at I/O n = 1, 2, ... until n passes the workload's last I/O; once as a
single fault, once persistent (every I/O from the n-th on fails until cleared).

Each time the fault hits:

- the error reaches the caller as ``kvmm.DiskError`` (or ``OSError``);
- the transaction is aborted (using it raises ``kvmm.Error``);
- the previous commit is intact: the same environment, a read transaction begun before
  the fault, and a read-only environment opened during it all read exactly the
  previous contents, and ``check_env`` finds no problem;
- after the fault clears, the same environment object commits the failed step again
  and the next one, and a fresh environment reads them back.

``KVMM_FAULT_SCALE=k`` makes the workload ``k`` times longer.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import re

import pytest
from crashsim import apply_ops, make_workload, read_all, report_figures

import kvmm
import kvmm.reclaim
import kvmm.store
from kvmm.check import check_env
from kvmm.mapfile import DataFile

SCALE = float(os.environ.get("KVMM_FAULT_SCALE", "1"))
FIGURES = {"faults injected": 0, "single": 0, "persistent": 0, "absorbed": 0,
           "partial writes": 0,
           "wrong error": 0, "previous commit lost": 0, "no commit after the fault": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_figures(request, "fault injection", FIGURES)


@pytest.fixture(autouse=True)
def _small_steps(monkeypatch):
    """Grow and shrink in steps of a few pages, so a short workload does both often;
    the replays are many, so the strict per-commit check is left to the explicit ones."""
    monkeypatch.setattr(kvmm.store, "GROW_MIN", 8 * 4096)
    monkeypatch.setattr(kvmm.reclaim, "SHRINK_MIN", 8 * 4096)
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_MIN", 16 * 4096)
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_WRITTEN", 32 * 4096)
    monkeypatch.setattr("kvmm.txn._STRICT", False)


class Faults:
    """When and how the data file fails.

    The fault hits the ``fail_at``-th write, sync or truncate (``ios`` counts them),
    or, when ``trigger`` is set, the first I/O for which ``trigger(kind, arg)`` is true
    (``arg``: a write's offset, a truncate's size). ``persistent``: every I/O after it
    fails too, until ``clear()``. A failing write first writes a random part of its
    bytes with probability ``partial`` (a short write on a full disk).
    """

    def __init__(self, code: int, persistent: bool = False, seed: int = 0,
                 partial: float | None = None):
        self.fail_at: int | None = None
        self.trigger = None
        self.code = code
        self.persistent = persistent
        self.partial = (0.5 if code == errno.ENOSPC else 0.0) if partial is None else partial
        self.rng = random.Random(seed)
        self.ios = 0
        self.fired = 0
        self.failed_kind = ""  # the kind of I/O the fault first hit
        self.last_write = -1  # offset of the last write before this I/O
        self.meta_window = False  # the fault first hit a meta write, or the sync after it

    def datafile_class(self):
        return functools.partial(FaultFile, faults=self)

    def hit(self, kind: str, arg: int = 0) -> bool:
        """Count one I/O; whether it fails."""
        self.ios += 1
        if not (self.fired and self.persistent) and (
                self.fired or self.fail_at is None and self.trigger is None
                or self.fail_at is not None and self.ios != self.fail_at
                or self.trigger is not None and not self.trigger(kind, arg)):
            return False
        if not self.fired:
            self.failed_kind = kind
            at = arg if kind == "write" else self.last_write
            self.meta_window = kind in ("write", "sync") and 0 <= at < 2 * 4096
            FIGURES["faults injected"] += 1
        self.fired += 1
        return True

    def error(self, what: str) -> kvmm.DiskError:
        e = OSError(self.code, os.strerror(self.code))
        err = kvmm.DiskError(f"{what}: {e.strerror} (injected)")
        err.__cause__ = e
        return err

    def clear(self) -> None:
        self.fail_at = self.trigger = None
        self.persistent = False


class FaultFile(DataFile):
    """A DataFile whose I/O fails when its :class:`Faults` say so."""

    def __init__(self, path: str, *, readonly: bool, create: bool, mode: int, faults: Faults):
        super().__init__(path, readonly=readonly, create=create, mode=mode)
        self.faults = faults

    def write(self, offset: int, chunks: list) -> None:
        faults = self.faults
        failed = faults.hit("write", offset)
        faults.last_write = offset
        if failed:
            data = b"".join(chunks)
            if faults.rng.random() < faults.partial:
                # a short write: part of the bytes made it before the disk filled up
                os.pwrite(self.fd, data[: faults.rng.randrange(1, len(data))], offset)
                FIGURES["partial writes"] += 1
            raise faults.error(f"writing {self.path}")
        super().write(offset, chunks)

    def sync(self) -> None:
        if self.faults.hit("sync"):
            raise self.faults.error(f"syncing {self.path}")
        # No real fdatasync: these tests are about errors, not durability.

    def truncate(self, size: int) -> None:
        if self.faults.hit("truncate", size):
            raise self.faults.error(f"resizing {self.path}")
        super().truncate(size)


def begin_step(env, step):
    """Start ``step``: a write transaction with its operations done (or None for a
    sync step). No I/O happens before the commit."""
    if step[0] == "sync":
        return None
    txn = env.begin(write=True)
    try:
        apply_ops(env, txn, step[1])
    except BaseException:
        txn.abort()
        raise
    return txn


def finish_step(env, txn) -> None:
    if txn is None:
        env.sync()
    else:
        txn.commit()


def read_fresh(path: str, **options) -> tuple[dict, list]:
    """Contents and check problems as a new environment (plain DataFile) sees them."""
    with kvmm.open(path, max_dbs=8, **options) as env:
        return read_all(env), check_env(env)


class Run:
    """One pass of the workload with the fault at I/O ``n``; collects what went wrong."""

    def __init__(self, tmp_path, n: int, code: int, persistent: bool, sync: bool):
        self.path = str(tmp_path / f"{'p' if persistent else 's'}{code}-{sync}-{n}")
        self.n = n
        self.code = code
        self.persistent = persistent
        self.sync = sync
        self.problems: list[str] = []
        self.where = ""

    def expect(self, ok: bool, figure: str, text: str) -> None:
        if not ok:
            FIGURES[figure] += 1
            self.problems.append(f"fault at I/O {self.n} {self.where}({os.strerror(self.code)}"
                                 f", {'persistent' if self.persistent else 'single'}, "
                                 f"sync={self.sync}): {text}")

    def go(self, workload, states) -> bool:
        """Run until the fault hits and the checks are done; False when the workload
        ended before I/O ``n``. A fault kvmm absorbs (no error reaches the caller: a
        failed attempt to give space back, say) must leave the workload's results."""
        kvmm.open(self.path, max_dbs=8).close()
        faults = Faults(self.code, self.persistent, seed=self.n)
        env = kvmm.Environment(self.path, max_dbs=8, sync=self.sync,
                        datafile_class=faults.datafile_class())
        try:
            faults.fail_at = self.n
            for i, step in enumerate(workload):
                reader = env.begin()  # a snapshot begun before the fault
                txn = None
                try:
                    txn = begin_step(env, step)
                    finish_step(env, txn)
                except Exception as e:  # noqa: BLE001 - which error it is, is checked
                    self.after_fault(env, faults, e, txn, reader, workload, states, i)
                    return True
                finally:
                    reader.abort()
            if not faults.fired:
                return False
            FIGURES["absorbed"] += 1
            self.expect(read_all(env) == states[-1] and check_env(env) == [],
                        "previous commit lost", "a fault no caller saw changed the results")
            return True
        finally:
            env.close()

    def after_fault(self, env, faults, error, txn, reader, workload, states, i) -> None:
        FIGURES["persistent" if self.persistent else "single"] += 1
        self.where = f"({faults.failed_kind} of {workload[i][0]} step {i}) "
        before, after = states[i], states[i + 1]
        self.expect(faults.fired > 0, "wrong error", f"{error!r} raised, not the fault")
        self.expect(isinstance(error, (kvmm.DiskError, OSError)), "wrong error",
                    f"step {i} raised {error!r}")
        if txn is not None:
            try:
                txn.get(b"k0000")
                self.expect(False, "wrong error", "the failed transaction is still usable")
            except kvmm.Error:
                pass
        # The previous commit, as the same environment, an older snapshot, a new
        # snapshot and a read-only environment see it, while the disk still fails.
        self.expect(read_all(env) == before, "previous commit lost",
                    f"step {i} failed, yet the environment reads other contents")
        self.expect(check_env(env) == [], "previous commit lost",
                    f"check after the fault: {check_env(env)[:3]}")
        self.expect(read_all(env, reader) == before, "previous commit lost",
                    "a snapshot begun before the fault reads other contents")
        # One window is out of reach: a disk that keeps failing from the write of the
        # meta (or the sync after it) on cannot take the slot's old bytes back either.
        # The environment that failed shows the previous commit, and writes the old
        # bytes back before its next commit; another environment may meanwhile see
        # the failed meta (or, torn, fall back to the steady one).
        if not (self.persistent and faults.meta_window):
            got, problems = read_fresh(self.path, readonly=True)
            self.expect(got == before and problems == [], "previous commit lost",
                        f"a read-only environment reads other contents or {problems[:3]}")
        if self.persistent:
            try:
                finish_step(env, begin_step(env, workload[i]))
                self.expect(False, "wrong error", "a commit succeeded while the disk fails")
            except (kvmm.DiskError, OSError):
                pass
            except Exception as e:  # noqa: BLE001
                self.expect(False, "wrong error", f"the second try raised {e!r}")
            self.expect(read_all(env) == before, "previous commit lost",
                        "a second failed commit changed the contents")
        # The fault clears: the same environment commits the failed step and the next.
        faults.clear()
        for j in (i, i + 1):
            if j >= len(workload):
                break
            try:
                finish_step(env, begin_step(env, workload[j]))
            except Exception as e:  # noqa: BLE001
                self.expect(False, "no commit after the fault", f"step {j} then: {e!r}")
                return
            self.expect(read_all(env) == states[j + 1] and check_env(env) == [],
                        "no commit after the fault", f"step {j} after the fault: wrong")
        got, problems = read_fresh(self.path)
        want = states[min(i + 2, len(workload))]
        self.expect(got == want and problems == [], "no commit after the fault",
                    f"reopened after the fault: other contents or {problems[:3]}")
        del after


def sweep(tmp_path, code: int, persistent: bool, sync: bool, seed: int) -> int:
    """Fault at I/O n for every n of the workload; returns how many faults hit."""
    workload, states = make_workload(seed, round(35 * SCALE), sync_steps=not sync)
    problems = []
    n = 0
    while True:
        n += 1
        run = Run(tmp_path, n, code, persistent, sync)
        if not run.go(workload, states):
            break
        problems += run.problems
    kinds: dict[str, str] = {}  # one example of each kind of problem
    for text in problems:
        kinds.setdefault(re.sub(r"\d+", "N", text.split(": ", 1)[0].split("(", 1)[1]
                                + text.split(": ", 1)[1]), text)
    assert not problems, f"{len(problems)} problems, of {len(kinds)} kinds:\n" + "\n".join(
        sorted(kinds.values()))
    return n - 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_single_fault_at_every_io_aborts_and_recovers(tmp_path, code, sync):
    """One write, sync or truncate fails; everything above holds for each of them."""
    assert sweep(tmp_path, code, persistent=False, sync=sync, seed=21) > 50


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_persistent_fault_from_every_io_aborts_and_recovers(tmp_path, code, sync):
    """Every I/O from the n-th on fails until cleared; readers and a read-only
    environment keep working meanwhile; once cleared, the same environment writes."""
    assert sweep(tmp_path, code, persistent=True, sync=sync, seed=22) > 50


# --- short cases: each found by the sweeps above ---------------------------------------


def open_faulty(tmp_path, faults: Faults, **options):
    path = str(tmp_path / "db")
    kvmm.open(path, max_dbs=8).close()
    return path, kvmm.Environment(path, max_dbs=8, datafile_class=faults.datafile_class(),
                           **options)


def put(env, key: bytes, value: bytes, db=None) -> None:
    with env.begin(write=True) as txn:
        txn.put(key, value, db=db)


def test_failed_sync_after_the_meta_write_leaves_the_previous_commit(tmp_path):
    """Step 7 of the commit: the meta is written, and syncing it fails (EIO). commit()
    raises, so the commit did not happen: the environment and any new reader must
    still see the previous commit, and the next commit must build on that one."""
    faults = Faults(errno.EIO)
    path, env = open_faulty(tmp_path, faults)
    with env:
        put(env, b"a", b"1")
        meta_written = []

        def after_the_meta(kind, arg):  # the first sync after the next commit's meta
            if kind == "write" and arg < 2 * 4096:
                meta_written.append(arg)
            return kind == "sync" and bool(meta_written)

        faults.trigger = after_the_meta
        with pytest.raises((kvmm.DiskError, OSError)):
            put(env, b"a", b"2")
        assert faults.failed_kind == "sync" and meta_written
        faults.clear()
        assert read_all(env) == {None: {b"a": b"1"}}
        put(env, b"b", b"3")
        assert read_all(env) == {None: {b"a": b"1", b"b": b"3"}}
    assert read_fresh(path) == ({None: {b"a": b"1", b"b": b"3"}}, [])


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_short_meta_write_keeps_the_previous_commit(tmp_path, sync):
    """The disk fills up while a meta is written: part of it lands, then ENOSPC. With
    sync=False the slot written holds the newest weak commits (the other holds the
    steady one), so the torn meta must not cost them: commit() raised, and everything
    acknowledged before must still be read, now and after reopening; the check must
    pass."""
    faults = Faults(errno.ENOSPC, partial=1.0, seed=3)
    path, env = open_faulty(tmp_path, faults, sync=sync)
    with env:
        put(env, b"a", b"1")
        put(env, b"b", b"2")
        faults.trigger = lambda kind, arg: kind == "write" and arg < 2 * 4096
        with pytest.raises((kvmm.DiskError, OSError)):
            put(env, b"c", b"3")
        faults.clear()
        assert read_all(env) == {None: {b"a": b"1", b"b": b"2"}}
        assert check_env(env) == []
    assert read_fresh(path) == ({None: {b"a": b"1", b"b": b"2"}}, [])


def test_failed_shrink_after_a_durable_commit_is_not_reported_as_a_failed_commit(tmp_path):
    """A commit that frees most of the file gives its free tail back, with an empty
    commit that truncates the file after its meta is durable. If that truncate fails,
    the commit has happened: commit() must not raise (the space is given back later),
    or else the commit must not be visible."""
    faults = Faults(errno.EIO)
    path, env = open_faulty(tmp_path, faults)
    big = {b"big%02d" % i: bytes(8000) for i in range(40)}
    with env:
        with env.begin(write=True) as txn:
            for k, v in big.items():
                txn.put(k, v)
        size = os.path.getsize(os.path.join(path, "data.kvmm"))
        faults.trigger = lambda kind, arg: kind == "truncate" and arg < size
        try:
            with env.begin(write=True) as txn:
                for k in big:
                    txn.delete(k)
            want: dict = {}
        except (kvmm.DiskError, OSError):
            want = dict(big)
        assert faults.fired, "no shrinking truncate: the test needs a new trigger"
        faults.clear()
        assert read_all(env) == {None: want}
        put(env, b"x", b"1")
        want[b"x"] = b"1"
        assert read_all(env) == {None: want}
    assert read_fresh(path) == ({None: want}, [])


def test_database_created_by_a_failed_commit_can_be_created_again(tmp_path):
    """A named database opened (created) in a write transaction whose commit fails
    does not exist; opening it in the next write transaction must create it again,
    as LMDB closes a handle opened in an aborted transaction."""
    faults = Faults(errno.ENOSPC, partial=0.0)
    _, env = open_faulty(tmp_path, faults)
    with env:
        faults.trigger = lambda kind, arg: kind == "write"
        with pytest.raises((kvmm.DiskError, OSError)), env.begin(write=True) as txn:
            txn.put(b"k", b"v", db=env.open_db(b"db-a", txn=txn))
        faults.clear()
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v", db=env.open_db(b"db-a", txn=txn))
        assert read_all(env) == {None: {}, b"db-a": {b"k": b"v"}}
