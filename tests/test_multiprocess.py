"""Several processes on one environment (docs/reference.md sections 4, 8 and 10).

Children are started with the "spawn" context and run functions of ``_workers``; each
test bounds every wait, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import random
import signal
import threading
import time

import _workers
import pytest

import kvmm
from kvmm.check import check_env

SPAWN = multiprocessing.get_context("spawn")
WAIT = 60  # generous bound for anything that should happen "soon"


@pytest.fixture
def start_child():
    """start_child(target, *args) starts a spawned child; any still alive at the end of
    the test (it failed) is killed."""
    procs = []

    def start(target, *args):
        proc = SPAWN.Process(target=target, args=args, daemon=True)
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _join(proc):
    proc.join(WAIT)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        pytest.fail(f"child {proc.pid} did not finish within {WAIT} s")
    assert proc.exitcode == 0, f"child {proc.pid} exited with {proc.exitcode}"


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT)
    assert proc.exitcode == -signal.SIGKILL


def _collect(results, count, procs) -> list:
    """``count`` reports from ``results``; fails at once if a child dies without one."""
    reports = []
    deadline = time.monotonic() + WAIT
    while len(reports) < count:
        try:
            reports.append(results.get(timeout=0.1))
        except queue.Empty:
            died = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not died, f"a child exited with {died[0]}"
            assert time.monotonic() < deadline, f"{count - len(reports)} reports missing"
    return reports


def _readers(env) -> dict[int, int]:
    """{pid: txnid} of the slots in a transaction, from py-lmdb's reader table text (a
    header, then pid thread txnid, "-" for a slot between transactions)."""
    rows = [line.split() for line in env.readers().splitlines()[1:] if line.strip()]
    return {int(row[0]): int(row[2]) for row in rows if row[2] != "-"}


# --- bank transfers -----------------------------------------------------------------------


def test_bank_total_holds_in_every_snapshot_while_two_processes_transfer(tmp_path, start_child):
    path = str(tmp_path / "bank")
    _workers.open_bank(path)
    transfers = 300
    # Every child opens the environment, then waits for the others and the parent.
    start, stop, results = SPAWN.Barrier(5), SPAWN.Event(), SPAWN.Queue()
    writers = [
        start_child(_workers.bank_writer, path, w, transfers, start, results) for w in range(2)
    ]
    readers = [start_child(_workers.bank_reader, path, r, start, stop, results) for r in range(2)]
    start.wait(WAIT)
    reports = _collect(results, len(writers), writers + readers)
    stop.set()
    reports += _collect(results, len(readers), readers)
    for proc in writers + readers:
        _join(proc)

    committed = {r[1]: r[2] for r in reports if r[0] == "writer"}
    assert committed == {0: transfers, 1: transfers}
    for _, reader_id, checked, commits_seen, bad in (r for r in reports if r[0] == "reader"):
        assert bad == [], f"reader {reader_id}: snapshots (txnid, accounts, total): {bad}"
        assert checked >= 20, f"reader {reader_id} checked only {checked} snapshots"
        assert commits_seen >= 2, f"reader {reader_id} saw {commits_seen} commit(s) only"
    with kvmm.open(path) as env, env.begin() as txn:
        balances = [int(txn.get(_workers.account_key(i))) for i in range(_workers.ACCOUNTS)]
        assert sum(balances) == _workers.TOTAL
        for w in range(2):
            assert int(txn.get(_workers.transfer_count_key(w))) == transfers
        assert check_env(env) == []


# --- snapshots and the writer lock --------------------------------------------------------


def test_read_snapshot_is_unchanged_by_another_process_commits(tmp_path, start_child):
    path = str(tmp_path / "db")
    count = 200
    first = {b"key%04d" % i: _workers.round_value(-1, i) for i in range(count)}
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for key, value in first.items():
            txn.put(key, value)
    # A handle that has read nothing yet, so every page below comes from the file.
    with kvmm.open(path) as env:
        old = env.begin()
        # Twenty commits, each rewriting every key: pages freed by them are reused
        # unless this process's reader slot keeps the snapshot's pages alive.
        _join(start_child(_workers.rewrite_keys, path, count, 20))
        assert dict(old.cursor()) == first
        assert old.get(b"key0000") == first[b"key0000"]
        old.abort()
        with env.begin() as new:
            assert dict(new.cursor()) == {
                b"key%04d" % i: _workers.round_value(19, i) for i in range(count)
            }


def test_begin_write_waits_until_another_process_commits(tmp_path, start_child):
    path = str(tmp_path / "db")
    kvmm.open(path).close()
    holding, release = SPAWN.Event(), SPAWN.Event()
    before_commit = SPAWN.Value("d", 0.0)
    child = start_child(_workers.hold_write_txn, path, holding, release, before_commit)
    try:
        assert holding.wait(WAIT), "the child never opened its write transaction"
        hold = 0.5
        released_at = []

        def release_later():
            time.sleep(hold)
            released_at.append(time.monotonic())
            release.set()

        with kvmm.open(path) as env:
            asked_at = time.monotonic()
            threading.Thread(target=release_later, daemon=True).start()
            txn = env.begin(write=True)
            got_at = time.monotonic()
            try:
                # Began after the child's commit, so it sees the child's write.
                assert txn.get(b"holder") == b"child"
            finally:
                txn.abort()
        _join(child)
    finally:
        release.set()
    assert released_at and got_at >= released_at[0]
    assert got_at >= before_commit.value > 0
    assert got_at - asked_at >= hold


def test_a_write_transaction_dropped_without_commit_lets_a_waiting_process_write(
        tmp_path, start_child):
    """docs/reference.md section 10: dropping the last reference aborts at once, by reference counting (the
    cyclic collector is off), and the writer waiting in another process goes on."""
    path = str(tmp_path / "db")
    ready = SPAWN.Event()
    gc.collect()
    gc.disable()
    try:
        with kvmm.open(path) as env:
            txn = env.begin(write=True)
            txn.put(b"dropped", b"parent")
            txn.cursor().first()
            child = start_child(_workers.write_when_free, path, ready)
            assert ready.wait(WAIT), "the child never opened the environment"
            del txn
            _join(child)
            with env.begin() as txn:
                assert txn.get(b"waiter") == b"child"
                assert txn.get(b"dropped") is None
    finally:
        gc.enable()


# --- growth -------------------------------------------------------------------------------


def test_another_process_follows_the_file_growing_many_times(tmp_path, start_child):
    path = str(tmp_path / "db")
    count = 16000
    with kvmm.open(path) as env:
        with env.begin(write=True) as txn:
            for i in range(10):
                txn.put(_workers.growth_key(i), _workers.growth_value(i))
        data = os.path.join(path, "data.kvmm")
        small = os.path.getsize(data)
        ready, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        child = start_child(_workers.follow_growth, path, count, ready, go, results)
        assert ready.wait(WAIT)
        step = 2000
        for start in range(10, count, step):
            with env.begin(write=True) as txn:
                for i in range(start, min(start + step, count)):
                    txn.put(_workers.growth_key(i), _workers.growth_value(i))
        grown = os.path.getsize(data)
        go.set()
        (report,) = _collect(results, 1, [child])
        _join(child)
    assert grown >= 20 << 20 and grown >= 8 * small, (small, grown)
    assert report == ("done", count, [])


# --- a reader killed with SIGKILL ---------------------------------------------------------


def test_sigkilled_reader_slot_is_reclaimed_and_its_pages_reused(tmp_path, start_child):
    path = str(tmp_path / "db")
    count, rounds = 300, 12
    env = kvmm.open(path)
    try:

        def rewrite(first_round):
            for r in range(first_round, first_round + rounds):
                with env.begin(write=True) as txn:
                    for i in range(count):
                        txn.put(b"key%04d" % i, _workers.round_value(r, i) * 2)
            return os.path.getsize(os.path.join(path, "data.kvmm")), env.info()["last_pgno"]

        _, base_pgno = rewrite(0)
        snapshot = env.info()["last_txnid"]
        ready = SPAWN.Event()
        child = start_child(_workers.hold_read_txn, path, ready)
        assert ready.wait(WAIT)
        assert _readers(env).get(child.pid) == snapshot
        pinned_size, pinned_pgno = rewrite(100)  # while the child pins its snapshot
        _kill(child)
        assert env.reader_check() >= 1
        assert child.pid not in _readers(env)
        assert env.reader_check() == 0
        for first_round in (200, 300, 400):
            free_size, free_pgno = rewrite(first_round)
        # With the slot gone nothing pins old pages: three times the load that grew the
        # file while the child lived now runs in the pages already there (saving the
        # free list may take a few new ones), and the file stops growing.
        assert free_pgno - pinned_pgno <= max((pinned_pgno - base_pgno) // 10, 32), (
            base_pgno,
            pinned_pgno,
            free_pgno,
        )
        assert free_size <= pinned_size, (pinned_size, free_size)
        assert check_env(env) == []
    finally:
        env.close()


# --- a writer killed with SIGKILL inside commit -------------------------------------------


def _last_ack(ack_path) -> int:
    with open(ack_path, "rb") as f:
        lines = f.read().split(b"\n")
    done = [line for line in lines[:-1] if line]  # the part after the last \n is unfinished
    return int(done[-1]) if done else 0


def test_sigkilled_writer_leaves_the_last_commit_or_the_one_in_flight(
    tmp_path, start_child, monkeypatch
):
    # The children need not check every commit: a kill then lands inside commit itself.
    monkeypatch.setenv("KVMM_STRICT", "0")
    path = str(tmp_path / "db")
    ack_path = str(tmp_path / "acks")
    open(ack_path, "wb").close()
    rng = random.Random(20)
    kvmm.open(path).close()
    for attempt in range(20):
        acked_before = _last_ack(ack_path)
        child = start_child(_workers.write_generations, path, ack_path, attempt % 2 == 0)
        deadline = time.monotonic() + WAIT
        while _last_ack(ack_path) == acked_before:
            assert child.is_alive(), f"the writer exited with {child.exitcode}"
            assert time.monotonic() < deadline, "the writer never committed"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        _kill(child)
        acked = _last_ack(ack_path)
        with kvmm.open(path) as env:
            assert check_env(env) == [], f"attempt {attempt}"
            with env.begin() as txn:
                g = int(txn.get(b"gen", b"0"))
                assert g in (acked, acked + 1), f"attempt {attempt}: gen {g}, acked {acked}"
                assert dict(txn.cursor()) == _workers.generation_contents(g)
