"""The ``kvmm`` command line (also ``python -m kvmm``); docs/reference.md section 12.

One module per command; each has ``add_parser(subparsers)`` and a ``run(args) -> int``
that it sets as the parser's default. :func:`main` parses, runs, and turns every
expected failure — a missing path, a file that is not kvmm's or is damaged, a bad
input line — into one line on stderr (``kvmm: <what>``) and exit status 1. Usage
errors exit 2, as argparse does; a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import Error
from . import check, copy, dump, edit, migrate, readers, restore, stat, tour
from .common import CliError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmm",
        description="kvmm: an embedded key-value store in one memory-mapped file. "
        "PATH is a database directory (or, for subdir=False databases, the "
        "data file).",
        epilog="`kvmm COMMAND --help` tells more about each command.",
    )
    parser.add_argument("--version", action="version", version=f"kvmm {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    dump.add_parser(sub)
    restore.add_parser(sub)
    stat.add_parser(sub)
    check.add_parser(sub)
    copy.add_parser(sub)
    migrate.add_parser(sub)
    readers.add_parser(sub)
    edit.add_parsers(sub)
    tour.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader went away (`kvmm dump db | head`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("kvmm: interrupted", file=sys.stderr)
        return 130
    except (CliError, Error, NotImplementedError) as e:
        return _fail(str(e))
    except OSError as e:
        if e.filename is not None and e.strerror:
            return _fail(f"{e.filename}: {e.strerror}")
        return _fail(str(e))


def _fail(message: str) -> int:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(f"kvmm: {message}", file=sys.stderr)
    return 1
