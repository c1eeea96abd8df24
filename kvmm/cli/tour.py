"""``kvmm tour``: a short guided demo of kvmm's API on a new database — it writes,
reads, scans, uses a named database and a snapshot, shows the figures and checks the
file, printing each call and what it returned. A first thing to run after
``pip install .``."""

from __future__ import annotations

import os
import tempfile

from ..check import check_env
from ..env import open as open_env
from .common import CliError

FRUIT = [
    (b"apple", b"red"),
    (b"banana", b"yellow"),
    (b"blueberry", b"blue"),
    (b"cherry", b"dark red"),
    (b"date", b"brown"),
    (b"elderberry", b"purple"),
]
PRICES = [(b"apple", b"0.40"), (b"cherry", b"6.00")]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tour",
        help="a guided demo: write, read, scan, named database, stats, check",
        description="Create a database at PATH (default: a new temporary directory) and "
        "walk through kvmm's API on it, printing each step.",
    )
    p.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        help="where to create the demo database (must not exist yet)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if args.path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="kvmm-tour-"), "db")
    else:
        path = args.path
        if os.path.exists(path):
            raise CliError(f"{path}: exists; the tour creates a new database, give a new path")
    step = _Steps()

    step("Open (and create) a database: a directory holding data.kvmm and lock.kvmm.")
    show(f"env = kvmm.open({path!r}, max_dbs=4)")
    env = open_env(path, max_dbs=4)
    try:
        _tour(env, step)
    finally:
        env.close()
    print()
    print(f"The tour's database stays at {path}. Look at it from the shell:")
    for command in ("stat -a -e -f", "scan", "dump -p -a", "check"):
        print(f"    kvmm {command} {path}")
    print("`kvmm --help` lists every command.")
    return 0


def _tour(env, step) -> None:
    step("Write records in a transaction: all of them become visible at commit, or none.")
    show("with env.begin(write=True) as txn:")
    show("    txn.put(key, value)   # for each fruit")
    with env.begin(write=True) as txn:
        for key, value in FRUIT:
            txn.put(key, value)
    said(f"committed {len(FRUIT)} records")

    step("Read them back; a key that is absent gives None (or a default).")
    with env.begin() as txn:
        for key in (b"banana", b"durian"):
            show(f"txn.get({key!r})")
            said(repr(txn.get(key)))

        step("A cursor scan: every record, in byte order of the keys.")
        show("for key, value in txn.cursor():")
        for key, value in txn.cursor():
            said(f"{key!r} = {value!r}")

        step("A range scan: set_range() finds the first key >= b'b'; stop before b'd'.")
        show("cur = txn.cursor(); cur.set_range(b'b')")
        cur = txn.cursor()
        cur.set_range(b"b")
        for key, value in cur:
            if key >= b"d":
                break
            said(f"{key!r} = {value!r}")

    step("A named database: a separate keyspace in the same file.")
    show("prices = env.open_db(b'prices')")
    prices = env.open_db(b"prices")
    show("with env.begin(write=True) as txn: txn.put(b'apple', b'0.40', db=prices) ...")
    with env.begin(write=True) as txn:
        for key, value in PRICES:
            txn.put(key, value, db=prices)
    with env.begin() as txn:
        show("txn.get(b'apple', db=prices), txn.get(b'apple')")
        said(f"{txn.get(b'apple', db=prices)!r}, {txn.get(b'apple')!r}")

    step("A read transaction is a snapshot: it does not see later commits.")
    snapshot = env.begin()
    show("snapshot = env.begin()")
    with env.begin(write=True) as txn:
        txn.put(b"fig", b"green")
    show("# another transaction commits b'fig'")
    show("snapshot.get(b'fig'), env.begin().get(b'fig')")
    with env.begin() as fresh:
        said(f"{snapshot.get(b'fig')!r}, {fresh.get(b'fig')!r}")
    snapshot.abort()

    step("The figures: env.stat() for the main database, env.info() for the file. Its "
         "map_size is the file's size, which grows by itself; kvmm.open(path, map_size=N) "
         "makes N a cap instead, as in LMDB (a commit past it raises MapFullError).")
    show("env.stat()")
    said(_dict(env.stat()))
    show("env.info()")
    info = env.info()
    said(
        _dict(
            {
                k: info[k]
                for k in ("map_size", "last_pgno", "last_txnid", "max_readers", "num_readers")
            }
        )
    )

    step("Check the file: every page, key order, counts, free list (kvmm check PATH).")
    show("kvmm.check.check_env(env)")
    problems = check_env(env)
    said("[] - clean" if not problems else "\n".join(problems))


class _Steps:
    def __init__(self):
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print()
        print(f"{self.n}. {text}")


def show(code: str) -> None:
    prompt = "..." if code.startswith(" ") else ">>>"
    print(f"   {prompt} {code}")


def said(text: str) -> None:
    for line in text.splitlines():
        print(f"   {line}")


def _dict(d: dict) -> str:
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in d.items()) + "}"
