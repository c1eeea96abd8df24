"""``kvmm restore`` (alias ``load``): read LMDB's ``mdb_dump`` text format, as LMDB's
``mdb_load`` does, into a database (created when missing).

- Several blocks may follow one another; each one's ``database=`` names its target,
  else ``-s NAME``, else the main database.
- ``-N`` keeps the value of keys that exist already; ``-T`` reads plain-text lines, a
  key line then a value line, escaped as the ``print`` format, with no header.
- Unknown header keywords are ignored with a warning; the flag keywords
  (``duplicates``/``dupsort``, ``reversekey``, ``integerkey``, ``dupfixed``,
  ``integerdup``) give the database its flags, and a database that exists already
  must have those flags; ``reversedup``, which kvmm lacks, stops the restore, since
  its data would not mean the same.
- It commits every :data:`BATCH` records, so memory stays flat however long the input;
  a bad line stops it with ``line N: <what is wrong>``. Restored into an existing
  database, the batches before it stay committed (and synced), the batch holding the
  bad line is not; restored into a new path, nothing is left there.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys

from .. import format as fmt
from .. import orders
from ..errors import BadValsizeError, Error
from . import dumpfmt
from .common import CliError, arg_bytes, open_env, removed_on_failure, show
from .progress import Progress

#: Records per commit: big enough that the commits' syncs cost little, small enough
#: that one transaction's dirty pages stay a few MiB.
BATCH = 10_000


def add_parser(sub) -> None:
    for name in ("restore", "load"):  # `load` as LMDB's mdb_load; listed once, as restore
        listing = {"help": "load an mdb_dump text dump into a database (alias: load)"}
        p = sub.add_parser(
            name,
            **(listing if name == "restore" else {}),
            description="Load data written by kvmm dump or LMDB's mdb_dump into a database, "
            "created when missing, as LMDB's mdb_load does.",
        )
        p.add_argument("-f", dest="file", metavar="FILE", help="read FILE, not stdin")
        p.add_argument(
            "-s",
            dest="name",
            metavar="NAME",
            help="load into named database NAME (a block's database= wins)",
        )
        p.add_argument(
            "-N",
            dest="keep",
            action="store_true",
            help="keep existing keys: do not overwrite their values",
        )
        p.add_argument(
            "-T",
            dest="text",
            action="store_true",
            help="plain text: key and value lines in turn, print-escaped, no header",
        )
        p.add_argument("path", metavar="PATH", help="the database (directory or data file)")
        p.set_defaults(run=run)


#: Header keyword -> the record flag it sets.
_FLAG_BITS = dict(dumpfmt.FLAG_KEYWORDS, **{dumpfmt.DUPLICATES_KEYWORD: fmt.DB_DUPSORT})


class InputError(CliError):
    """A line of the input that cannot be read: ``line N: <what is wrong>``."""

    def __init__(self, lineno: int, what: str):
        super().__init__(f"line {lineno}: {what}")
        self.lineno = lineno
        self.what = what


class Header:
    """What one block's header says."""

    __slots__ = ("flags", "name", "page_size", "printable")

    def __init__(self):
        self.name: bytes | None = None
        self.printable = False
        self.page_size: int | None = None
        self.flags = 0  # the database's record flags (format.DB_*)


def _strip(line: bytes) -> bytes:
    return line[:-1] if line[-1:] == b"\n" else line


class DumpReader:
    """Reads a dump line by line, counting lines for messages. Warnings go to ``warn``."""

    def __init__(self, stream, warn):
        self._lines = iter(stream)
        self._warn = warn
        self.lineno = 0
        self.head: Header | None = None  # the header being read, or last read

    def header(self) -> Header | None:
        """The next block's header, or None at the end of the input."""
        head = self.head = Header()
        started = False
        for line in self._lines:
            self.lineno += 1
            started = True
            text = _strip(line)
            if text == b"HEADER=END":
                return head
            keyword, eq, value = text.partition(b"=")
            if keyword == b"HEADER" or text[:1] == b" ":
                shown = text.decode("ascii", "backslashreplace")
                raise InputError(self.lineno, f"'{shown}': expected HEADER=END, the end of "
                                 "the header")
            if not eq:
                raise InputError(self.lineno, "unexpected format: a header line is KEYWORD=VALUE")
            self._keyword(head, keyword.decode("ascii", "backslashreplace"), value)
        if started:
            raise InputError(self.lineno, "unexpected end of input: HEADER=END is missing")
        return None

    def _keyword(self, head: Header, keyword: str, value: bytes) -> None:
        shown = value.decode("ascii", "backslashreplace")
        if keyword == "VERSION":
            if self._number(keyword, value) > dumpfmt.VERSION:
                raise InputError(self.lineno, f"unsupported VERSION {shown}")
        elif keyword == "format":
            if value not in (b"print", b"bytevalue"):
                raise InputError(self.lineno, f"unsupported format {shown}")
            head.printable = value == b"print"
        elif keyword == "database":
            head.name = value
        elif keyword == "type":
            if value != b"btree":
                raise InputError(self.lineno, f"unsupported type {shown}")
        elif keyword in ("mapsize", "maxreaders"):
            self._number(keyword, value)  # a hint kvmm does not need
        elif keyword == "db_pagesize":
            size = self._number(keyword, value)
            if fmt.valid_page_size(size):
                head.page_size = size
            else:
                self._warn(
                    f"line {self.lineno}: db_pagesize={size} is not a kvmm page size; "
                    "a new database gets the default"
                )
        elif keyword in _FLAG_BITS:
            bit = _FLAG_BITS[keyword]
            if self._number(keyword, value):
                head.flags |= bit
            else:
                head.flags &= ~bit
        elif keyword in dumpfmt.UNSUPPORTED_KEYWORDS:
            raise InputError(
                self.lineno, f"{keyword}={shown}: {keyword} databases are not supported by kvmm"
            )
        elif keyword != "mapaddr":
            self._warn(f"line {self.lineno}: unrecognized keyword ignored: {keyword}")

    def _number(self, keyword: str, value: bytes) -> int:
        try:
            return int(value)
        except ValueError:
            shown = value.decode("ascii", "backslashreplace")
            raise InputError(self.lineno, f"invalid {keyword} {shown}") from None

    def records(self, printable: bool):
        """Yield ``(key, value)`` of one block's data lines, up to ``DATA=END``."""
        decode = dumpfmt.unescape if printable else dumpfmt.unhex
        lines = self._lines
        for line in lines:
            self.lineno += 1
            if line[:1] != b" ":
                if line.rstrip(b"\r\n") == b"DATA=END":
                    return
                raise InputError(
                    self.lineno, "expected a data line (starting with a space) or DATA=END"
                )
            value_line = next(lines, None)
            if value_line is None:
                raise InputError(self.lineno, "unexpected end of input: a key without its value")
            self.lineno += 1
            if value_line[:1] != b" ":
                raise InputError(
                    self.lineno,
                    "expected the value of the key on the line "
                    "before (a line starting with a space)",
                )
            try:
                key = decode(_strip(line)[1:])
            except ValueError as e:
                raise InputError(self.lineno - 1, str(e)) from None
            try:
                value = decode(_strip(value_line)[1:])
            except ValueError as e:
                raise InputError(self.lineno, str(e)) from None
            yield key, value
        raise InputError(self.lineno, "unexpected end of input: DATA=END is missing")

    def text_records(self):
        """Yield ``(key, value)`` of ``-T`` input: lines in pairs, print-escaped."""
        lines = self._lines
        unescape = dumpfmt.unescape
        for line in lines:
            self.lineno += 1
            value_line = next(lines, None)
            if value_line is None:
                raise InputError(self.lineno, "unexpected end of input: a key without its value")
            self.lineno += 1
            try:
                key = unescape(_strip(line))
            except ValueError as e:
                raise InputError(self.lineno - 1, str(e)) from None
            try:
                value = unescape(_strip(value_line))
            except ValueError as e:
                raise InputError(self.lineno, str(e)) from None
            yield key, value


def run(args) -> int:
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(open(args.file, "rb")) if args.file else sys.stdin.buffer
        reader = DumpReader(stream, warn)
        head = None if args.text else reader.header()
        options = {}
        if head is not None and head.page_size is not None:
            options["page_size"] = head.page_size
        stack.enter_context(removed_on_failure(args.path))
        # sync=False: a batch's commit is safe against a crash of this process; the
        # sync at the end (also after a bad line) makes all of them durable at once.
        env = open_env(args.path, write=True, create=True, sync=False,
                       **options)  # type: ignore[arg-type]
        stack.callback(env.close)
        stack.callback(env.sync)
        progress = stack.enter_context(Progress("restore", _size(stream), "B", unit_scale=True))

        def advance(_records: int) -> None:
            if progress.enabled:
                with contextlib.suppress(OSError):
                    progress.to(stream.tell())

        def fault(what: str, record: bool) -> InputError:
            # A record's key is on the line before the one last read.
            return InputError(reader.lineno - 1 if record else reader.lineno, what)

        load = Loader(env, not args.keep, advance, fault)
        default = arg_bytes(args.name) if args.name is not None else None
        if args.text:
            load(default, reader.text_records())
        while head is not None:
            name = head.name if head.name is not None else default
            if head.flags and name is None:
                shown = ", ".join(k for k, on in orders.flag_dict(head.flags).items() if on)
                raise InputError(
                    reader.lineno, f"a main database with flags ({shown}) is not supported "
                    "by kvmm: restore it into a named one with -s NAME")
            load(name, reader.records(head.printable), head.flags)
            head = reader.header()
    return 0


class Loader:
    """Puts records into the databases of ``env``, committing every BATCH records, so
    memory stays flat however many there are (``kvmm restore``, ``kvmm migrate``).

    ``advance(n)`` is told of each commit and the ``n`` records it stored;
    ``fault(what, record)`` makes the error to raise for a database that cannot be
    opened (``record`` False) or a record that cannot be stored (True).
    """

    def __init__(self, env, overwrite: bool, advance, fault):
        self.env = env
        self.overwrite = overwrite
        self.advance = advance
        self.fault = fault

    def __call__(self, name: bytes | None, records, flags: int = 0) -> None:
        env, overwrite = self.env, self.overwrite
        what = "the main database" if name is None else f"database {show(name)}"
        flags = orders.db_flags(**orders.flag_dict(flags))  # dupfixed means dupsort too
        try:
            db = (env.open_db(name, **orders.flag_dict(flags)) if name is not None
                  else env.open_db(None))
        except Error as e:
            raise self.fault(f"{what}: {e}", False) from None
        if db._flags != flags:
            had = orders.flag_dict(db._flags)
            raise self.fault(f"{what} exists with other flags "
                             f"({', '.join(k for k, on in had.items() if on) or 'none'})",
                             False)
        txn = env.begin(write=True)
        try:
            n = 0
            put = txn.put
            for key, value in records:
                if not key:
                    # Where mdb_load places it: the line last read (the value's).
                    warn(str(self.fault("zero-length key ignored", False)))
                    continue
                try:
                    put(key, value, overwrite=overwrite, db=db)
                except BadValsizeError as e:
                    raise self.fault(str(e), True) from None
                n += 1
                if n == BATCH:
                    txn.commit()
                    self.advance(n)
                    txn = env.begin(write=True)
                    put = txn.put
                    n = 0
            txn.commit()
            self.advance(n)
        finally:
            txn.abort()


def _size(stream) -> int | None:
    """The input's size in bytes when it is a regular file, for the progress bar."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def warn(text: str) -> None:
    """Print ``kvmm: text`` on stderr: a line of the input that is skipped."""
    print(f"kvmm: {text}", file=sys.stderr)
