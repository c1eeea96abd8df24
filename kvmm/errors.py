"""The exceptions kvmm raises, named as py-lmdb names them.

Code written as ``except lmdb.NotFoundError`` ports unchanged to ``kvmm``: every
class here has the same name as its py-lmdb counterpart, and all derive from
:class:`Error`.
"""

from __future__ import annotations

__all__ = [
    "BadChecksumError",
    "BadDbiError",
    "BadRslotError",
    "BadTxnError",
    "BadValsizeError",
    "CorruptedError",
    "CryptoFailError",
    "CursorFullError",
    "DbsFullError",
    "DiskError",
    "EnvEncryptionError",
    "Error",
    "IncompatibleError",
    "InvalidError",
    "InvalidParameterError",
    "KeyExistsError",
    "LockError",
    "MapFullError",
    "MapResizedError",
    "MemoryError",
    "NotFoundError",
    "PageFullError",
    "PageNotFoundError",
    "PanicError",
    "ProblemError",
    "ReadersFullError",
    "ReadonlyError",
    "TlsFullError",
    "TxnFullError",
    "VersionMismatchError",
]


class Error(Exception):
    """The root of every error kvmm raises."""


class KeyExistsError(Error):
    """The key is already present and overwriting was not allowed."""


class NotFoundError(Error):
    """The requested item was not found."""


class PageNotFoundError(Error):
    """A page that should exist was not found in the file."""


class CorruptedError(Error):
    """The data file is damaged: a page or meta failed its checks."""


class PanicError(Error):
    """An earlier fatal error left the environment unusable."""


class VersionMismatchError(Error):
    """The file was written by an unknown version of the kvmm format."""


class InvalidError(Error):
    """The file is not a kvmm data file."""


class MapFullError(Error):
    """The commit would grow the data file past max_size."""


class DbsFullError(Error):
    """More named databases were opened than max_dbs allows."""


class ReadersFullError(Error):
    """Every reader slot in the lock file is taken."""


class TlsFullError(Error):
    """Too many thread-local reader slots (kept for py-lmdb compatibility)."""


class TxnFullError(Error):
    """The transaction has too many dirty pages (kept for py-lmdb compatibility)."""


class CursorFullError(Error):
    """The cursor stack is too deep (kept for py-lmdb compatibility)."""


class PageFullError(Error):
    """A page has no room left (kept for py-lmdb compatibility)."""


class MapResizedError(Error):
    """The map was resized by another process (kept for py-lmdb compatibility)."""


class IncompatibleError(Error):
    """The operation does not fit the database's flags or the record's kind."""


class BadRslotError(Error):
    """A reader slot was used wrongly."""


class BadDbiError(Error):
    """The database handle is unknown, closed or was dropped."""


class BadTxnError(Error):
    """The transaction is finished, or cannot do what was asked."""


class BadValsizeError(Error):
    """A key or value has a size kvmm does not accept (an empty or too long key)."""


class ReadonlyError(Error):
    """A write was attempted in a read-only environment or transaction."""


class InvalidParameterError(Error):
    """An argument has a value kvmm does not accept."""


class LockError(Error):
    """The lock file could not be locked or is not usable."""


class MemoryError(Error):  # py-lmdb's name, shadowing the builtin
    """Memory could not be allocated."""


class DiskError(Error):
    """Writing or syncing the data file failed (disk full or an I/O error)."""


class BadChecksumError(Error):
    """A checksum did not match (kept for py-lmdb compatibility)."""


class CryptoFailError(Error):
    """Encryption failed (kept for py-lmdb compatibility; kvmm does not encrypt)."""


class EnvEncryptionError(Error):
    """Environment encryption is misconfigured (kept for py-lmdb compatibility)."""


class ProblemError(Error):
    """An unexpected problem (kept for py-lmdb compatibility)."""
