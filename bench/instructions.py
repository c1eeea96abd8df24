#!/usr/bin/env python3
"""Instructions per operation of bench.py's workloads, for two revisions of kvmm.

Timings on a shared VM move by 10-30% between runs; the instructions a workload
executes do not (within ~1%). Each workload runs alone in a child process under
valgrind's cachegrind (no cache simulation), as bench.py runs it: on a new store, or
on the store an untimed fillrandom filled. The same child without the workload is the
baseline, so a figure is (instructions with it - without it) / its operations:
the Python work of the store's calls and of the loop that makes them. dup_get and
dup_scan fill their store first; their baseline is dup_fill's run.

    python bench/instructions.py --a 5caac88 --b HEAD --n 1e5 --jobs 2

Needs valgrind (Debian: ``apt-get install valgrind``). Each child takes 1-2 minutes at
10^5 records; the readers_* workloads (other processes) are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench

SKIP = ("readers_2p", "readers_4p")
NEW, FILLED = "(new store)", "(filled store)"  # the baselines' names
REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


def child(src: str, n: int, name: str, root: str) -> None:
    """Run workload ``name`` (or a baseline) once; kvmm is imported from ``src``,
    which bench.py put first on sys.path (the parent named it in KVMM_BENCH_SRC)."""
    if Path(src).resolve() != bench.KVMM_SRC.resolve():
        raise SystemExit(f"kvmm from {bench.KVMM_SRC}, not {src}")
    config = {"n": n, "value_size": 100, "seed": 1, "txn_ops": min(n, 10_000),
              "sync_ops": min(n, 1_000)}
    data = bench.prepared(config)
    workloads = {w.name: w for w in bench.WORKLOADS}
    workload = workloads.get(name)
    on = workload.on if workload is not None else ("filled" if name == FILLED else "new")
    store = bench.KvmmStore(str(Path(root, "store")), sync=on == "new_sync")
    if on == "filled":
        bench.fillrandom(store, data)
    ops = 0
    if workload is not None:
        outcome = workload.run(store, data)
        ops = outcome if isinstance(outcome, int) else outcome.ops
    store.close()
    print(f"OPS {ops}")


def count(src: str, n: int, name: str) -> tuple[int, int]:
    """(instructions, operations) of one child run under cachegrind."""
    root = tempfile.mkdtemp(prefix="kvmm-instr-")
    try:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--child", src,
             str(n), name, root],
            capture_output=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0", bench.KVMM_SRC_VAR: src})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    refs = REFS.search(out.stderr)
    ops = re.search(rb"^OPS (\d+)", out.stdout, re.MULTILINE)
    if refs is None or ops is None:
        raise SystemExit(f"{name}: no count in valgrind's output:\n{out.stderr.decode()}")
    return int(refs.group(1).replace(b",", b"")), int(ops.group(1))


def per_op(totals: dict[str, tuple[int, int]], name: str) -> float:
    """Instructions per operation of workload ``name`` over its baseline."""
    on = {w.name: w.on for w in bench.WORKLOADS}[name]
    base = ("dup_fill" if name in ("dup_get", "dup_scan")
            else FILLED if on == "filled" else NEW)
    (total, ops), (without, _) = totals[name], totals[base]
    return (total - without) / ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="HEAD~1", help="git revision A (HEAD~1)")
    parser.add_argument("--b", default="HEAD", help="git revision B (HEAD)")
    parser.add_argument("--n", type=lambda t: int(float(t)), default=100_000)
    parser.add_argument("--workloads", default="all",
                        help="comma list of bench.py's workloads (all but readers_*)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="write the table as .txt and the counts as .json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        src, n, name, root = args.child
        child(src, int(n), name, root)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (Debian: apt-get install valgrind)")
    known = [w.name for w in bench.WORKLOADS if w.name not in SKIP]
    names = known if args.workloads == "all" else args.workloads.split(",")
    for name in names:
        if name not in known:
            parser.error(f"--workloads: {name!r} is not one of {', '.join(known)}")
    runs = [NEW, FILLED, *names]
    if {"dup_get", "dup_scan"} & set(names) and "dup_fill" not in names:
        runs.append("dup_fill")
    work = Path(tempfile.mkdtemp(prefix="kvmm-instr-src-"))
    try:
        revs = {"a": args.a, "b": args.b}
        commits = {label: bench.extract_kvmm(rev, work / label) for label, rev in revs.items()}
        jobs = [(label, name) for name in runs for label in revs]
        with ThreadPoolExecutor(args.jobs) as pool:
            counted = pool.map(lambda job: count(str(work / job[0]), args.n, job[1]), jobs)
            totals: dict[str, dict] = {label: {} for label in revs}
            for (label, name), result in zip(jobs, counted):
                totals[label][name] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"instructions per operation, n={args.n}, cachegrind, one child per workload",
        f"A = {args.a} ({commits['a'][:12]}), B = {args.b} ({commits['b'][:12]})",
        f"{'workload':<16} {'A':>10} {'B':>10} {'B/A':>6}",
    ]
    rows = {}
    for name in names:
        a, b = per_op(totals["a"], name), per_op(totals["b"], name)
        rows[name] = {"a": a, "b": b}
        lines.append(f"{name:<16} {a:>10,.0f} {b:>10,.0f} {b / a:>6.3f}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).with_suffix(".txt").write_text("\n".join(lines) + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"n": args.n, "a": args.a, "b": args.b, "commits": commits, "totals": totals,
             "per_op": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
