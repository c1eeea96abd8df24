"""One put per write transaction, sync=False: kvmm against py-lmdb, split into phases.

    python bench/smalltxn.py --n 100000 --batches 7 --batch 2000

fills a store with ``--n`` records (16-byte keys, 100-byte values, random order, one
transaction), then times ``--batches`` batches of ``--batch`` one-put transactions
(overwrites of random existing keys) and prints the median and best batch in µs per
transaction, for py-lmdb and kvmm in the same process. For kvmm it then times the three
phases of the same kind of transaction separately (``begin``, ``put``, ``commit``), each
summed over one more batch.

This is the row ``put_txn_nosync`` of bench.py (issue #2's "one put per transaction"),
made quick to repeat while working on it: medians of batches move less than one run of
10,000 on a VM whose timings drift.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

import lmdb

import kvmm


def filled(module, path: str, items: list, **options):
    env = module.open(path, sync=False, **options)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    return env


def batches(env, items: list, count: int, size: int) -> list[float]:
    """µs per one-put transaction, for each of ``count`` batches of ``size``."""
    out = []
    for b in range(count):
        batch = items[b * size : (b + 1) * size]
        started = time.perf_counter()
        for key, value in batch:
            with env.begin(write=True) as txn:
                txn.put(key, value)
        out.append((time.perf_counter() - started) / len(batch) * 1e6)
    return out


def phases(env, items: list) -> tuple[float, float, float]:
    """µs per transaction spent in begin, put and commit."""
    clock = time.perf_counter
    begin = put = commit = 0.0
    for key, value in items:
        t0 = clock()
        txn = env.begin(write=True)
        t1 = clock()
        txn.put(key, value)
        t2 = clock()
        txn.commit()
        t3 = clock()
        begin += t1 - t0
        put += t2 - t1
        commit += t3 - t2
    n = len(items) / 1e6
    return begin / n, put / n, commit / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="records (100,000)")
    parser.add_argument("--batches", type=int, default=7, help="timed batches (7)")
    parser.add_argument("--batch", type=int, default=2000, help="transactions a batch (2,000)")
    parser.add_argument("--dir", help="where the stores go (default: the temp dir)")
    args = parser.parse_args()

    rng = random.Random(1)
    items = [(b"%016d" % i, rng.randbytes(100)) for i in range(args.n)]
    rng.shuffle(items)
    writes = [items[rng.randrange(args.n)] for _ in range((args.batches + 1) * args.batch)]
    root = tempfile.mkdtemp(prefix="kvmm-smalltxn-", dir=args.dir)
    try:
        results = {}
        for name, module, options in (("lmdb", lmdb, {"map_size": 1 << 32}), ("kvmm", kvmm, {})):
            env = filled(module, os.path.join(root, name), items, **options)
            times = batches(env, writes, args.batches, args.batch)
            results[name] = statistics.median(times)
            print(f"{name:5s} median {statistics.median(times):7.2f} µs  best {min(times):7.2f} µs"
                  f"  per one-put transaction ({args.batches} batches of {args.batch})")
            if module is kvmm:
                begin, put, commit = phases(env, writes[-args.batch :])
                print(f"kvmm  begin {begin:.1f}  put {put:.1f}  commit {commit:.1f} µs")
            env.close()
        print(f"kvmm/lmdb {results['kvmm'] / results['lmdb']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
