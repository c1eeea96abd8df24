"""The leanest pure-Python B+tree lookup and insert, timed beside py-lmdb's get and put.

kvmm's reads and writes walk a tree of decoded pages: Python lists of ``bytes`` keys,
searched with ``bisect``. This script builds the same shape of tree (leaves of 33
entries, branches of 140 children: what 4 KiB pages of 16-byte keys and 100-byte
values hold) out of nothing but lists, with none of kvmm's work around the walk
(no transaction, no page cache, no copy-on-write, no size accounting, no commit),
and times:

- ``lookup``: a function that descends it to a key's value, over every key in random
  order, against py-lmdb's ``txn.get`` on a store holding the same records;
- ``insert``: a function that descends and inserts, splitting full nodes by count,
  filling an empty tree with the keys in random order, against py-lmdb's ``txn.put``
  of the same keys into an empty store in one transaction (commit included).

Keys are the benchmark's (``struct.pack(">QQ", 0, i)``). The ratios are a floor: a
store built of Python objects pays at least this much over py-lmdb, whatever else it
does.

    python bench/pyfloor.py [--n 1000000] [--reps 3]

Prints the best of ``--reps`` runs, in µs per operation.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import tempfile
import time
from bisect import bisect_left, bisect_right

LEAF = 33  # entries of a leaf page: 16-byte keys, 100-byte values
FANOUT = 140  # children of a branch page with 16-byte keys
VALUE = b"v" * 100


def keys_of(n: int) -> list[bytes]:
    key = struct.Struct(">QQ")
    return [key.pack(0, i) for i in range(n)]


def build(keys: list[bytes]):
    """A tree over sorted ``keys``: (root, depth). A branch is (keys, children), its
    first key b""; a leaf is (keys, values), each value its own object. Keys and
    values are made in key order, as a scan would decode them, so each node's
    objects lie together in memory: the best case for the CPU's caches."""
    level = []  # (node, the smallest key under it)
    for at in range(0, len(keys), LEAF):
        chunk = keys[at:at + LEAF]
        level.append(((chunk, [VALUE[:-1] + key[-1:] for key in chunk]), chunk[0]))
    depth = 1
    while len(level) > 1:
        up = []
        for at in range(0, len(level), FANOUT):
            kids = level[at:at + FANOUT]
            separators = [b""] + [low for _kid, low in kids[1:]]
            up.append(((separators, [kid for kid, _low in kids]), kids[0][1]))
        level = up
        depth += 1
    return level[0][0], depth


def lookup(root, depth: int, key: bytes):
    node = root
    for _ in range(depth - 1):
        keys, kids = node
        node = kids[bisect_right(keys, key) - 1]
    keys, values = node
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return values[i]
    return None


def time_lookups(keys: list[bytes], order: list[bytes]) -> float:
    root, depth = build(keys)
    start = time.perf_counter()
    for key in order:
        lookup(root, depth, key)
    took = time.perf_counter() - start
    missing = sum(1 for key in order if lookup(root, depth, key) is None)
    if missing:
        raise SystemExit(f"pyfloor: the lookup missed {missing} keys")
    return took / len(order) * 1e6


class Tree:
    """A B+tree of lists that splits nodes by count: the insert floor."""

    def __init__(self):
        self.root = ([], [])
        self.depth = 1

    def insert(self, key: bytes, value: bytes) -> None:
        node = self.root
        path = []
        for _ in range(self.depth - 1):
            keys, kids = node
            i = bisect_right(keys, key) - 1
            path.append((node, i))
            node = kids[i]
        keys, values = node
        i = bisect_left(keys, key)
        keys.insert(i, key)
        values.insert(i, value)
        if len(keys) > LEAF:
            self._split(path, node, LEAF)

    def _split(self, path: list, node, most: int) -> None:
        while len(node[0]) > most:
            half = len(node[0]) // 2
            right = (node[0][half:], node[1][half:])
            sep = right[0][0]
            del node[0][half:]
            del node[1][half:]
            if not path:
                self.root = ([b"", sep], [node, right])
                self.depth += 1
                return
            node, i = path.pop()
            node[0].insert(i + 1, sep)
            node[1].insert(i + 1, right)
            most = FANOUT


def time_inserts(order: list[bytes]) -> float:
    tree = Tree()
    insert = tree.insert
    start = time.perf_counter()
    for key in order:
        insert(key, VALUE)
    took = time.perf_counter() - start
    missing = sum(1 for key in order if lookup(tree.root, tree.depth, key) is None)
    if missing:
        raise SystemExit(f"pyfloor: {missing} inserted keys are not found")
    return took / len(order) * 1e6


def lmdb_times(directory: str, keys: list[bytes], order: list[bytes]) -> tuple:
    """py-lmdb: (put of ``order`` into an empty store in one transaction, get of
    ``order``), µs per key."""
    import lmdb

    env = lmdb.open(os.path.join(directory, "lmdb"), sync=False, map_size=1 << 36)
    start = time.perf_counter()
    with env.begin(write=True) as txn:
        put = txn.put
        for key in order:
            put(key, VALUE)
    puts = time.perf_counter() - start
    with env.begin() as txn:
        get = txn.get
        start = time.perf_counter()
        for key in order:
            get(key)
        gets = time.perf_counter() - start
    env.close()
    return puts / len(order) * 1e6, gets / len(order) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records")
    parser.add_argument("--reps", type=int, default=3, help="runs; the best is shown")
    args = parser.parse_args()
    keys = keys_of(args.n)
    order = keys[:]
    random.Random(1).shuffle(order)
    best = {"lookup": [], "insert": [], "lmdb put": [], "lmdb get": []}
    for _ in range(args.reps):
        best["lookup"].append(time_lookups(keys, order))
        best["insert"].append(time_inserts(order))
        with tempfile.TemporaryDirectory() as directory:
            puts, gets = lmdb_times(directory, keys, order)
        best["lmdb put"].append(puts)
        best["lmdb get"].append(gets)
    b = {name: min(times) for name, times in best.items()}
    print(f"n={args.n}, best of {args.reps} (µs per key)")
    print(f"lookup floor {b['lookup']:.3f}  py-lmdb get {b['lmdb get']:.3f}  "
          f"ratio {b['lookup'] / b['lmdb get']:.2f}")
    print(f"insert floor {b['insert']:.3f}  py-lmdb put {b['lmdb put']:.3f}  "
          f"ratio {b['insert'] / b['lmdb put']:.2f}")


if __name__ == "__main__":
    main()
