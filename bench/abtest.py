#!/usr/bin/env python3
"""Two revisions of kvmm in one process, taking turns: the A/B test for small changes.

On a shared machine two runs of bench.py minutes apart differ by 10-30%, more than
the changes worth measuring. This script imports the kvmm package of each revision
under its own name (``kvmm_a``, ``kvmm_b``: kvmm imports itself only relatively), then
for every repetition, in alternating order, opens a fresh store with each and times the
same workloads on the same data. Both see the same machine at nearly the same moments,
so their ratio is steady where their absolute figures are not.

    python bench/abtest.py --a 5caac88 --b HEAD --n 1000000 --reps 5

Workloads (a subset of bench.py's, same data, one store per repetition and revision):
fillrandom (untimed warm-up fill of a store that is then discarded, and the timed fill
of the store the others use), overwrite, readrandom, readseq, delete. Prints, per
workload, each revision's median and minimum in µs per operation and B's over A's.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from random import Random

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("fillrandom", "overwrite", "readrandom", "readseq", "delete")
VALUE_POOL = 1024


def extract(rev: str, name: str, into: Path) -> None:
    """kvmm/ as committed at ``rev``, written to ``into/name`` (without its CLI)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kvmm"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into / "src", filter="data")
    shutil.move(into / "src" / "kvmm", into / name)
    shutil.rmtree(into / name / "cli", ignore_errors=True)
    (into / name / "__main__.py").unlink(missing_ok=True)


class Data:
    """Keys, values and orders, made once from the seed (as bench.py's, smaller)."""

    def __init__(self, n: int, seed: int):
        rng = Random(seed)
        self.n = n
        keys = [i.to_bytes(16, "big") for i in range(n)]
        pool = [rng.randbytes(100) for _ in range(VALUE_POOL)]
        self.items = [(k, pool[i % VALUE_POOL]) for i, k in enumerate(keys)]
        rng.shuffle(self.items)
        self.new_items = [(k, pool[(i + 1) % VALUE_POOL]) for i, k in enumerate(keys)]
        rng.shuffle(self.new_items)
        self.read_keys = keys[:]
        rng.shuffle(self.read_keys)


def fill(env, items) -> None:
    with env.begin(write=True) as txn:
        put = txn.put
        for key, value in items:
            put(key, value)


def run(workload: str, env, data: Data) -> None:
    if workload == "fillrandom":
        fill(env, data.items)
    elif workload == "overwrite":
        fill(env, data.new_items)
    elif workload == "readrandom":
        with env.begin() as txn:
            get = txn.get
            for key in data.read_keys:
                if get(key) is None:
                    raise SystemExit(f"key {key!r} not found")
    elif workload == "readseq":
        with env.begin() as txn:
            if sum(1 for _ in txn.cursor()) != data.n:
                raise SystemExit("readseq: wrong count")
    elif workload == "delete":
        with env.begin(write=True) as txn:
            delete = txn.delete
            for key in data.read_keys:
                delete(key)
    else:
        raise SystemExit(f"unknown workload {workload!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="HEAD~1", help="git revision A (HEAD~1)")
    parser.add_argument("--b", default="HEAD", help="git revision B (HEAD)")
    parser.add_argument("--n", type=lambda t: int(float(t)), default=300_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    for name in names:
        if name not in WORKLOADS:
            parser.error(f"--workloads: {name!r} is not one of {', '.join(WORKLOADS)}")
    if names[0] != "fillrandom":
        names.insert(0, "fillrandom")  # the others need the filled store
    work = Path(tempfile.mkdtemp(prefix="kvmm-ab-"))
    try:
        revs = {"a": args.a, "b": args.b}
        for label, rev in revs.items():
            extract(rev, f"kvmm_{label}", work)
        sys.path.insert(0, str(work))
        mods = {label: importlib.import_module(f"kvmm_{label}") for label in revs}
        data = Data(args.n, args.seed)
        gc.collect()
        gc.freeze()  # the data are not the stores' to walk (see bench.py's prepared)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            order = ["a", "b"] if rep % 2 == 0 else ["b", "a"]
            for label in order:
                path = str(work / f"store-{label}-{rep}")
                with mods[label].open(path + "-warm", sync=False) as env:
                    fill(env, data.items)
                shutil.rmtree(path + "-warm")
                with mods[label].open(path, sync=False) as env:
                    for name in names:
                        gc.collect()
                        started = time.perf_counter()
                        run(name, env, data)
                        seconds = time.perf_counter() - started
                        times.setdefault((label, name), []).append(seconds / args.n * 1e6)
                shutil.rmtree(path)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
        print(f"n={args.n} reps={args.reps} A={args.a} B={args.b} (µs/op: median, min)")
        print(f"{'workload':12} {'A med':>8} {'A min':>8} {'B med':>8} {'B min':>8} "
              f"{'B/A med':>8} {'B/A min':>8}")
        for name in names:
            a, b = times[("a", name)], times[("b", name)]
            print(f"{name:12} {statistics.median(a):8.3f} {min(a):8.3f} "
                  f"{statistics.median(b):8.3f} {min(b):8.3f} "
                  f"{statistics.median(b) / statistics.median(a):8.3f} {min(b) / min(a):8.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
