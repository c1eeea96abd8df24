#!/usr/bin/env python3
"""What the cyclic garbage collector costs a large write transaction.

Builds a store of --n records (16-byte random keys, 100-byte values, filled in key
order with ``append=True``, which takes seconds where a random fill takes minutes; its
leaves are full, so most of the puts below split one, which a random fill's do not),
then runs --txns write transactions of --puts new random keys each, as
``bench/scale.py``'s fill does at 10^7, and prints for each transaction: µs per put and
per commit, how much of each the collector took (``gc.callbacks``), its collections by
generation, and the objects it tracked half way through the puts.

    python bench/gccost.py --n 1e7          # about a minute, and 2 GiB of disk

A dirty leaf is three tracked objects (its node and the lists of its keys and values),
and a full collection visits every entry of every list.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kvmm


class Collections:
    """Count and time the collector's runs, by generation."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        g = info["generation"]
        self.runs[g] += 1
        self.seconds[g] += time.perf_counter() - self._started

    def reset(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def total(self) -> float:
        return sum(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=float, default=1e6, help="records in the store (1e6)")
    parser.add_argument("--puts", type=int, default=100_000, help="puts per transaction")
    parser.add_argument("--txns", type=int, default=3, help="transactions timed")
    parser.add_argument("--dir", default=None, help="where the store goes (temp dir)")
    args = parser.parse_args()
    n = int(args.n)
    rng = random.Random(1)
    value = rng.randbytes(100)
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        env = kvmm.open(os.path.join(root, "db"), sync=False)
        keys = sorted(rng.randbytes(16) for _ in range(n))
        for start in range(0, n, 1_000_000):
            with env.begin(write=True) as txn:
                for key in keys[start : start + 1_000_000]:
                    txn.put(key, value, append=True)
        del keys
        stat = env.stat()
        print(f"store: {stat['entries']:,} records, depth {stat['depth']}, "
              f"{stat['leaf_pages']:,} leaves")
        gcs = Collections()
        for t in range(args.txns):
            keys = [rng.randbytes(16) for _ in range(args.puts)]
            gcs.reset()
            started = time.perf_counter()
            tracked = 0
            with env.begin(write=True) as txn:
                for i, key in enumerate(keys):
                    txn.put(key, value)
                    if i == args.puts // 2:
                        tracked = len(gc.get_objects())
                puts = time.perf_counter() - started
                in_puts = gcs.total()
                runs = list(gcs.runs)
                seconds = list(gcs.seconds)
            done = time.perf_counter() - started
            per = 1e6 / args.puts
            print(f"txn {t + 1}: puts {puts * per:.1f} µs/put (collector {in_puts * per:.1f}), "
                  f"commit {(done - puts) * per:.1f} µs/put "
                  f"(collector {(gcs.total() - in_puts) * per:.1f}); during the puts "
                  + ", ".join(f"gen{g} {runs[g]} x {seconds[g] / max(runs[g], 1) * 1e3:.2f} ms"
                              for g in range(3))
                  + f"; {tracked:,} objects tracked half way")
        env.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
