"""kvmm: an embedded, transactional, ordered key-value store in one memory-mapped file.

A drop-in for the common part of py-lmdb's API, in pure Python::

    import kvmm
    env = kvmm.open("db")
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    with env.begin() as txn:
        assert txn.get(b"key") == b"value"
"""

from typing import Literal, overload

from . import check
from . import errors as _errors
from .cursor import Cursor
from .env import Environment, _Database, open
from .errors import *  # py-lmdb's error names are the public API
from .txn import Transaction

__version__ = "0.1.0"


@overload
def version(subpatch: Literal[False] = False) -> tuple[int, int, int]: ...
@overload
def version(subpatch: Literal[True]) -> tuple[int, int, int, int]: ...
def version(subpatch: bool = False) -> tuple[int, ...]:
    """kvmm's version as a tuple, as py-lmdb's ``lmdb.version()``. With ``subpatch``
    a fourth element, 1: as py-lmdb's patched LMDB, ``copy()`` and ``copyfd()`` take
    a transaction (with ``compact=True``)."""
    parts = tuple(int(p) for p in __version__.split("."))
    return parts + (1,) if subpatch else parts


__all__ = [
    "Cursor",
    "Environment",
    "Transaction",
    "_Database",
    "__version__",
    "check",
    "open",
    "version",
]
__all__.extend(_errors.__all__)
