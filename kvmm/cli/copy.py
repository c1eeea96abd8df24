"""``kvmm copy``: a consistent copy of a live database (a hot backup), as LMDB's
``mdb_copy``. It reads one snapshot, so writers go on while it runs and the copy holds
exactly the last commit made before it began. ``-c`` compacts: the trees are rebuilt
in key order into a fresh file with no free pages.

DST is a directory (created when missing) that must not hold a database yet. A copy
that fails is removed, so DST never holds half a database.
"""

from __future__ import annotations

import os

from ..copy import copy_env
from ..env import DATA_NAME, LOCK_NAME
from .common import CliError, named_dbs, open_env, open_named
from .progress import Progress


def add_parser(sub) -> None:
    p = sub.add_parser(
        "copy",
        help="consistent copy of a live database (hot backup); -c compacts",
        description="Copy a database while writers go on; the copy holds the last commit "
        "made before the copy began.",
    )
    p.add_argument(
        "-c", dest="compact", action="store_true", help="compact: no free pages, pages in key order"
    )
    p.add_argument("src", metavar="SRC", help="the database to copy")
    p.add_argument("dst", metavar="DST", help="a new directory for the copy")
    p.set_defaults(run=run)


def run(args) -> int:
    target = os.path.join(args.dst, DATA_NAME)
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
        raise CliError(f"{args.dst}: exists and is not a directory")
    if os.path.exists(target):
        raise CliError(f"{args.dst}: already holds a database")
    env = open_env(args.src)
    made_dir = not os.path.exists(args.dst)
    try:
        unit = "rec" if args.compact else "page"
        with env.begin() as txn, Progress("copy", None, unit, unit_scale=True) as progress:
            if progress.enabled:
                progress.set_total(_work(env, txn, args.compact))
            try:
                copy_env(env, args.dst, compact=args.compact, txn=txn, progress=progress)
            except BaseException:
                _remove_partial(args.dst, made_dir)
                raise
    finally:
        env.close()
    return 0


def _work(env, txn, compact: bool) -> int:
    """How much the copy reports to its progress callback: pages, or with ``-c``
    records."""
    if not compact:
        return txn.meta.next_pgno
    names = named_dbs(txn)
    total = txn.stat()["entries"] - len(names)
    return total + sum(txn.stat(open_named(env, txn, n))["entries"] for n in names)


def _remove_partial(dst: str, made_dir: bool) -> None:
    for name in (DATA_NAME, LOCK_NAME):
        try:
            os.unlink(os.path.join(dst, name))
        except FileNotFoundError:
            pass
    if made_dir:
        try:
            os.rmdir(dst)
        except OSError:
            pass
