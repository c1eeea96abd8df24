"""``kvmm check``: the full consistency check of :mod:`kvmm.check`, from a shell.

It prints every problem on its own line on stdout (each names its page), and exits 0
when the file is clean, 1 when it is not — a file too damaged to open counts as a
problem too. Findings that lose nothing (a spare meta torn by a crash, which the next
read-write open mends) are printed as ``note:`` lines and do not fail the check. It
opens the data file read-only and never changes a byte of it.
"""

from __future__ import annotations

import sys

from ..check import check_env
from ..errors import Error
from .common import open_env
from .progress import Progress


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check every page and invariant; exit 0 when clean, 1 when not",
        description="Check the whole file: metas, every page used exactly once or free, "
        "page headers and checksums, key order, separators, entry counts, "
        "overflow runs, the free list, named databases, the reader table. "
        "Read-only.",
    )
    p.add_argument("path", metavar="PATH", help="the database (directory or data file)")
    p.set_defaults(run=run)


def run(args) -> int:
    notes: list[str] = []
    try:
        env = open_env(args.path)
    except Error as e:
        problems = [str(e)]
        pages = None
    else:
        try:
            info = env.info()
            pages = info["last_pgno"] + 1
            with Progress("check", pages, "page", unit_scale=True) as progress:
                problems = check_env(env, progress, notes)
        finally:
            env.close()
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(problem)
    if problems:
        sys.stdout.flush()
        print(
            f"kvmm: {args.path}: {len(problems)} problem{'s' * (len(problems) != 1)} found",
            file=sys.stderr,
        )
        return 1
    print(f"{args.path}: clean ({pages} pages, last transaction {info['last_txnid']})")
    return 0
