"""Tests of kvmm.lock: the writer lock, reader slots, dead-reader reclaim, fork.

Cases with other processes use the "spawn" context, so each child starts clean; the
children's functions live at module level so that spawn can import them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from kvmm import lock as lockmod
from kvmm.errors import (
    BadRslotError,
    Error,
    LockError,
    ReadersFullError,
    VersionMismatchError,
)
from kvmm.format import LOCK_HEADER, LOCK_HEADER_SIZE, LOCK_MAGIC, WRITER_LOCK_BYTE
from kvmm.lock import LockFile

SPAWN = multiprocessing.get_context("spawn")
WAIT = 30  # generous bound for anything that should happen "soon"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "lock.kvmm")


@pytest.fixture
def lf(path):
    handle = LockFile(path)
    yield handle
    handle.close()


def _join(proc):
    proc.join(WAIT)
    assert proc.exitcode == 0, f"child exited with {proc.exitcode}"


# --- children (module level, for spawn) ----------------------------------------------


def _child_take_writer(path, trying, acquired_at):
    lf = LockFile(path)
    trying.set()
    lf.lock_writer()
    acquired_at.value = time.time()
    lf.unlock_writer()
    lf.close()


def _child_hold_slot(path, txnid, q):
    lf = LockFile(path)
    slot = lf.acquire_slot()
    lf.set_slot(slot, txnid)
    q.put(slot)
    time.sleep(WAIT * 2)  # until killed


def _child_try_acquire(path, q):
    lf = LockFile(path)
    try:
        lf.acquire_slot()
        q.put("acquired")
    except ReadersFullError:
        q.put("full")
    lf.close()


def _child_probe(path, q):
    lf = LockFile(path)
    q.put((lf.readers(), lockmod._held(lf._shared.fd, WRITER_LOCK_BYTE)))
    lf.close()


# --- opening ------------------------------------------------------------------------


def test_new_file_gets_header_and_max_readers_of_its_creator(path):
    a = LockFile(path, max_readers=4)
    b = LockFile(path, max_readers=100)
    assert a.max_readers == b.max_readers == 4
    assert os.path.getsize(path) == LOCK_HEADER_SIZE + 4 * 16
    a._check()
    a.close()
    b.close()
    c = LockFile(path, max_readers=100)  # reopened after every handle closed
    assert c.max_readers == 4
    c.close()


def test_file_created_with_mode_masked_by_umask(path):
    old = os.umask(0o022)
    try:
        LockFile(path, mode=0o666).close()
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_wrong_magic_raises_lock_error(path):
    with open(path, "wb") as f:
        f.write(LOCK_HEADER.pack(b"NOTALOCK", 1, 4).ljust(LOCK_HEADER_SIZE + 64, b"\0"))
    with pytest.raises(LockError, match="magic"):
        LockFile(path)


def test_short_garbage_file_raises_lock_error(path):
    with open(path, "wb") as f:
        f.write(b"xyz")
    with pytest.raises(LockError):
        LockFile(path)


def test_wrong_version_raises_version_mismatch(path):
    with open(path, "wb") as f:
        f.write(LOCK_HEADER.pack(LOCK_MAGIC, 99, 4).ljust(LOCK_HEADER_SIZE + 64, b"\0"))
    with pytest.raises(VersionMismatchError):
        LockFile(path)


def test_missing_file_without_create_raises_error_naming_path(path):
    with pytest.raises(Error, match="lock.kvmm"):
        LockFile(path, create=False)
    assert not os.path.exists(path)


def test_max_readers_below_one_is_refused(path):
    with pytest.raises(Error):
        LockFile(path, max_readers=0)


# --- the writer lock ----------------------------------------------------------------


def test_writer_lock_excludes_another_thread(lf):
    events = []
    lf.lock_writer()

    def other():
        events.append("trying")
        lf.lock_writer()
        events.append("acquired")
        lf.unlock_writer()

    t = threading.Thread(target=other)
    t.start()
    while not events:
        time.sleep(0.01)
    time.sleep(0.2)
    events.append("unlocking")
    lf.unlock_writer()
    t.join(WAIT)
    assert events == ["trying", "unlocking", "acquired"]


def test_writer_lock_excludes_another_process(lf, path):
    trying = SPAWN.Event()
    acquired_at = SPAWN.Value("d", 0.0)
    lf.lock_writer()
    proc = SPAWN.Process(target=_child_take_writer, args=(path, trying, acquired_at))
    proc.start()
    try:
        assert trying.wait(WAIT)
        time.sleep(0.3)
        assert acquired_at.value == 0.0, "child took the writer lock while we held it"
        unlocked_at = time.time()
        lf.unlock_writer()
    finally:
        _join(proc)
    assert acquired_at.value >= unlocked_at


def test_unlock_writer_not_held_raises(lf):
    with pytest.raises(LockError):
        lf.unlock_writer()


# --- reader slots -------------------------------------------------------------------


def test_acquire_set_release_and_oldest_reader(lf):
    assert lf.oldest_reader() is None
    a, b, c = lf.acquire_slot(), lf.acquire_slot(), lf.acquire_slot()
    assert len({a, b, c}) == 3
    lf.set_slot(a, 5)
    lf.set_slot(b, 3)
    lf._check()
    assert lf.oldest_reader() == 3
    me = os.getpid()
    assert sorted(lf.readers()) == sorted([(a, me, 5, True), (b, me, 3, True), (c, me, 0, True)])
    lf.release_slot(b)
    assert lf.oldest_reader() == 5
    lf.release_slot(a)
    lf.release_slot(c)
    assert lf.oldest_reader() is None
    lf._check()
    # Released slots stay owned (txnid 0) and are reused before any new claim.
    assert {s for s, *_ in lf.readers()} == {a, b, c}
    assert lf.acquire_slot() in {a, b, c}
    lf._check()


def test_release_twice_raises_bad_rslot(lf):
    slot = lf.acquire_slot()
    lf.release_slot(slot)
    with pytest.raises(BadRslotError):
        lf.release_slot(slot)
    with pytest.raises(BadRslotError):
        lf.set_slot(lf.max_readers, 1)


def test_threads_get_distinct_slots(path):
    lf = LockFile(path, max_readers=16)
    got = []

    def take():
        got.extend(lf.acquire_slot() for _ in range(2))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(got) == list(range(16))
    lf._check()
    lf.close()


def test_full_table_raises_readers_full_and_released_slot_is_reusable(path):
    lf = LockFile(path, max_readers=4)
    slots = [lf.acquire_slot() for _ in range(4)]
    with pytest.raises(ReadersFullError):
        lf.acquire_slot()
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_try_acquire, args=(path, q))
    proc.start()
    assert q.get(timeout=WAIT) == "full"  # another process does not hang either
    _join(proc)
    lf.release_slot(slots[2])
    assert lf.acquire_slot() == slots[2]
    lf._check()
    lf.close()


def test_killed_reader_is_dead_ignored_and_reclaimed(lf, path, monkeypatch):
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_hold_slot, args=(path, 7, q))
    proc.start()
    slot = q.get(timeout=WAIT)
    assert (slot, proc.pid, 7, True) in lf.readers()
    assert lf.oldest_reader() == 7
    proc.kill()
    proc.join(WAIT)
    assert (slot, proc.pid, 7, False) in lf.readers()
    monkeypatch.setattr(lockmod, "ALIVE_CACHE_SECONDS", 0.0)  # forget "alive" above
    assert lf.oldest_reader() is None
    assert lf.readers() == []  # reclaimed on the way


def test_reader_check_counts_dead_slots(lf, path):
    q = SPAWN.Queue()
    procs = [SPAWN.Process(target=_child_hold_slot, args=(path, 9, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        q.get(timeout=WAIT)
    mine = lf.acquire_slot()
    lf.set_slot(mine, 11)
    assert lf.reader_check() == 0
    for p in procs:
        p.kill()
        p.join(WAIT)
    assert lf.reader_check() == 2
    assert lf.reader_check() == 0
    assert lf.readers() == [(mine, os.getpid(), 11, True)]


def test_dead_slot_is_reclaimed_when_table_is_full(path):
    lf = LockFile(path, max_readers=2)
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_hold_slot, args=(path, 4, q))
    proc.start()
    dead = q.get(timeout=WAIT)
    lf.acquire_slot()
    with pytest.raises(ReadersFullError):
        lf.acquire_slot()
    proc.kill()
    proc.join(WAIT)
    assert lf.acquire_slot() == dead
    lf._check()
    lf.close()


def test_alive_verdict_is_cached(lf, monkeypatch):
    # A foreign slot, faked: another pid in slot 0, reported alive by a counting probe.
    lockmod._pack_slot(lf._shared.mm, lf._shared.offsets[0], os.getppid(), 0, 3)
    calls = []
    monkeypatch.setattr(lockmod, "_held", lambda fd, byte: calls.append(byte) or True)
    assert lf.oldest_reader() == 3
    assert lf.oldest_reader() == 3
    assert len(calls) == 1
    monkeypatch.setattr(lockmod, "ALIVE_CACHE_SECONDS", 0.0)
    lf.oldest_reader()
    lf.oldest_reader()
    assert len(calls) == 3


# --- handles, close, fork -----------------------------------------------------------


def test_closing_one_handle_keeps_the_others_locks(path):
    a = LockFile(path)
    b = LockFile(path)
    b.lock_writer()
    slot = b.acquire_slot()
    b.set_slot(slot, 9)
    a.close()
    a.close()  # idempotent
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_probe, args=(path, q))
    proc.start()
    readers, writer_held = q.get(timeout=WAIT)
    _join(proc)
    assert readers == [(slot, os.getpid(), 9, True)]
    assert writer_held
    b.close()  # the last handle: slots zeroed, locks gone
    proc = SPAWN.Process(target=_child_probe, args=(path, q))
    proc.start()
    readers, writer_held = q.get(timeout=WAIT)
    _join(proc)
    assert readers == []
    assert not writer_held


def test_closed_handle_raises_error(lf):
    slot = lf.acquire_slot()
    lf.close()
    for call in (lf.acquire_slot, lf.oldest_reader, lf.readers, lf.lock_writer):
        with pytest.raises(Error, match="closed"):
            call()
    with pytest.raises(Error, match="closed"):
        lf.set_slot(slot, 1)


def test_fork_child_gets_fresh_state(lf, path):
    slot = lf.acquire_slot()
    lf.set_slot(slot, 3)
    lf.lock_writer()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                lf.acquire_slot()
            except Error as e:
                assert "fork" in str(e)
            else:
                raise AssertionError("inherited handle still usable")
            fresh = LockFile(path)
            assert fresh._shared is not lf._shared
            mine = fresh.acquire_slot()
            assert mine != slot
            assert (slot, os.getppid(), 3, True) in fresh.readers()
            assert lockmod._held(fresh._shared.fd, WRITER_LOCK_BYTE)  # the parent's
            fresh.close()
            lf.close()  # the inherited handle: a no-op, releases nothing of the parent's
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (slot, os.getpid(), 3, True) in lf.readers()
    lf._check()
    q = SPAWN.Queue()
    proc = SPAWN.Process(target=_child_probe, args=(path, q))
    proc.start()
    readers, writer_held = q.get(timeout=WAIT)
    _join(proc)
    assert writer_held, "the child released the parent's writer lock"
    assert readers == [(slot, os.getpid(), 3, True)]
    lf.unlock_writer()
