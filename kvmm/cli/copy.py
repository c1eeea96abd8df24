"""``kvmm copy``: a consistent copy of a live database (a hot backup), as LMDB's
``mdb_copy``. It reads one snapshot, so writers go on while it runs and the copy holds
exactly the last commit made before it began. ``-c`` compacts: the trees are rebuilt
in key order into a fresh file with no free pages.

The copy has the layout of SRC, as ``mdb_copy``'s: DST is a directory (created when
missing) that must not hold a database yet, or for a data-file database (kvmm's
``subdir=False``) a file that must not exist yet. A copy that fails is removed, so
DST never holds half a database.
"""

from __future__ import annotations

import os

from ..copy import copy_env
from ..env import DATA_NAME
from .common import CliError, named_dbs, open_env, open_named, removed_on_failure
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
    env = open_env(args.src)
    try:
        subdir = env.flags()["subdir"]
        _check_target(args.dst, subdir)
        unit = "rec" if args.compact else "page"
        with (removed_on_failure(args.dst, subdir), env.begin() as txn,
              Progress("copy", None, unit, unit_scale=True) as progress):
            if progress.enabled:
                progress.set_total(_work(env, txn, args.compact))
            copy_env(env, args.dst, compact=args.compact, txn=txn, progress=progress)
    finally:
        env.close()
    return 0


def _check_target(dst: str, subdir: bool) -> None:
    if not subdir:
        if os.path.exists(dst):
            raise CliError(f"{dst}: already exists (the copy of a data-file database is a "
                           "new file)")
    elif os.path.exists(dst) and not os.path.isdir(dst):
        raise CliError(f"{dst}: exists and is not a directory")
    elif os.path.exists(os.path.join(dst, DATA_NAME)):
        raise CliError(f"{dst}: already holds a database")


def _work(env, txn, compact: bool) -> int:
    """How much the copy reports to its progress callback: pages, or with ``-c``
    records."""
    if not compact:
        return txn.meta.next_pgno
    names = named_dbs(txn)
    total = txn.stat()["entries"] - len(names)
    return total + sum(txn.stat(open_named(env, txn, n))["entries"] for n in names)
