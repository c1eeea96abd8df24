"""``kvmm stat``: figures of a database, laid out as LMDB's ``mdb_stat`` lays them out:
environment information (``-e``), the reader table (``-r``; ``-rr`` also clears the
slots of dead readers), the free list (``-f``), the main database, and each named
database (``-a``) or one (``-s NAME``)."""

from __future__ import annotations

import os

from .common import named_dbs, open_env, open_named, show, tree_leaves


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stat",
        help="show environment, free-list, reader and per-database figures",
        description="Show a database's figures, as LMDB's mdb_stat does.",
    )
    p.add_argument("-a", dest="all", action="store_true", help="every named database too")
    p.add_argument("-e", dest="env", action="store_true", help="environment information")
    p.add_argument("-f", dest="free", action="store_true", help="free-list figures")
    p.add_argument(
        "-r",
        dest="readers",
        action="count",
        default=0,
        help="the reader table (twice: clear dead readers' slots first)",
    )
    p.add_argument("-s", dest="name", metavar="NAME", help="only the named database NAME")
    p.add_argument("path", metavar="PATH", help="the database (directory or data file)")
    p.set_defaults(run=run)


def run(args) -> int:
    env = open_env(args.path)
    try:
        if args.env:
            info = env.info()
            psize = env.stat()["psize"]
            print("Environment Info")
            print(f"  Map size: {info['map_size']}")
            print(f"  Page size: {psize}")
            print(f"  Number of pages used: {info['last_pgno'] + 1}")
            print(f"  Last transaction ID: {info['last_txnid']}")
            print(f"  Max readers: {info['max_readers']}")
            print(f"  Number of readers used: {info['num_readers']}")
        if args.readers:
            print("Reader Table Status")
            print_readers(env)
            if args.readers > 1:
                print(f"  {env.reader_check()} stale readers cleared.")
                print_readers(env)
        with env.begin() as txn:
            if args.free:
                print_free(txn)
            if args.name is not None:
                name = os.fsencode(args.name)
                print_db(f"Status of {show(name)}", txn.stat(open_named(env, txn, name)))
                return 0
            print_db("Status of Main DB", txn.stat())
            if args.all:
                for name in named_dbs(txn):
                    print_db(f"Status of {show(name)}", txn.stat(open_named(env, txn, name)))
    finally:
        env.close()
    return 0


def print_readers(env) -> None:
    """The slots in use, as ``mdb_reader_list`` prints them (``-`` for no snapshot),
    but for this process's own."""
    lock = env._lock
    me = os.getpid()
    slots = [s for s in lock.readers() if s[1] != me] if lock is not None else []
    if not slots:
        print("(no active readers)")
        return
    print("    pid     thread     txnid")
    for _slot, pid, txnid, _alive in slots:
        print(f"{pid:>10} {0:>10x} {txnid if txnid else '-':>10}")


def print_free(txn) -> None:
    """The free tree's figures; its ``Entries`` are records, ``Free pages`` counts the
    pages they list plus those the meta lists inline."""
    meta = txn.meta
    _root, _root_txnid, depth, _flags, pages, branches, leaves, overflows = meta.free
    records = sum(len(leaf.keys) for leaf in tree_leaves(txn, meta.free))
    inline = len(getattr(meta, "inline_free", ())) // 2
    print("Freelist Status")
    print(f"  Tree depth: {depth}")
    print(f"  Branch pages: {branches}")
    print(f"  Leaf pages: {leaves}")
    print(f"  Overflow pages: {overflows}")
    print(f"  Entries: {records}")
    print(f"  Free pages: {pages + inline}")


def print_db(title: str, st: dict) -> None:
    print(title)
    print(f"  Tree depth: {st['depth']}")
    print(f"  Branch pages: {st['branch_pages']}")
    print(f"  Leaf pages: {st['leaf_pages']}")
    print(f"  Overflow pages: {st['overflow_pages']}")
    print(f"  Entries: {st['entries']}")
