"""Open time and memory: issue #5's two targets that are not µs per operation.

1. Opening a large database takes milliseconds, not a read of the file: ``open`` reads
   the two metas and maps the file; pages are read when a transaction needs them.
2. The memory of a readrandom run over a database larger than ``cache_size`` stays
   within ``cache_size`` plus a small constant: the page cache counts an estimate of
   its nodes' memory against ``cache_size`` and drops the oldest leaves beyond it.

    python bench/footprint.py --gib 1 --cache-mib 64

builds a database of about ``--gib`` GiB (16-byte keys, ``--value-size`` bytes per
value, in order with ``append=True``), then, each in a fresh process:

- opens it and reads one key, ``--opens`` times, and prints the median wall time;
- opens it with ``cache_size = --cache-mib`` MiB and reads ``--reads`` random keys,
  printing the process's anonymous memory (``RssAnon``: the Python heap, where the
  cache lives) before opening and after the reads, and its file-backed resident memory
  (``RssFile``: pages of the mapped data file the kernel keeps resident; shared with
  every other process and given back under memory pressure, as with py-lmdb).

The database is kept in ``--dir`` between runs when ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "%016d"


def build(path: Path, records: int, value_size: int) -> None:
    import kvmm

    value = bytes(range(256)) * (value_size // 256 + 1)
    value = value[:value_size]
    batch = 200_000
    with kvmm.open(str(path), sync=False) as env:
        for start in range(0, records, batch):
            with env.begin(write=True) as txn:
                put = txn.put
                for i in range(start, min(records, start + batch)):
                    put(b"%016d" % i, value, append=True)
        env.sync()


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child_open(path: str, records: int) -> None:
    """Open, read one key, print the wall time in ms."""
    started = time.perf_counter()
    import kvmm

    imported = time.perf_counter()
    env = kvmm.open(path, readonly=True)
    with env.begin() as txn:
        value = txn.get(b"%016d" % (records // 2))
    done = time.perf_counter()
    assert value is not None
    print(f"{(done - imported) * 1000:.3f} {(imported - started) * 1000:.3f}")


def child_reads(path: str, records: int, reads: int, cache_mib: int) -> None:
    """Read random keys with a small cache; print RssAnon before/after, RssFile, KiB."""
    import kvmm

    rng = random.Random(1)
    keys = [b"%016d" % rng.randrange(records) for _ in range(reads)]
    before = status_kib("RssAnon")
    env = kvmm.open(path, readonly=True, cache_size=cache_mib << 20)
    started = time.perf_counter()
    with env.begin() as txn:
        get = txn.get
        for key in keys:
            if get(key) is None:
                raise SystemExit(f"missing {key!r}")
    seconds = time.perf_counter() - started
    after = status_kib("RssAnon")
    print(before, after, status_kib("RssFile"), env._store.cache.bytes >> 10,
          f"{seconds / reads * 1e6:.2f}")


def run_child(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="database size (1 GiB)")
    parser.add_argument("--value-size", type=int, default=1000, help="bytes per value (1000)")
    parser.add_argument("--cache-mib", type=int, default=64, help="cache_size of the reads (64)")
    parser.add_argument("--reads", type=int, default=300_000, help="random gets (300,000)")
    parser.add_argument("--opens", type=int, default=7, help="timed opens (7)")
    parser.add_argument("--dir", help="where the database goes (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, records, *rest = args.child
        if kind == "open":
            child_open(path, int(records))
        else:
            child_reads(path, int(records), int(rest[0]), int(rest[1]))
        return

    # An entry takes its key, value and 6 bytes; append fills each 4 KiB page (32 bytes
    # of header) with as many whole entries as fit.
    per_page = (4096 - 32) // (16 + args.value_size + 6)
    records = int(args.gib * (1 << 30) / 4096) * per_page
    base = Path(args.dir or tempfile.gettempdir()) / f"kvmm-footprint-{records}-{args.value_size}"
    if not (base / "data.kvmm").exists():
        started = time.perf_counter()
        build(base, records, args.value_size)
        print(f"built {records:,} records in {time.perf_counter() - started:.1f} s")
    size = (base / "data.kvmm").stat().st_size
    print(f"database: {size / (1 << 30):.2f} GiB, {records:,} records of "
          f"{args.value_size}-byte values")
    try:
        opens = [run_child("--child", "open", str(base), str(records)).split()
                 for _ in range(args.opens)]
        open_ms = statistics.median(float(o[0]) for o in opens)
        import_ms = statistics.median(float(o[1]) for o in opens)
        print(f"open + first get: {open_ms:.2f} ms (median of {args.opens} fresh "
              f"processes; importing kvmm: {import_ms:.1f} ms more)")
        before, after, rss_file, cache, us = run_child(
            "--child", "reads", str(base), str(records), str(args.reads),
            str(args.cache_mib)).split()
        grown = (int(after) - int(before)) / 1024
        print(f"readrandom, {args.reads:,} gets with cache_size={args.cache_mib} MiB: "
              f"{us} µs/get; anonymous memory grew {grown:.1f} MiB (cache estimate "
              f"{int(cache) / 1024:.1f} MiB); mapped file resident {int(rss_file) / 1024:.1f} MiB")
        print(f"within cache_size + 16 MiB: {grown <= args.cache_mib + 16}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
