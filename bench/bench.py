#!/usr/bin/env python3
"""kvmm's benchmark harness: the same workloads, keys and values against several stores.

One run compares kvmm with py-lmdb, SQLite and semidbm (or dbm.dumb). The parent process
only orchestrates: for every repetition and every store it starts a fresh child process
(`--child STORE`) that runs all selected workloads on that one store and prints its timings
as JSON, so each child's peak RSS belongs to one store alone. The parent reports the median
over repetitions as a table, and optionally as JSON, text and a PNG chart.

Each workload is one function written against the part of py-lmdb's API that kvmm copies
(`begin`, `get`, `put`, `delete`, `cursor`). py-lmdb and kvmm run it on their own
transactions; SQLite and the dbm stores go through a thin adapter (`SqliteTxn`, `DbmTxn`).

How to run it and how to read the table: bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import importlib.util
import io
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from math import nan
from pathlib import Path
from random import Random
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
# The directory holding the kvmm package measured: this checkout, or with --kvmm-rev a copy
# of kvmm/ as committed. Child and reader processes inherit it through the environment.
KVMM_SRC_VAR = "KVMM_BENCH_SRC"
KVMM_SRC = Path(os.environ.get(KVMM_SRC_VAR, ROOT))
sys.path.insert(0, str(KVMM_SRC))

KEY = struct.Struct(">QQ")
# Distinct values cycled over the keys: enough that values differ between neighbours and
# between a fill and an overwrite, few enough that 8 KiB values do not cost N * 8 KiB of RAM.
VALUE_POOL = 1024
RANGE_LEN = 100  # items read by one rangescan: set_range, then next() 99 times
MIXED_TXN_OPS = 100  # operations per write transaction in `mixed`
MIXED_PUT_SHARE = 0.10  # share of puts in `mixed`; the rest are gets
READER_TXN_OPS = 100  # gets per read transaction in a reader process
# A reader repeats its pass over the keys until this much time went by, so that the writer
# really writes beside it even when a pass over few keys takes a millisecond.
READER_MIN_SECONDS = 1.0
# py-lmdb needs its map size up front; this only reserves address space, the file grows
# as written. kvmm is opened without it, as its users would.
LMDB_MAP_SIZE = 1 << 36

ORDERED = "ordered"  # keeps keys in order: cursors, scans
PROCESSES = "processes"  # several processes may use the store at once
DURABLE = "durable"  # can make a commit survive an OS crash (fsync)
DUPSORT = "dupsort"  # keys holding sorted sets of values (LMDB's dupsort databases)
DUP_VALUES = 100  # values per key in the dupsort workloads

ALL_STORES = ("kvmm", "lmdb", "sqlite3", "semidbm", "dbm.dumb")
DEFAULT_STORES = ("kvmm", "lmdb", "sqlite3", "semidbm")


class CheckError(Exception):
    """A store returned something other than what was written: the timing is not valid."""


# --------------------------------------------------------------------------- data


class Data:
    """Every key, value and order the workloads use, made up front from the seed.

    The timed loops only walk prepared lists, and every store (and every child process,
    which rebuilds this from the same arguments) sees the same bytes in the same order.
    """

    def __init__(self, n: int, value_size: int, seed: int, txn_ops: int, sync_ops: int):
        rng = Random(seed)
        self.config = {
            "n": n,
            "value_size": value_size,
            "seed": seed,
            "txn_ops": txn_ops,
            "sync_ops": sync_ops,
        }
        self.n = n
        self.keys = [KEY.pack(0, i) for i in range(n)]
        pool = [rng.randbytes(value_size) for _ in range(VALUE_POOL)]
        self.values = [pool[i % VALUE_POOL] for i in range(n)]
        self.new_values = [pool[(i + 1) % VALUE_POOL] for i in range(n)]
        self.seq_items = list(zip(self.keys, self.values))
        self.random_items = shuffled(self.seq_items, rng)
        self.overwrite_items = shuffled(zip(self.keys, self.new_values), rng)
        self.read_keys = shuffled(self.keys, rng)
        self.delete_keys = shuffled(self.keys, rng)
        last_start = max(1, n - RANGE_LEN + 1)  # every scan finds RANGE_LEN items
        self.range_starts = [
            self.keys[rng.randrange(last_start)] for _ in range(max(1, n // RANGE_LEN))
        ]
        self.mixed_batches = [
            [
                (self.keys[i], self.values[i] if rng.random() < MIXED_PUT_SHARE else None)
                for i in (rng.randrange(n) for _ in range(MIXED_TXN_OPS))
            ]
            for _ in range(max(1, n // MIXED_TXN_OPS))
        ]
        self.txn_items = self.random_items[:txn_ops]
        self.sync_items = self.random_items[:sync_ops]
        self.sample = sorted(rng.sample(range(n), min(n, 100)))  # checked after writes
        # dupsort: n pairs, n / DUP_VALUES keys with DUP_VALUES 8-byte values each.
        dup_keys = self.keys[: max(1, n // DUP_VALUES)]
        self.dup_items = shuffled(
            ((k, KEY.pack(0, j)[8:]) for k in dup_keys for j in range(DUP_VALUES)), rng
        )
        self.dup_keys = shuffled(dup_keys, rng)


def shuffled(items: Iterable, rng: Random) -> list:
    out = list(items)
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- stores


class Store:
    """One store open in a directory of its own, seen through py-lmdb's API.

    `read()` and `write()` return context managers yielding a transaction with the
    methods the workloads call: `get`, `put(key, value, append=...)`, `delete`, `cursor`.
    `features` says what the store can do; a workload needing more is skipped ("-").
    """

    name = ""
    module_name = ""
    features: frozenset[str] = frozenset({ORDERED, PROCESSES, DURABLE})

    def __init__(self, path: str, sync: bool) -> None:
        self.path = path
        self.module = importlib.import_module(self.module_name)

    def version(self) -> str:
        return str(getattr(self.module, "__version__", "?"))

    def read(self) -> Any:
        raise NotImplementedError

    def write(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def size(self) -> int:
        """Bytes in all the store's files (data, lock, WAL): what it takes on disk."""
        return sum(p.stat().st_size for p in Path(self.path).rglob("*") if p.is_file())


class LmdbStore(Store):
    """py-lmdb: its own transactions, nothing in between."""

    name = "lmdb"
    module_name = "lmdb"
    features = Store.features | {DUPSORT}

    def __init__(self, path: str, sync: bool) -> None:
        super().__init__(path, sync)
        self.env = self.module.open(
            path, sync=sync, max_readers=126, max_dbs=2, **self.open_options()
        )

    def dup_db(self) -> Any:
        """The dupsort database of the dup_* workloads."""
        return self.env.open_db(b"dups", dupsort=True)

    def open_options(self) -> dict[str, Any]:
        return {"map_size": LMDB_MAP_SIZE}

    def read(self) -> Any:
        return self.env.begin()

    def write(self) -> Any:
        return self.env.begin(write=True)

    def close(self) -> None:
        self.env.close()


class KvmmStore(LmdbStore):
    """kvmm, opened as py-lmdb is but without a map size: its file grows by itself."""

    name = "kvmm"
    module_name = "kvmm"

    def open_options(self) -> dict[str, Any]:
        return {}


class SqliteStore(Store):
    """SQLite in WAL mode, one `WITHOUT ROWID` table; synchronous=FULL when sync, else OFF."""

    name = "sqlite3"
    module_name = "sqlite3"

    def __init__(self, path: str, sync: bool) -> None:
        super().__init__(path, sync)
        os.makedirs(path, exist_ok=True)
        self.conn = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def version(self) -> str:
        return sqlite3.sqlite_version

    def read(self) -> SqliteTxn:
        return SqliteTxn(self.conn, "BEGIN")

    def write(self) -> SqliteTxn:
        return SqliteTxn(self.conn, "BEGIN IMMEDIATE")

    def close(self) -> None:
        self.conn.close()


class SqliteTxn:
    """An SQLite transaction with py-lmdb's transaction methods."""

    def __init__(self, conn: sqlite3.Connection, begin: str) -> None:
        self._conn = conn
        self._begin = begin
        self._execute = conn.cursor().execute

    def __enter__(self) -> Self:
        self._execute(self._begin)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._execute("ROLLBACK" if exc_type else "COMMIT")

    def get(self, key: bytes, default: Any = None) -> Any:
        row = self._execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def put(self, key: bytes, value: bytes, append: bool = False) -> bool:
        self._execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        return True

    def delete(self, key: bytes) -> bool:
        return self._execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 1

    def cursor(self) -> SqliteCursor:
        return SqliteCursor(self._conn)


class SqliteCursor:
    """py-lmdb's cursor moves on an SQLite statement stepped one row at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._execute = conn.cursor().execute
        self._rows: sqlite3.Cursor | None = None
        self._item: tuple[bytes, bytes] | None = None

    def __iter__(self) -> sqlite3.Cursor:
        return self._execute("SELECT k, v FROM kv ORDER BY k")

    def iterprev(self) -> sqlite3.Cursor:
        return self._execute("SELECT k, v FROM kv ORDER BY k DESC")

    def set_range(self, key: bytes) -> bool:
        self._rows = self._execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k", (key,))
        self._item = self._rows.fetchone()
        return self._item is not None

    def next(self) -> bool:
        self._item = self._rows.fetchone() if self._rows is not None else None
        return self._item is not None

    def item(self) -> tuple[bytes, bytes] | None:
        return self._item


class SemidbmStore(Store):
    """semidbm: an append-only log with an in-memory index; unordered, one process.

    A write "transaction" has no atomicity; with sync it ends with `sync()`, an fsync.
    """

    name = "semidbm"
    module_name = "semidbm"
    features = frozenset({DURABLE})

    def __init__(self, path: str, sync: bool) -> None:
        super().__init__(path, sync)
        self.sync = sync
        self.db = self.open_db(path)

    def open_db(self, path: str) -> Any:
        return self.module.open(path, "c")

    def read(self) -> DbmTxn:
        return DbmTxn(self.db, sync=False)

    def write(self) -> DbmTxn:
        return DbmTxn(self.db, sync=self.sync)

    def close(self) -> None:
        self.db.close()


class DumbDbmStore(SemidbmStore):
    """dbm.dumb from the standard library: its sync() writes the index but never fsyncs."""

    name = "dbm.dumb"
    module_name = "dbm.dumb"
    features = frozenset()

    def open_db(self, path: str) -> Any:
        os.makedirs(path, exist_ok=True)
        return self.module.open(os.path.join(path, "kv"), "c")

    def version(self) -> str:
        return platform.python_version()


class DbmTxn:
    """A dict-like dbm behind py-lmdb's transaction methods."""

    def __init__(self, db: Any, sync: bool) -> None:
        self._db = db
        self._sync = sync

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sync:
            self._db.sync()

    def get(self, key: bytes, default: Any = None) -> Any:
        try:
            return self._db[key]
        except KeyError:
            return default

    def put(self, key: bytes, value: bytes, append: bool = False) -> bool:
        self._db[key] = value
        return True

    def delete(self, key: bytes) -> bool:
        try:
            del self._db[key]
        except KeyError:
            return False
        return True


STORES: dict[str, type[Store]] = {
    cls.name: cls for cls in (KvmmStore, LmdbStore, SqliteStore, SemidbmStore, DumbDbmStore)
}
# kvmm as committed at --kvmm-base's revision: the same class, run by children whose
# KVMM_BENCH_SRC names that revision's copy.
BASE = "kvmm-base"
STORES[BASE] = KvmmStore


# --------------------------------------------------------------------------- workloads
# Each returns the number of operations it timed (µs/op = time / ops), or a `Measured`
# when it times itself. It raises CheckError when the store gave a wrong answer.


@dataclass
class Measured:
    """A workload's own timing, for one whose wall time is not the thing measured."""

    ops: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def fillseq(store: Store, data: Data) -> int:
    """Sorted keys into an empty store, one write transaction."""
    with store.write() as txn:
        put = txn.put
        for key, value in data.seq_items:
            put(key, value)
    return data.n


def fillseq_append(store: Store, data: Data) -> int:
    """fillseq with append=True (LMDB's MDB_APPEND); a plain put for the other stores."""
    with store.write() as txn:
        put = txn.put
        for key, value in data.seq_items:
            put(key, value, append=True)
    return data.n


def fillrandom(store: Store, data: Data) -> int:
    """Shuffled keys into an empty store, one write transaction."""
    with store.write() as txn:
        put = txn.put
        for key, value in data.random_items:
            put(key, value)
    return data.n


def overwrite(store: Store, data: Data) -> int:
    """Every existing key rewritten with a new value, random order, one transaction."""
    with store.write() as txn:
        put = txn.put
        for key, value in data.overwrite_items:
            put(key, value)
    return data.n


def readrandom(store: Store, data: Data) -> int:
    """txn.get of every key in random order, one read transaction."""
    found = 0
    with store.read() as txn:
        get = txn.get
        for key in data.read_keys:
            if get(key) is not None:
                found += 1
    expect(found, data.n, "keys found")
    return data.n


def readseq(store: Store, data: Data) -> int:
    """A cursor over everything, first to last: `for key, value in cursor`."""
    count = 0
    with store.read() as txn:
        for _key, _value in txn.cursor():
            count += 1
    expect(count, data.n, "items scanned")
    return data.n


def readreverse(store: Store, data: Data) -> int:
    """A cursor over everything, last to first: `cursor.iterprev()`."""
    count = 0
    with store.read() as txn:
        for _key, _value in txn.cursor().iterprev():
            count += 1
    expect(count, data.n, "items scanned")
    return data.n


def rangescan(store: Store, data: Data) -> int:
    """set_range at a random key, then next() to read RANGE_LEN items; op = one scan."""
    count = 0
    with store.read() as txn:
        cursor = txn.cursor()
        set_range, next_, item = cursor.set_range, cursor.next, cursor.item
        for start in data.range_starts:
            if not set_range(start):
                continue
            item()
            count += 1
            for _ in range(RANGE_LEN - 1):
                if not next_():
                    break
                item()
                count += 1
    expect(count, len(data.range_starts) * min(RANGE_LEN, data.n), "items scanned")
    return len(data.range_starts)


def mixed(store: Store, data: Data) -> int:
    """90% get, 10% put of random existing keys, in write transactions of 100 ops."""
    found = gets = 0
    for batch in data.mixed_batches:
        with store.write() as txn:
            get, put = txn.get, txn.put
            for key, value in batch:
                if value is None:
                    gets += 1
                    if get(key) is not None:
                        found += 1
                else:
                    put(key, value)
    expect(found, gets, "keys found")
    return sum(map(len, data.mixed_batches))


def delete(store: Store, data: Data) -> int:
    """Every key deleted in random order, one write transaction."""
    deleted = 0
    with store.write() as txn:
        delete = txn.delete
        for key in data.delete_keys:
            if delete(key):
                deleted += 1
    expect(deleted, data.n, "keys deleted")
    return data.n


def dup_fill(store: Store, data: Data) -> int:
    """dupsort: every (key, value) pair, in random order, in one write transaction."""
    db = store.dup_db()
    with store.write() as txn:
        put = txn.put
        for key, value in data.dup_items:
            put(key, value, db=db)
    return len(data.dup_items)


def dup_get(store: Store, data: Data) -> Measured:
    """dupsort: set_key_dup on every pair in random order; op = one lookup. The fill
    before it is not timed."""
    dup_fill(store, data)
    db = store.dup_db()
    started = time.perf_counter()
    found = 0
    with store.read() as txn:
        seek = txn.cursor(db=db).set_key_dup
        for key, value in data.dup_items:
            found += seek(key, value)
    seconds = time.perf_counter() - started
    expect(found, len(data.dup_items), "pairs found")
    return Measured(ops=found, seconds=seconds)


def dup_scan(store: Store, data: Data) -> Measured:
    """dupsort: set_key then iternext_dup over each key's values, keys in random order;
    op = one value read. The fill before it is not timed."""
    dup_fill(store, data)
    db = store.dup_db()
    started = time.perf_counter()
    count = 0
    with store.read() as txn:
        cursor = txn.cursor(db=db)
        for key in data.dup_keys:
            cursor.set_key(key)
            for _ in cursor.iternext_dup():
                count += 1
    seconds = time.perf_counter() - started
    expect(count, len(data.dup_items), "values scanned")
    return Measured(ops=count, seconds=seconds)


def put_txn(items: list[tuple[bytes, bytes]], store: Store) -> int:
    """One put per write transaction; op = one committed transaction."""
    for key, value in items:
        with store.write() as txn:
            txn.put(key, value)
    return len(items)


def put_txn_nosync(store: Store, data: Data) -> int:
    """put_txn on a store opened with sync off: commits survive a process crash only."""
    return put_txn(data.txn_items, store)


def put_txn_sync(store: Store, data: Data) -> int:
    """put_txn on a store opened with sync on: each commit is durable when it returns."""
    return put_txn(data.sync_items, store)


def readers_beside_writer(readers: int, store: Store, data: Data) -> Measured:
    """`readers` processes do readrandom while this process writes; op = one reader get.

    Readers (started with `spawn`) get READER_TXN_OPS keys per read transaction, so they
    follow the writer's commits, and pass over all keys until READER_MIN_SECONDS went by;
    the writer commits one overwrite per transaction until every reader is done.
    Reported: the readers' time per get.
    """
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(readers + 1)
    done = ctx.Value("i", 0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=reader_main,
            args=(store.name, store.path, data.config, index, readers, ready, done, results),
        )
        for index in range(readers)
    ]
    for proc in procs:
        proc.start()
    try:
        try:
            ready.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass  # a reader failed before it started: its report says why
        writes = 0
        items = data.overwrite_items
        started = time.perf_counter()
        while done.value < readers:
            key, value = items[writes % len(items)]
            with store.write() as txn:
                txn.put(key, value)
            writes += 1
            if writes % 100 == 0 and not all(proc.is_alive() for proc in procs):
                break
        write_seconds = time.perf_counter() - started
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    errors = [report["error"] for report in reports if "error" in report]
    if errors:
        raise CheckError(f"reader failed: {errors[0]}")
    for report in reports:
        expect(report["found"], report["ops"], "keys found by a reader")
    return Measured(
        ops=sum(report["ops"] for report in reports),
        seconds=sum(report["seconds"] for report in reports),
        extra={
            "writer_txns": writes,
            "writer_us_per_txn": write_seconds / writes * 1e6 if writes else None,
        },
    )


def reader_main(
    store_name: str,
    path: str,
    config: dict[str, Any],
    index: int,
    readers: int,
    ready: Any,
    done: Any,
    results: Any,
) -> None:
    """A reader process of readers_Np: sends {"ops", "found", "seconds"} or {"error"}.

    Reader `index` of `readers` starts its pass at its own share of the keys."""
    report: dict[str, Any] = {}
    try:
        data = prepared(config)
        shift = index * data.n // readers
        keys = data.read_keys[shift:] + data.read_keys[:shift]
        batches = [keys[i : i + READER_TXN_OPS] for i in range(0, len(keys), READER_TXN_OPS)]
        store = STORES[store_name](path, sync=False)
        ready.wait(timeout=300)
        found = ops = 0
        started = time.perf_counter()
        while ops == 0 or time.perf_counter() - started < READER_MIN_SECONDS:
            for batch in batches:
                with store.read() as txn:
                    get = txn.get
                    for key in batch:
                        if get(key) is not None:
                            found += 1
            ops += len(keys)
        report = {"ops": ops, "found": found, "seconds": time.perf_counter() - started}
        store.close()
    except Exception as exc:  # noqa: BLE001 - sent to the parent, which fails the workload
        report = {"error": f"{type(exc).__name__}: {exc}"}
        ready.abort()
    finally:
        with done.get_lock():
            done.value += 1
        results.put(report)


def expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise CheckError(f"{what}: {got}, expected {want}")


# Untimed checks run after a workload: a fast wrong answer must not pass as a result.


def verify_values(store: Store, data: Data, values: list[bytes]) -> None:
    with store.read() as txn:
        for i in data.sample:
            got = txn.get(data.keys[i])
            if got is None or bytes(got) != values[i]:
                raise CheckError(f"key {data.keys[i].hex()}: wrong value after the run")


def verify_filled(store: Store, data: Data) -> None:
    verify_values(store, data, data.values)


def verify_overwritten(store: Store, data: Data) -> None:
    verify_values(store, data, data.new_values)


def verify_forward(store: Store, data: Data) -> None:
    with store.read() as txn:
        if [bytes(key) for key, _value in txn.cursor()] != data.keys:
            raise CheckError("forward scan: keys out of order")


def verify_reverse(store: Store, data: Data) -> None:
    with store.read() as txn:
        if [bytes(key) for key, _value in txn.cursor().iterprev()] != data.keys[::-1]:
            raise CheckError("reverse scan: keys out of order")


def verify_empty(store: Store, data: Data) -> None:
    with store.read() as txn:
        if any(txn.get(data.keys[i]) is not None for i in data.sample):
            raise CheckError("a deleted key is still there")


@dataclass(frozen=True)
class Workload:
    """A workload and the store state it runs on.

    on: "new" (an empty store, sync off), "new_sync" (an empty store, sync on) or
    "filled" (the shared store holding every key; made by fillrandom, or by an untimed
    fillrandom when that did not run). `leaves_filled`: the store it filled becomes the
    shared one; `empties`: it leaves the shared store empty, so the next needs a new one.
    """

    name: str
    run: Callable[[Store, Data], int | Measured]
    on: str = "new"
    needs: frozenset[str] = frozenset()
    verify: Callable[[Store, Data], None] | None = None
    leaves_filled: bool = False
    empties: bool = False


WORKLOADS = (
    Workload("fillseq", fillseq, verify=verify_filled),
    Workload("fillseq_append", fillseq_append, verify=verify_filled),
    Workload("fillrandom", fillrandom, verify=verify_filled, leaves_filled=True),
    Workload("overwrite", overwrite, on="filled", verify=verify_overwritten),
    Workload("readrandom", readrandom, on="filled"),
    Workload("readseq", readseq, on="filled", needs=frozenset({ORDERED}), verify=verify_forward),
    Workload(
        "readreverse", readreverse, on="filled", needs=frozenset({ORDERED}), verify=verify_reverse
    ),
    Workload("rangescan", rangescan, on="filled", needs=frozenset({ORDERED})),
    Workload("mixed", mixed, on="filled"),
    Workload("delete", delete, on="filled", verify=verify_empty, empties=True),
    Workload("put_txn_nosync", put_txn_nosync),
    Workload("put_txn_sync", put_txn_sync, on="new_sync", needs=frozenset({DURABLE})),
    Workload(
        "readers_2p",
        partial(readers_beside_writer, 2),
        on="filled",
        needs=frozenset({PROCESSES}),
    ),
    Workload(
        "readers_4p",
        partial(readers_beside_writer, 4),
        on="filled",
        needs=frozenset({PROCESSES}),
    ),
    Workload("dup_fill", dup_fill, needs=frozenset({DUPSORT})),
    Workload("dup_get", dup_get, needs=frozenset({DUPSORT})),
    Workload("dup_scan", dup_scan, needs=frozenset({DUPSORT})),
)
WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS)


# --------------------------------------------------------------------------- child


def prepared(config: dict[str, Any]) -> Data:
    """The workloads' data, moved out of the cyclic GC's reach (``gc.freeze``).

    The data are lists of 10^6 entries, eight of them at --n 1000000. Left to the
    collector, every full collection that a store's own allocations trigger walks them
    all (about 0.15 s each at 10^6): a tax on the stores that allocate container objects
    (kvmm's decoded pages), paid for the harness's data, not the store's. py-lmdb and
    SQLite return bytes only and never trigger one. bench/README.md gives what this
    changed.
    """
    data = Data(**config)
    gc.collect()
    gc.freeze()
    return data


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure(workload: Workload, store: Store, data: Data) -> dict[str, Any]:
    """Run one workload on an open store, then its untimed check; its result entry."""
    gc.collect()
    started = time.perf_counter()
    outcome = workload.run(store, data)
    seconds = time.perf_counter() - started
    if not isinstance(outcome, Measured):
        outcome = Measured(ops=outcome, seconds=seconds)
    if workload.verify is not None:
        workload.verify(store, data)
    return {
        "us_per_op": outcome.seconds / outcome.ops * 1e6,
        "ops": outcome.ops,
        "seconds": outcome.seconds,
        **outcome.extra,
    }


def run_child(store_name: str, names: list[str], config: dict[str, Any], root: str) -> dict:
    """Run the named workloads, in WORKLOADS order, on one store; return the report."""
    store_cls = STORES[store_name]
    data = prepared(config)
    report: dict[str, Any] = {
        "store": store_name,
        "version": None,
        "results": {},
        "sizes": {},
        "rss_base_kib": max_rss_kib(),
    }
    made = 0

    def open_new(sync: bool) -> Store:
        nonlocal made
        made += 1
        store = store_cls(os.path.join(root, f"{made:02d}"), sync=sync)
        report["version"] = store.version()
        report["module_file"] = getattr(store.module, "__file__", None)
        return store

    def discard(store: Store) -> None:
        try:
            store.close()
        finally:
            shutil.rmtree(store.path, ignore_errors=True)

    # Warm-up, untimed: the first fill of a process pays for the page cache, the allocator
    # and lazy imports; without this the first row measured that instead of the store.
    try:
        warm = open_new(sync=False)
        try:
            fillrandom(warm, data)
        finally:
            discard(warm)
    except Exception:  # noqa: BLE001 - the workloads will fail too, and report it
        traceback.print_exc()

    filled: Store | None = None  # the shared store holding every key, when there is one
    for workload in WORKLOADS:
        if workload.name not in names:
            continue
        missing = workload.needs - store_cls.features
        if missing:
            report["results"][workload.name] = {"skipped": f"no {', '.join(sorted(missing))}"}
            continue
        store = None
        try:
            if workload.on != "filled":
                store = open_new(sync=workload.on == "new_sync")
            elif filled is None:
                store = open_new(sync=False)
                fillrandom(store, data)
                filled = store
            else:
                store = filled
            result = measure(workload, store, data)
        except Exception as exc:  # noqa: BLE001 - a store's failure is a result to report
            traceback.print_exc()
            report["results"][workload.name] = {"error": f"{type(exc).__name__}: {exc}"}
            filled = None  # its state is unknown now: the next workload starts afresh
        else:
            report["results"][workload.name] = result
            report["sizes"][workload.name] = store.size()
            print(
                f"  {store_name:8} {workload.name:15} {result['us_per_op']:10.3f} µs/op",
                file=sys.stderr,
                flush=True,
            )
            if workload.leaves_filled and filled is None:
                filled = store
            elif workload.empties:
                filled = None
        if store is not None and store is not filled:
            discard(store)
    if filled is not None:
        discard(filled)
    report["rss_peak_kib"] = max_rss_kib()
    if store_name in ("kvmm", BASE):
        report["kvmm_sha256"] = kvmm_hash(KVMM_SRC)
    return report


# --------------------------------------------------------------------------- parent


def run_store(
    store: str, args: argparse.Namespace, names: list[str], root: str, base_src: Path | None
) -> dict:
    """One child process running every workload on one store; its report, or an error.
    The child of BASE imports kvmm from ``base_src``."""
    env = dict(os.environ)
    if store == BASE and base_src is not None:
        env[KVMM_SRC_VAR] = str(base_src)
    workdir = tempfile.mkdtemp(prefix=f"{store}-", dir=root)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        store,
        "--n",
        str(args.n),
        "--value-size",
        str(args.value_size),
        "--seed",
        str(args.seed),
        "--txn-ops",
        str(args.txn_ops),
        "--sync-ops",
        str(args.sync_ops),
        "--workloads",
        ",".join(names),
        "--dir",
        workdir,
    ]
    try:
        proc = subprocess.run(
            command, stdout=subprocess.PIPE, text=True, timeout=args.timeout, check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"store": store, "error": f"timed out after {args.timeout} s"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"store": store, "error": f"child exited with status {proc.returncode}"}
    return json.loads(lines[-1])


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[dict]], names: list[str]) -> dict[str, dict]:
    """Per store: median µs/op per workload ("-" skipped, "ERR" failed), sizes, RSS."""
    summary: dict[str, dict] = {}
    for store, reports in runs.items():
        cells: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name in names:
            outcomes = [r.get("results", {}).get(name, {"error": r.get("error")}) for r in reports]
            failed = [o["error"] for o in outcomes if "error" in o]
            if failed:
                cells[name] = "ERR"
                errors[name] = failed[0]
            elif any("skipped" in o for o in outcomes):
                cells[name] = "-"
            else:
                cells[name] = median_or_none([o["us_per_op"] for o in outcomes])
        good = [r for r in reports if "error" not in r]
        summary[store] = {
            "version": next((r["version"] for r in good if r.get("version")), "?"),
            "us_per_op": cells,
            "errors": errors,
            "sizes": {
                name: median_or_none([r["sizes"][name] for r in good if name in r["sizes"]])
                for name in names
            },
            "rss_base_kib": median_or_none([r["rss_base_kib"] for r in good]),
            "rss_peak_kib": median_or_none([r["rss_peak_kib"] for r in good]),
        }
    return summary


def fmt_us(value: Any) -> str:
    if not isinstance(value, float):
        return "-" if value is None else str(value)
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(a: Any, b: Any) -> str:
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return f"{a / b:.2f}" if a / b < 10 else f"{a / b:.1f}"
    return "-"


def fmt_mib(value: float | None, unit: int) -> str:
    return "-" if value is None else f"{value * unit / 2**20:.1f}"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def kvmm_hash(src: Path) -> str:
    """sha256 of src/kvmm/*.py as they are now: which code was measured."""
    digest = hashlib.sha256()
    for path in sorted((src / "kvmm").rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def extract_kvmm(rev: str, src: Path) -> str:
    """kvmm/ as committed at `rev`, written under `src`; returns the full commit id."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    with tarfile.open(fileobj=io.BytesIO(git("archive", commit, "kvmm"))) as archive:
        archive.extractall(src, filter="data")
    return commit


def kvmm_source(rev: str | None, root: str) -> dict[str, Any]:
    """Which kvmm the children will measure, for the report.

    Without `rev`, this checkout's work tree. With `rev`, kvmm/ as committed there,
    extracted under `root`, and the children (which inherit os.environ) import that.
    """
    if rev is None:
        try:
            commit = git("rev-parse", "HEAD").decode().strip()
            changes = bool(git("status", "--porcelain", "--", "kvmm"))
        except (OSError, subprocess.CalledProcessError):
            commit, changes = "?", True
        src = ROOT
    else:
        src = Path(root, "kvmm-src")
        commit = extract_kvmm(rev, src)
        os.environ[KVMM_SRC_VAR] = str(src)
        changes = False
    return {"commit": commit, "uncommitted_changes": changes, "sha256_of_py_files": kvmm_hash(src)}


SIZE_ROWS = ("fillrandom", "overwrite", "delete")
# Share of the machine's CPU time used by processes other than this run's, above which the
# table warns that they competed with the benchmark (a quiet machine shows about 1%).
BUSY_SHARE = 0.10


def machine_cpu_seconds() -> float | None:
    """CPU-seconds every process of the machine has used since boot (Linux /proc/stat)."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait; the rest is user, system, irq, steal...
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its waited-for descendants (children, readers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def other_cpu_share(started: tuple[float, float | None, float]) -> float | None:
    """Share of all CPUs that other processes used since `started`: how busy the machine was."""
    wall, machine_cpu, own_cpu = started
    now = machine_cpu_seconds()
    if now is None or machine_cpu is None:
        return None
    other = (now - machine_cpu) - (own_cpu_seconds() - own_cpu)
    return max(0.0, other) / ((time.perf_counter() - wall) * (os.cpu_count() or 1))


def busy_line(share: float | None) -> str:
    if share is None:
        return "other processes' CPU use during the run: unknown"
    line = f"other processes used {share:.0%} of the CPUs during the run"
    if share > BUSY_SHARE:
        line += ": BUSY, the times are inflated"
    return line


def format_table(summary: dict[str, dict], names: list[str], meta: dict[str, Any]) -> str:
    stores = list(summary)
    ratios = [(a, b) for a, b in (("kvmm", "lmdb"), ("kvmm", BASE)) if a in summary and b in summary]
    head = ["workload (µs/op)", *stores] + [f"{a}/{b.removeprefix('kvmm-')}" for a, b in ratios]
    rows = []
    for name in names:
        cells = [summary[s]["us_per_op"][name] for s in stores]
        row = [name, *map(fmt_us, cells)]
        for a, b in ratios:
            row.append(fmt_ratio(summary[a]["us_per_op"][name], summary[b]["us_per_op"][name]))
        rows.append(row)
    for name in SIZE_ROWS:
        if name in names:
            label = f"file MiB after {name}"
            rows.append([label, *(fmt_mib(summary[s]["sizes"][name], 1) for s in stores)])
    rows.append(
        ["RSS MiB before open", *(fmt_mib(summary[s]["rss_base_kib"], 1024) for s in stores)]
    )
    rows.append(["peak RSS MiB", *(fmt_mib(summary[s]["rss_peak_kib"], 1024) for s in stores)])
    widths = [max(len(str(r[i])) for r in [head, *rows] if i < len(r)) for i in range(len(head))]
    lines = [
        (
            f"n={meta['n']} key_size={KEY.size} value_size={meta['value_size']}"
            f" reps={meta['reps']} seed={meta['seed']} (median of reps; µs/op, lower is better)"
        ),
        (
            f"machine: {meta['machine']['cpu']}, {meta['machine']['cpus']} CPUs,"
            f" {meta['machine']['platform']}, Python {meta['machine']['python']}"
        ),
        busy_line(meta["other_cpu_share"]),
        "versions: " + ", ".join(f"{s} {summary[s]['version']}" for s in stores),
        (
            f"kvmm source: commit {meta['kvmm_source']['commit'][:12]}"
            + (" + uncommitted changes" if meta["kvmm_source"]["uncommitted_changes"] else "")
            + f", sha256 of kvmm/*.py {meta['kvmm_source']['sha256_of_py_files'][:12]}"
            + (
                " (CHANGED between repetitions: kvmm's rows mix versions)"
                if meta["kvmm_source"]["changed_during_run"]
                else ""
            )
        ),
        *(
            [f"kvmm-base source: commit {meta['kvmm_base']['commit'][:12]}"]
            if "kvmm_base" in meta
            else []
        ),
        "",
    ]
    for row in [head, *rows]:
        lines.append(
            "  ".join(
                str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                for i, c in enumerate(row)
            ).rstrip()
        )
    notes = [
        f"{store} {name}: {error}"
        for store in stores
        for name, error in summary[store]["errors"].items()
    ]
    if notes:
        lines += ["", "errors:", *(f"  {note}" for note in notes)]
    return "\n".join(lines)


def plot(summary: dict[str, dict], names: list[str], meta: dict[str, Any], path: Path) -> None:
    """A bar chart of each store's time over py-lmdb's, per workload, on a log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        print("--plot: matplotlib is not installed; no chart written", file=sys.stderr)
        return
    if "lmdb" not in summary:
        print("--plot: ratios are to lmdb, which did not run; no chart written", file=sys.stderr)
        return
    base = summary["lmdb"]["us_per_op"]
    others = [s for s in summary if s != "lmdb"]
    shown = [n for n in names if isinstance(base[n], float)]
    fig, ax = plt.subplots(figsize=(max(8, len(shown) * 0.9), 5))
    width = 0.8 / max(1, len(others))
    for i, store in enumerate(others):
        cells = summary[store]["us_per_op"]
        ratios = [cells[n] / base[n] if isinstance(cells[n], float) else nan for n in shown]
        bars = ax.bar([x + i * width for x in range(len(shown))], ratios, width, label=store)
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([x + width * (len(others) - 1) / 2 for x in range(len(shown))])
    ax.set_xticklabels(shown, rotation=30, ha="right")
    ax.set_ylabel("time per op / py-lmdb's (log; < 1 is faster)")
    ax.set_title(f"n={meta['n']}, value size {meta['value_size']} B, median of {meta['reps']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"chart: {path}", file=sys.stderr)


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    allowed = list(allowed)
    items = allowed if text == "all" else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark kvmm against py-lmdb, SQLite and semidbm (see bench/README.md)."
    )
    parser.add_argument("--n", type=int, default=100_000, help="keys (default 100000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the median is shown")
    parser.add_argument(
        "--stores", default=",".join(DEFAULT_STORES), help=f"comma list of {', '.join(ALL_STORES)}"
    )
    parser.add_argument(
        "--workloads", default="all", help=f"'all' or a comma list of {', '.join(WORKLOAD_NAMES)}"
    )
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of keys' order and values")
    parser.add_argument(
        "--txn-ops", type=int, default=None, help="put_txn_nosync ops (min(n, 10000))"
    )
    parser.add_argument(
        "--sync-ops", type=int, default=None, help="put_txn_sync ops (min(n, 1000))"
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON, and the table as .txt")
    parser.add_argument("--plot", action="store_true", help="write a PNG chart beside --out")
    parser.add_argument("--dir", help="where the stores' files go (default: the temp dir)")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds allowed to one child (3600)"
    )
    parser.add_argument(
        "--kvmm-rev",
        help="measure kvmm as committed at this git revision (e.g. HEAD), not the work tree",
    )
    parser.add_argument(
        "--kvmm-base",
        help="also measure kvmm as committed at this revision, as the store kvmm-base"
        " (alternating with the others), and show kvmm/base",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or args.reps < 1 or args.value_size < 0:
        parser.error("--n and --reps must be >= 1, --value-size >= 0")
    if args.txn_ops is None:
        args.txn_ops = min(args.n, 10_000)
    if args.sync_ops is None:
        args.sync_ops = min(args.n, 1_000)
    return args


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of Data(): what a child or reader process rebuilds its data from."""
    return {
        "n": args.n,
        "value_size": args.value_size,
        "seed": args.seed,
        "txn_ops": args.txn_ops,
        "sync_ops": args.sync_ops,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = parse_list(args.workloads, WORKLOAD_NAMES, "workloads")
    if args.child:
        report = run_child(args.child, names, config_of(args), args.dir)
        print(json.dumps(report))
        return 0
    stores = parse_list(args.stores, ALL_STORES, "stores")
    if "semidbm" in stores and importlib.util.find_spec("semidbm") is None:
        print("semidbm is not installed (pip install semidbm): using dbm.dumb", file=sys.stderr)
        stores = [("dbm.dumb" if s == "semidbm" else s) for s in stores]
    meta = {**config_of(args), "reps": args.reps, "machine": machine(), "date": time.ctime()}
    started = (time.perf_counter(), machine_cpu_seconds(), own_cpu_seconds())
    runs: dict[str, list[dict]] = {store: [] for store in stores}
    with tempfile.TemporaryDirectory(prefix="kvmm-bench-", dir=args.dir) as root:
        meta["kvmm_source"] = kvmm_source(args.kvmm_rev, root)
        base_src = None
        if args.kvmm_base:
            base_src = Path(root, "kvmm-base-src")
            meta["kvmm_base"] = {
                "commit": extract_kvmm(args.kvmm_base, base_src),
                "sha256_of_py_files": kvmm_hash(base_src),
            }
            where = stores.index("kvmm") + 1 if "kvmm" in stores else 0
            stores.insert(where, BASE)
            runs = {store: [] for store in stores}
        for rep in range(args.reps):
            for store in stores:  # stores alternate within a repetition: drift hits all
                print(f"rep {rep + 1}/{args.reps}: {store}", file=sys.stderr, flush=True)
                runs[store].append(run_store(store, args, names, root, base_src))
    hashes = [r["kvmm_sha256"] for r in runs.get("kvmm", []) if "kvmm_sha256" in r]
    meta["kvmm_source"]["changed_during_run"] = len(set(hashes)) > 1
    meta["other_cpu_share"] = other_cpu_share(started)
    summary = summarize(runs, names)
    table = format_table(summary, names, meta)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"meta": meta, "workloads": names, "summary": summary, "runs": runs}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".txt").write_text(table + "\n")
    if args.plot:
        target = args.out.with_suffix(".png") if args.out else Path("bench-ratios.png")
        plot(summary, names, meta, target)
    return 1 if any(s["errors"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
