"""``kvmm migrate LMDB_PATH NEW_PATH``: copy an LMDB environment into a new kvmm
database.

LMDB_PATH is an LMDB environment directory (holding ``data.mdb``) or an LMDB data file
(LMDB's ``subdir=False``). Every database is copied: the main database's records and
every named database with its flags (``dupsort``, ``reverse_key``, ``integerkey``,
``integerdup``, ``dupfixed``). A database with a flag kvmm lacks (``reversedup``) stops
the migration, since its data would not mean the same.

LMDB is read through py-lmdb when it is installed, in one read transaction (one
snapshot); else through LMDB's ``mdb_dump`` when it is on PATH, whose output is read as
``kvmm restore`` reads it (two runs: ``-a`` for the named databases, then the main
one); else the command says what to install. Either way LMDB_PATH is only read.

NEW_PATH is a new database directory: it must not exist, or be an empty directory. A
migration that fails leaves nothing there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .. import orders
from ..lmdbfiles import lmdb_layout
from .common import CliError, open_env, removed_on_failure, show
from .progress import Progress
from .restore import DumpReader, InputError, Loader, warn

#: LMDB flags of a database that kvmm has no equivalent for (py-lmdb's names).
UNSUPPORTED_FLAGS = ("reversedup",)
#: LMDB's MDB_REVERSEDUP bit of a database's flags.
MDB_REVERSEDUP = 0x40
#: The size of a named database's record in LMDB's main database (its MDB_db struct)
#: on 32-bit and 64-bit builds: main records of another size are not databases.
_DB_RECORD_SIZES = (28, 48)
NEED_A_READER = (
    "reading LMDB needs py-lmdb (pip install lmdb) or LMDB's mdb_dump on PATH "
    "(Debian and Ubuntu: apt install lmdb-utils)"
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "migrate",
        help="copy an LMDB environment (all its databases) into a new database",
        description="Copy the LMDB environment at LMDB_PATH (a directory holding data.mdb, "
        "or an LMDB data file), every named database included with its flags (dupsort, "
        "reverse_key, integerkey, integerdup, dupfixed), into a new kvmm database at NEW_PATH. Reads LMDB with py-lmdb when it is "
        "installed, else with LMDB's mdb_dump.",
    )
    p.add_argument("src", metavar="LMDB_PATH", help="the LMDB environment")
    p.add_argument("dst", metavar="NEW_PATH", help="a new kvmm database directory")
    p.set_defaults(run=run)


def run(args) -> int:
    src, dst = args.src, args.dst
    subdir = lmdb_layout(src)
    if subdir is None:
        raise CliError(f"{src}: not an LMDB environment (a directory holding data.mdb, or "
                       "an LMDB data file)")
    if os.path.exists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
        raise CliError(f"{dst}: exists; the new database needs a new path (or an empty "
                       "directory)")
    lmdb: Any
    try:
        import lmdb
    except ImportError:
        lmdb = None
    mdb_dump = shutil.which("mdb_dump") if lmdb is None else None
    if lmdb is None and mdb_dump is None:
        raise CliError(NEED_A_READER)
    with removed_on_failure(dst):
        # sync=False: each batch's commit is safe against a crash of this process; the
        # sync at the end makes all of them durable at once.
        env = open_env(dst, write=True, create=True, sync=False)
        try:
            with Progress("migrate", None, "rec", unit_scale=True) as progress:
                if lmdb is not None:
                    records, names = _with_py_lmdb(lmdb, src, subdir, env, progress)
                else:
                    records, names = _with_mdb_dump(mdb_dump or "mdb_dump", src, subdir, env,
                                                    progress)
            env.sync()
        finally:
            env.close()
    print(f"{dst}: {records} records in the main database and {len(names)} named "
          f"database{'s' * (len(names) != 1)}, from {src}")
    return 0


def _unsupported(src: str, name: bytes | None, flags: dict) -> None:
    """Refuse a database whose ``flags`` (py-lmdb's) kvmm has no equivalent for."""
    what = "the main database" if name is None else f"database {show(name)}"
    for flag in UNSUPPORTED_FLAGS:
        if flags.get(flag):
            raise CliError(f"{src}: {what}: {flag} databases are not supported by kvmm")
    if name is None and any(flags.values()):
        shown = ", ".join(k for k, on in flags.items() if on)
        raise CliError(f"{src}: the main database has flags ({shown}), which kvmm does not "
                       "support (named databases may have them)")


def _with_py_lmdb(lmdb, src: str, subdir: bool, env, progress) -> tuple[int, list]:
    """Copy through py-lmdb; return (main database records, named database names)."""
    try:
        # A first look counts the main records that may be databases, to size max_dbs.
        with (contextlib.closing(lmdb.open(src, subdir=subdir, readonly=True)) as source,
              source.begin() as txn):
            candidates = [k for k, v in txn.cursor() if len(v) in _DB_RECORD_SIZES]
        with (contextlib.closing(lmdb.open(src, subdir=subdir, readonly=True,
                                           max_dbs=len(candidates))) as source,
              source.begin() as txn):
            return _copy_snapshot(lmdb, src, source, txn, candidates, env, progress)
    except lmdb.Error as e:
        raise CliError(f"{src}: {e}") from None


def _copy_snapshot(lmdb, src: str, source, txn, candidates: list, env,
                   progress) -> tuple[int, list]:
    main = source.open_db(None)
    _unsupported(src, None, main.flags(txn))
    dbs = {}
    for name in candidates:
        try:
            db = source.open_db(name, txn=txn, create=False)
        except lmdb.Error:
            continue  # a record of the main database, not a database
        flags = db.flags(txn)
        # py-lmdb's flags() leaves reversedup out; LMDB's record of the database in
        # the main one holds it (its flags are the 16 bits after 4 of padding).
        record_flags = int.from_bytes(txn.get(name)[4:6], sys.byteorder)
        flags["reversedup"] = bool(record_flags & MDB_REVERSEDUP)
        _unsupported(src, name, flags)
        dbs[name] = (db, orders.db_flags(**{k: v for k, v in flags.items()
                                              if k not in UNSUPPORTED_FLAGS}))
    if progress.enabled:
        progress.set_total(sum(txn.stat(db)["entries"] for db, _ in dbs.values())
                           + txn.stat(main)["entries"] - len(dbs))
    load = Loader(env, True, progress, lambda what, record: CliError(f"{src}: {what}"))
    counted = _Counted(txn.cursor(db=main), dbs)
    load(None, counted)
    for name, (db, flags) in dbs.items():
        load(name, iter(txn.cursor(db=db)), flags)
    return counted.n, list(dbs)


class _Counted:
    """The records of a main database, without those that are named databases;
    ``n`` counts them."""

    def __init__(self, records, names):
        self.records = records
        self.names = names
        self.n = 0

    def __iter__(self):
        names = self.names
        for key, value in self.records:
            if key not in names:
                self.n += 1
                yield key, value


def _with_mdb_dump(tool: str, src: str, subdir: bool, env, progress) -> tuple[int, list]:
    """Copy through ``mdb_dump``; return (main database records, named database
    names)."""
    names: list[bytes] = []
    counted = None
    for which in ("-a", None):  # the named databases, then the main one
        args = [tool, *([] if subdir else ["-n"]), *([which] if which else []), src]
        with tempfile.TemporaryFile() as errors, subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=errors) as proc:
            reader = DumpReader(proc.stdout, warn)

            def fault(what: str, record: bool, reader=reader) -> InputError:
                return InputError(reader.lineno - 1 if record else reader.lineno, what)

            load = Loader(env, True, progress, fault)
            try:
                head = reader.header()
                while head is not None:
                    records = reader.records(head.printable)
                    if which:
                        names.append(head.name or b"")
                        load(head.name, records, head.flags)
                    else:
                        if head.flags:
                            _unsupported(src, None, orders.flag_dict(head.flags))
                        counted = _Counted(records, set(names))
                        load(None, counted)
                    head = reader.header()
            except InputError as e:
                proc.kill()
                name = reader.head.name if reader.head is not None else None
                what = "the main database" if name is None else f"database {show(name)}"
                said = " ".join([os.path.basename(tool), *args[1:-1]])
                raise CliError(f"{src}: {what}: {e.what} (line {e.lineno} of what {said} "
                               "wrote)") from None
            except BaseException:
                proc.kill()
                raise
            if proc.wait():
                errors.seek(0)
                lines = errors.read().decode(errors="replace").strip().splitlines()
                raise CliError(f"{src}: {os.path.basename(tool)} failed"
                               + (f": {lines[-1]}" if lines else ""))
    return counted.n if counted is not None else 0, names

