"""``kvmm readers``: the reader table of the lock file — which processes hold a slot,
the snapshot (txnid) each one reads, and whether the process is alive. ``-c`` clears
the slots of processes that died (kvmm also does so by itself when it needs them)."""

from __future__ import annotations

import os

from .common import open_env


def add_parser(sub) -> None:
    p = sub.add_parser(
        "readers",
        help="list reader slots (pid, snapshot, alive); -c clears stale ones",
        description="List the reader slots of the lock file: pid, the txnid of the "
        "snapshot read (- for none), alive or dead.",
    )
    p.add_argument(
        "-c", dest="clear", action="store_true", help="clear the slots of processes that died"
    )
    p.add_argument("path", metavar="PATH", help="the database (directory or data file)")
    p.set_defaults(run=run)


def run(args) -> int:
    env = open_env(args.path)
    try:
        lock = env._lock
        if lock is None:
            print("(no lock file: no readers)")
            return 0
        if args.clear:
            cleared = lock.reader_check()
            print(f"cleared {cleared} stale reader slot{'s' * (cleared != 1)}")
        me = os.getpid()
        slots = [s for s in lock.readers() if s[1] != me]
        if not slots:
            print("(no reader slots in use)")
            return 0
        print(f"{'slot':>6} {'pid':>10} {'txnid':>12}  status")
        for slot, pid, txnid, alive in slots:
            print(
                f"{slot:>6} {pid:>10} {txnid if txnid else '-':>12}  {'alive' if alive else 'dead'}"
            )
    finally:
        env.close()
    return 0
