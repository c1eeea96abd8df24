"""LMDB's ``mdb_dump`` text format (BerkeleyDB's ``db_dump`` format, VERSION=3), in one
place: what ``kvmm dump`` writes and ``kvmm restore`` reads.

A dump is one or more blocks, each a header and data::

    VERSION=3
    format=bytevalue            (or print)
    database=NAME               (only for a named database)
    type=btree
    mapsize=N
    maxreaders=N
    db_pagesize=N
    HEADER=END
     6b6579                     (a key: one space, then the bytes)
     76616c7565                 (its value)
    DATA=END

A named database with flags has a line per flag, as ``mdb_dump`` writes them (after
``maxreaders``, in :data:`FLAG_KEYWORDS` order, a dupsort one with ``duplicates=1``
first): ``reversekey=1``, ``dupsort=1``, ``integerkey=1``, ``dupfixed=1``,
``integerdup=1``. Keys and values are written as the user knows them (an integer key
in native byte order), not in kvmm's stored form.

``bytevalue`` writes every byte as two lowercase hex digits. ``print`` writes printable
ASCII bytes (0x20-0x7e) as they are, a backslash as ``\\\\`` and any other byte as
``\\xx``. :func:`unescape` refuses any other backslash, as ``mdb_load`` does. LMDB
0.9.24's ``mdb_dump -p`` wrote a backslash bare (fixed in 0.9.25): such output is
ambiguous, cannot be read back exactly by any tool, and is refused; dumped without
``-p`` (``bytevalue``), the same data loads without loss.
"""

from __future__ import annotations

import binascii
import re

from ..format import DB_DUPFIXED, DB_DUPSORT, DB_INTEGERDUP, DB_INTEGERKEY, DB_REVERSEKEY

VERSION = 3
#: The header keywords of database flags, in the order ``mdb_dump`` writes them, and
#: the record flag each names (LMDB's ``duplicates`` names sorted duplicates too).
FLAG_KEYWORDS = (
    ("reversekey", DB_REVERSEKEY),
    ("dupsort", DB_DUPSORT),
    ("integerkey", DB_INTEGERKEY),
    ("dupfixed", DB_DUPFIXED),
    ("integerdup", DB_INTEGERDUP),
)
DUPLICATES_KEYWORD = "duplicates"
#: LMDB's flag keywords that name databases kvmm does not have.
UNSUPPORTED_KEYWORDS = ("reversedup",)

_ESCAPES = [b"\\%02x" % c for c in range(256)]
for _c in range(0x20, 0x7F):
    _ESCAPES[_c] = bytes([_c])
_ESCAPES[0x5C] = b"\\\\"
_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")
_ESCAPED = re.compile(rb"\\(\\|[0-9a-fA-F]{2})?")
_NOT_HEX = re.compile(rb"[^0-9a-fA-F]")


def _escape_one(m) -> bytes:
    return _ESCAPES[m.group()[0]]


def escape(data: bytes) -> bytes:
    """``data`` in the ``print`` format (without the leading space). O(len)."""
    return _NEEDS_ESCAPE.sub(_escape_one, data)


def _unescape_one(m) -> bytes:
    code = m.group(1)
    if code is None:
        after = m.string[m.end() : m.end() + 2].decode("ascii", "backslashreplace")
        raise ValueError(
            f"bad escape '\\{after}': print format writes a backslash as '\\\\' and "
            "other bytes as '\\' and two hex digits (LMDB 0.9.24's mdb_dump -p wrote "
            "backslashes bare: dump without -p)")
    if code == b"\\":
        return b"\\"
    return bytes((int(code, 16),))


def unescape(text: bytes) -> bytes:
    """The bytes a ``print``-format line stands for; ValueError for a bad escape.
    O(len)."""
    if b"\\" not in text:
        return text
    return _ESCAPED.sub(_unescape_one, text)


def unhex(text: bytes) -> bytes:
    """The bytes a ``bytevalue`` line stands for; ValueError when it is not hex."""
    try:
        return binascii.unhexlify(text)
    except binascii.Error:
        bad = _NOT_HEX.search(text)
        if bad is not None:
            shown = bad.group().decode("ascii", "backslashreplace")
            raise ValueError(f"'{shown}' is not a hex digit") from None
        raise ValueError("not an even number of hex digits") from None


hexlify = binascii.hexlify


def header(
    name: bytes | None, printable: bool, mapsize: int, maxreaders: int, pagesize: int,
    flags: int = 0,
) -> bytes:
    """The header of one block, up to and including ``HEADER=END``; ``flags`` are the
    database's record flags."""
    lines = [b"VERSION=%d" % VERSION, b"format=print" if printable else b"format=bytevalue"]
    if name is not None:
        if b"\n" in name or b"\0" in name:
            raise ValueError(
                f"database name {escape(name).decode()} holds a newline or NUL "
                "byte, which the dump format cannot carry"
            )
        lines.append(b"database=" + name)
    lines += [
        b"type=btree",
        b"mapsize=%d" % mapsize,
        b"maxreaders=%d" % maxreaders,
        *([b"%s=1" % DUPLICATES_KEYWORD.encode()] if flags & DB_DUPSORT else []),
        *(b"%s=1" % word.encode() for word, bit in FLAG_KEYWORDS if flags & bit),
        b"db_pagesize=%d" % pagesize,
        b"HEADER=END",
        b"",
    ]
    return b"\n".join(lines)
