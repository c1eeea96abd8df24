"""What the commands share: opening a database from a path with one-line errors, and
walking the named databases of the main database.

Every expected failure a command meets is raised as :class:`CliError` (or as a
``kvmm.Error`` / ``OSError``), and :func:`kvmm.cli.main` prints it as one line on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys

from .. import dupsort, orders
from .. import format as fmt
from ..env import DATA_NAME, LOCK_NAME, LOCK_SUFFIX, Environment
from ..errors import IncompatibleError, NotFoundError
from ..lmdbfiles import refuse_lmdb
from ..lock import LockFile

#: Bytes of decoded pages a command keeps (``cache_size``): commands walk a database
#: once or write it in order, so a cache beyond the upper levels of the trees buys
#: nothing, and kvmm's default (256 MiB of Python objects) would make a
#: dump's or restore's memory grow with the database up to that bound.
CACHE_SIZE = 16 << 20
#: Named-database handles a command may hold; kvmm's ``max_dbs`` only counts handles,
#: so a generous value costs nothing.
MAX_DBS = 1 << 16


class CliError(Exception):
    """An expected failure: printed as ``kvmm: <message>`` on stderr, exit status 1."""


def locate(path: str) -> tuple[bool, str, str]:
    """(subdir, data file, lock file) of the database at ``path``: a directory holding
    ``data.kvmm``, or the data file itself (``subdir=False``). Missing paths are taken
    as directories, kvmm's default."""
    if os.path.exists(path) and not os.path.isdir(path):
        return files(path, False)
    return files(path, True)


def files(path: str, subdir: bool) -> tuple[bool, str, str]:
    """(subdir, data file, lock file) of a database at ``path`` laid out as ``subdir``
    says."""
    if subdir:
        return True, os.path.join(path, DATA_NAME), os.path.join(path, LOCK_NAME)
    return False, path, path + LOCK_SUFFIX


@contextlib.contextmanager
def removed_on_failure(path: str, subdir: bool | None = None):
    """Around the work of a command that may create the database at ``path``: when
    the work fails, what it created goes (the data file, the lock file, the directory
    when it made it), so a failed restore, migrate or copy leaves no database behind.
    A database that existed is left as the work left it. ``subdir``: the layout, by
    default what :func:`locate` says. The work must close the database first."""
    subdir, data_path, lock_path = locate(path) if subdir is None else files(path, subdir)
    if os.path.exists(data_path):
        yield
        return
    made_dir = subdir and not os.path.exists(path)
    made = [data_path] if os.path.exists(lock_path) else [data_path, lock_path]
    try:
        yield
    except BaseException:
        for name in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if made_dir:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise


def open_env(path: str, write: bool = False, create: bool = False, missing: str = "",
             **options) -> Environment:
    """Open the database at ``path`` for a command.

    Read-only unless ``write``. A missing path is a :class:`CliError` (its message
    ends with ``missing``) unless ``create``; so is an LMDB environment, naming
    ``kvmm migrate``; neither gets a file made. An existing data file without a lock
    file is first opened without locking, which changes nothing, so a file that is
    not kvmm's is refused before a lock file is made beside it. A read-only open then
    creates the lock file — no byte of the data file changes — or, where the
    directory cannot be written, reads without locking: no process has the database
    open, or the lock file would exist.
    """
    path = os.fspath(path)
    subdir, data_path, lock_path = locate(path)
    refuse_lmdb(path, data_path)
    if not os.path.exists(data_path) and not create:
        if os.path.isdir(path):
            raise CliError(f"{path}: not a kvmm database (no {DATA_NAME} in it){missing}")
        raise CliError(f"{path}: no such database{missing}")
    options.setdefault("max_dbs", MAX_DBS)
    options.setdefault("cache_size", CACHE_SIZE)
    if os.path.exists(data_path) and not os.path.exists(lock_path):
        Environment(path, subdir=subdir, readonly=True, create=False, lock=False, **options).close()
        if not write:
            try:
                LockFile(lock_path, create=True).close()
            except OSError:
                options["lock"] = False
    return Environment(path, subdir=subdir, readonly=not write, create=create, **options)


def tree_leaves(txn, record: tuple):
    """Yield the leaf nodes of the tree of a database ``record`` in key order.

    O(pages of the tree): no entry is visited, so finding the few named-database
    records among millions of plain ones costs a walk of the leaves only.
    """
    root, root_txnid = record[0], record[1]
    if not root:
        return
    load = txn.load
    stack = [(root, root_txnid)]
    while stack:
        node = load(*stack.pop())
        if node.kids is None:
            yield node
        else:
            stack.extend(zip(reversed(node.kids), reversed(node.ktxn)))


def named_dbs(txn) -> list[bytes]:
    """The names of the named databases, in byte order: the main database's entries
    flagged ``F_SUBDB``. O(pages of the main tree)."""
    main = txn._state(txn.env._main_db)
    names: list[bytes] = []
    for leaf in tree_leaves(txn, main.record()):
        if leaf.flags is not None:
            names.extend(k for k, f in zip(leaf.keys, leaf.flags) if f & fmt.F_SUBDB)
    return names


def plain_entries(txn, db):
    """Yield ``(key, value)`` of ``db`` in key order, leaving out the named-database
    records of the main database (they are databases, not data). A dupsort database
    yields each of its (key, value) pairs.

    It walks the leaves rather than stepping a cursor: O(1) per entry, and a leaf
    without flagged entries (no overflow value, no named database) is yielded whole.
    """
    value_of = txn._value
    subdb = fmt.F_SUBDB
    flags = db._flags
    if flags & orders.STORED_FORM:
        yield from txn.cursor(db)  # keys and values in the user's form
        return
    if flags & fmt.DB_DUPSORT:
        for leaf in tree_leaves(txn, txn._state(db).record()):
            yield from map(dupsort.split, leaf.keys)
        return
    for leaf in tree_leaves(txn, txn._state(db).record()):
        if leaf.flags is None:
            yield from zip(leaf.keys, leaf.vals)
        else:
            for i, (key, flag) in enumerate(zip(leaf.keys, leaf.flags)):
                if not flag & subdb:
                    yield key, value_of(leaf, i)


def open_named(env, txn, name: bytes | None):
    """The handle of named database ``name`` (the main database for None), as seen by
    ``txn``; a :class:`CliError` when there is no such database."""
    if name is None:
        return env.open_db(None)
    try:
        return env.open_db(name, txn=txn, create=False)
    except (NotFoundError, IncompatibleError):
        raise CliError(f"{env.path()}: no database named {show(name)}") from None


def show(data: bytes) -> str:
    """``data`` for a message: printable ASCII as is, other bytes as ``\\xx``."""
    from .dumpfmt import escape

    return escape(bytes(data)).decode("ascii")


def arg_bytes(text: str, hex_mode: bool = False) -> bytes:
    """A key, value or name given on the command line: its bytes (UTF-8, or as the
    shell passed them), or the bytes written in hex with ``hex_mode``."""
    if not hex_mode:
        return os.fsencode(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{text!r} is not hex") from None


def binary_stdout():
    """The standard output as a binary stream, after flushing what was written as text."""
    sys.stdout.flush()
    return sys.stdout.buffer
