"""``kvmm get`` / ``put`` / ``del`` / ``scan``: small edits and looks from a shell.

Keys, values and prefixes are text (their UTF-8 bytes) or, with ``-x``, hex. ``get``
writes the value byte for byte, nothing added, so ``kvmm get db k > f`` gives the
value (with ``-x``: a line of hex); ``scan`` writes ``key<TAB>value`` lines escaped as
``kvmm dump -p`` escapes them (hex with ``-x``), so every line is one record whatever
the bytes. ``-s NAME`` works on a named database. In a database whose keys are not in
byte order (``reverse_key``, ``integerkey``), the keys with a prefix do not follow one
another: ``scan --prefix`` looks at every key from ``--start``.

Only ``put --create`` creates a database: a mistyped path is an error that leaves
nothing behind, and the reads never create one.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator

from .. import orders
from . import dumpfmt
from .common import CliError, arg_bytes, binary_stdout, named_dbs, open_env, open_named, show


def add_parsers(sub) -> None:
    get = sub.add_parser(
        "get",
        help="write the value of a key, byte for byte",
        description="Write the value of KEY to stdout byte for byte, nothing added "
        "(with -x: a line of hex).",
    )
    _common(get)
    get.add_argument("key", metavar="KEY")
    get.set_defaults(run=run_get)

    put = sub.add_parser(
        "put",
        help="store a value under a key",
        description="Store VALUE under KEY. Without VALUE, the value is read from "
        "stdin. A database that does not exist is an error unless --create.",
    )
    _common(put)
    put.add_argument(
        "--create", action="store_true", help="create the database when it does not exist"
    )
    put.add_argument(
        "-N", dest="keep", action="store_true", help="fail if KEY exists instead of overwriting it"
    )
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE", nargs="?", help="the value (default: all of stdin)")
    put.set_defaults(run=run_put)

    delete = sub.add_parser(
        "del",
        help="delete a key",
        description="Delete KEY; exit 1 when it is absent.",
    )
    _common(delete)
    delete.add_argument("key", metavar="KEY")
    delete.set_defaults(run=run_del)

    scan = sub.add_parser(
        "scan",
        help="list records in key order (--prefix, --limit)",
        description="Print key<TAB>value lines in key order, escaped "
        "as kvmm dump -p escapes them (hex with -x).",
    )
    _common(scan)
    scan.add_argument("--prefix", metavar="P", help="only keys starting with P")
    scan.add_argument("--start", metavar="K", help="start at the first key >= K")
    scan.add_argument("--limit", metavar="N", type=int, help="at most N records")
    scan.add_argument("--keys", action="store_true", help="print keys only")
    scan.set_defaults(run=run_scan)


def _common(p) -> None:
    p.add_argument("-s", dest="name", metavar="NAME", help="a named database")
    p.add_argument("-x", "--hex", dest="hex", action="store_true", help="keys and values in hex")
    p.add_argument("path", metavar="PATH", help="the database (directory or data file)")


def _name(args) -> bytes | None:
    return None if args.name is None else arg_bytes(args.name)


def run_get(args) -> int:
    key = arg_bytes(args.key, args.hex)
    env = open_env(args.path)
    try:
        with env.begin() as txn:
            value = txn.get(key, db=open_named(env, txn, _name(args)))
    finally:
        env.close()
    if value is None:
        raise CliError(f"key {show(key)} not found")
    out = binary_stdout()
    out.write(dumpfmt.hexlify(value) + b"\n" if args.hex else value)
    out.flush()
    return 0


def run_put(args) -> int:
    key = arg_bytes(args.key, args.hex)
    if args.value is None:
        value = sys.stdin.buffer.read()
        if args.hex:
            value = arg_bytes(value.decode("ascii", "replace").strip(), True)
    else:
        value = arg_bytes(args.value, args.hex)
    env = open_env(args.path, write=True, create=args.create,
                   missing=" (put --create makes one)")
    try:
        db = env.open_db(_name(args))
        with env.begin(write=True) as txn:
            if not txn.put(key, value, overwrite=not args.keep, db=db):
                raise CliError(f"key {show(key)} exists (-N keeps it)")
    finally:
        env.close()
    return 0


def run_del(args) -> int:
    key = arg_bytes(args.key, args.hex)
    env = open_env(args.path, write=True)
    try:
        with env.begin(write=True) as txn:
            if not txn.delete(key, db=open_named(env, txn, _name(args))):
                raise CliError(f"key {show(key)} not found")
    finally:
        env.close()
    return 0


def run_scan(args) -> int:
    prefix = arg_bytes(args.prefix, args.hex) if args.prefix else b""
    start = arg_bytes(args.start, args.hex) if args.start else b""
    encode = dumpfmt.hexlify if args.hex else dumpfmt.escape
    env = open_env(args.path)
    out = binary_stdout()
    try:
        with env.begin() as txn:
            db = open_named(env, txn, _name(args))
            bytewise = not db._flags & orders.KEY_ORDERS
            entries = _entries_from(txn, db, max(start, prefix) if bytewise else start)
            found: Iterator
            if bytewise:  # the keys with the prefix are a run from the first one
                found = itertools.takewhile(lambda kv: kv[0].startswith(prefix), entries)
            else:
                found = (kv for kv in entries if kv[0].startswith(prefix))
            for key, value in itertools.islice(found, args.limit):
                line = encode(key) if args.keys else encode(key) + b"\t" + encode(value)
                out.write(line + b"\n")
    finally:
        env.close()
    out.flush()
    return 0


def _entries_from(txn, db, start: bytes):
    """``(key, value)`` of ``db`` from the first key >= ``start``, without the main
    database's named-database records. O(log n) to start, then O(1) per entry."""
    names = set(named_dbs(txn)) if db is txn.env._main_db else set()
    cur = txn.cursor(db)
    if start and not cur.set_range(start):
        return
    for key, value in cur:
        if key not in names:
            yield key, value
