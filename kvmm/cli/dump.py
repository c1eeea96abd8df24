"""``kvmm dump``: write databases in LMDB's ``mdb_dump`` text format (see
:mod:`kvmm.cli.dumpfmt`), which LMDB's ``mdb_load`` and ``kvmm restore`` read.

It streams: one read transaction, a walk of each tree's leaves in key order, and output
written in small batches, so a database larger than memory dumps with flat memory.

Where kvmm differs from ``mdb_dump``, it keeps data: the main database's dump leaves
out the records of named databases (kvmm's records mean nothing to LMDB), and ``-a``
writes a block for the main database first when it holds data of its own (LMDB 0.9's
``-a`` drops that data), then one block per named database. ``mapsize`` is a sizing
hint for LMDB, which needs one: four times the data file, at least LMDB's 10 MiB.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from . import dumpfmt
from .common import CliError, binary_stdout, named_dbs, open_env, open_named, plain_entries
from .progress import Progress

if TYPE_CHECKING:
    from ..env import _Database

LMDB_DEFAULT_MAPSIZE = 10 << 20
#: Records, or bytes of keys and values, gathered before one write to the output.
FLUSH_RECORDS = 1024
FLUSH_BYTES = 1 << 20


def add_parser(sub) -> None:
    p = sub.add_parser(
        "dump",
        help="write databases in LMDB's mdb_dump text format",
        description="Write a database in LMDB's mdb_dump text format (VERSION=3), which "
        "mdb_load and kvmm restore read back.",
    )
    p.add_argument(
        "-p",
        dest="printable",
        action="store_true",
        help="format=print: printable bytes as they are, others as \\xx",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "-a",
        dest="all",
        action="store_true",
        help="every database: the main one (if it holds data), then each named one",
    )
    which.add_argument("-s", dest="name", metavar="NAME", help="the named database NAME")
    which.add_argument(
        "-l", dest="list", action="store_true", help="list the named databases instead"
    )
    p.add_argument("-f", dest="file", metavar="FILE", help="write to FILE, not stdout")
    p.add_argument("path", metavar="PATH", help="the database (directory or data file)")
    p.set_defaults(run=run)


def run(args) -> int:
    with contextlib.ExitStack() as stack:
        env = open_env(args.path)
        stack.callback(env.close)
        txn = stack.enter_context(env.begin())
        if args.list:
            out = binary_stdout()
            out.writelines(name + b"\n" for name in named_dbs(txn))
            out.flush()
            return 0
        info = env.info()
        mapsize = -(-max(LMDB_DEFAULT_MAPSIZE, 4 * info["map_size"]) // (1 << 20)) << 20
        blocks = []
        for name, db in _databases(env, txn, args):
            try:
                head = dumpfmt.header(
                    name, args.printable, mapsize, info["max_readers"], txn.page_size,
                    flags=db._flags,
                )
            except ValueError as e:
                raise CliError(str(e)) from None
            blocks.append((head, db))
        out = stack.enter_context(open(args.file, "wb")) if args.file else binary_stdout()
        total = sum(txn.stat(db)["entries"] for _, db in blocks)
        with Progress("dump", total, "rec", unit_scale=True) as progress:
            for head, db in blocks:
                out.write(head)
                write_data(out, plain_entries(txn, db), args.printable, progress)
        out.flush()
    return 0


def _databases(env, txn, args) -> list:
    """[(name or None, handle)] of the databases to dump, in order."""
    if args.name is not None:
        name = os.fsencode(args.name)
        return [(name, open_named(env, txn, name))]
    main = env.open_db(None)
    if not args.all:
        return [(None, main)]
    names = named_dbs(txn)
    blocks: list[tuple[bytes | None, _Database]] = []
    if txn.stat(main)["entries"] > len(names) or not names:
        blocks.append((None, main))
    for name in names:
        blocks.append((name, open_named(env, txn, name)))
    return blocks


def write_data(out, entries, printable: bool, progress) -> int:
    """Write the data lines of ``entries`` and ``DATA=END``; return how many records."""
    encode = dumpfmt.escape if printable else dumpfmt.hexlify
    parts: list = []
    pending = size = total = 0
    for key, value in entries:
        parts += (b" ", encode(key), b"\n ", encode(value), b"\n")
        pending += 1
        size += len(key) + len(value)
        if pending >= FLUSH_RECORDS or size >= FLUSH_BYTES:
            out.write(b"".join(parts))
            parts.clear()
            progress(pending)
            total += pending
            pending = size = 0
    parts.append(b"DATA=END\n")
    out.write(b"".join(parts))
    progress(pending)
    return total + pending
