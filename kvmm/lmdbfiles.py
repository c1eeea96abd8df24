"""LMDB's files, recognised so that kvmm refuses them with the way over.

Opened as kvmm's, an LMDB environment would look empty: kvmm would create its own
``data.kvmm`` beside LMDB's ``data.mdb`` and find no keys in it. :func:`refuse_lmdb`
sees one first and raises InvalidError naming ``kvmm migrate``, which copies it into a
kvmm database. It only looks: it creates nothing, opens nothing for writing, takes no
lock.

An LMDB data file starts with its first meta page: a page header (the page number,
8 bytes on 64-bit builds and 4 on 32-bit ones, then 2 bytes of padding, 2 of flags
and 4 of bounds), then the meta's magic number 0xBEEFC0DE in the byte order of the
machine that wrote it.
"""

from __future__ import annotations

import os

from .errors import InvalidError

#: The data file in an LMDB environment directory (LMDB's ``subdir=True``).
LMDB_DATA_NAME = "data.mdb"
_MAGIC = 0xBEEFC0DE
#: Where the magic number lies: after a 64-bit build's page header, a 32-bit one's.
_MAGIC_AT = (16, 12)
_HEAD = max(_MAGIC_AT) + 4


def is_lmdb_data(head: bytes) -> bool:
    """Whether ``head``, the first bytes of a file, begins an LMDB data file."""
    return any(
        len(head) >= at + 4
        and _MAGIC in (int.from_bytes(head[at:at + 4], "little"),
                       int.from_bytes(head[at:at + 4], "big"))
        for at in _MAGIC_AT
    )


def is_lmdb_file(path: str) -> bool:
    """Whether ``path`` is a regular file that begins as LMDB's data file does. It
    reads the first 20 bytes; False when the file cannot be read."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return is_lmdb_data(f.read(_HEAD))
    except OSError:
        return False


def lmdb_layout(path: str) -> bool | None:
    """How ``path`` holds an LMDB environment: True for a directory holding
    ``data.mdb`` (LMDB's ``subdir=True``), False for an LMDB data file
    (``subdir=False``), None when it holds none."""
    if os.path.isdir(path):
        return True if os.path.isfile(os.path.join(path, LMDB_DATA_NAME)) else None
    return False if is_lmdb_file(path) else None


def refuse_lmdb(path: str, data_path: str) -> None:
    """Raise InvalidError when ``path`` holds an LMDB environment and no kvmm data
    file ``data_path`` (a directory may hold both: then it is kvmm's to open)."""
    if os.path.isfile(data_path) and data_path != path:
        return
    if lmdb_layout(path) is not None:
        raise InvalidError(
            f"{path}: an LMDB environment, not a kvmm database; copy it into a new kvmm "
            f"database with: kvmm migrate {path} NEW_PATH")
