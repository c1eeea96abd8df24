"""The system calls of a one-put commit, timed alone, beside py-lmdb's one-put transaction.

A kvmm commit of one put in a three-level tree takes the writer lock (an ``fcntl``
lock on the lock file), writes three pages and a meta, and releases the lock. This
script makes exactly those calls on a scratch file, with no Python work around them,
so the figure is the floor the commit recipe puts under a one-put transaction on
this machine; then it times py-lmdb's whole one-put transaction on a 10^5-record store.

    python bench/floor.py [--n 20000] [--reps 5]

Prints the best of ``--reps`` loops of ``--n`` iterations, in µs per iteration.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import tempfile
import time
import zlib

PAGE = 4096


def syscalls(directory: str, n: int) -> float:
    """Lock, three page writes at random pages of a 64 MiB file, a meta write, unlock."""
    fd = os.open(os.path.join(directory, "data"), os.O_RDWR | os.O_CREAT)
    lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 64 << 20)
    page = bytes(PAGE)
    rng = random.Random(1)
    offsets = [rng.randrange(2, (64 << 20) // PAGE) * PAGE for _ in range(4096)]
    start = time.perf_counter()
    for i in range(n):
        fcntl.lockf(lock, fcntl.LOCK_EX, 1, 0)
        os.pwrite(fd, page, offsets[i % 4096])
        os.pwrite(fd, page, offsets[(i + 1) % 4096])
        os.pwrite(fd, page, offsets[(i + 2) % 4096])
        os.pwrite(fd, page, PAGE * (i & 1))
        fcntl.lockf(lock, fcntl.LOCK_UN, 1, 0)
    elapsed = time.perf_counter() - start
    os.close(fd)
    os.close(lock)
    return elapsed / n * 1e6


def crc(n: int) -> float:
    page = bytes(range(256)) * (PAGE // 256)
    start = time.perf_counter()
    for _ in range(n):
        zlib.crc32(page)
    return (time.perf_counter() - start) / n * 1e6


def lmdb_one_put(directory: str, n: int) -> float:
    import lmdb

    env = lmdb.open(os.path.join(directory, "lmdb"), sync=False, map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(100_000):
            txn.put(b"%016d" % i, b"v" * 100)
    start = time.perf_counter()
    for i in range(n):
        with env.begin(write=True) as txn:
            txn.put(b"%016d" % (i * 7 % 100_000), b"w" * 100)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="iterations per loop")
    parser.add_argument("--reps", type=int, default=5, help="loops; the best is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        calls = min(syscalls(directory, args.n) for _ in range(args.reps))
        check = min(crc(args.n) for _ in range(args.reps))
        one_put = min(lmdb_one_put(directory, args.n) for _ in range(args.reps))
    print(f"lock, 3 page pwrites, meta pwrite, unlock: {calls:.2f} µs")
    print(f"CRC-32 of a {PAGE}-byte page:               {check:.2f} µs")
    print(f"py-lmdb one-put transaction (10^5 records): {one_put:.2f} µs")


if __name__ == "__main__":
    main()
