"""The on-disk format: the only module that knows byte offsets.

Data file (``data.kvmm``): an array of pages of ``page_size`` bytes.

- Pages 0 and 1 are the two metas. A commit writes its meta into one slot while the
  other still holds an earlier commit, so a torn meta write leaves a good one behind.
  A meta is its fixed fields (META), then the *inline free list* — a count u32 and
  that many (freeing txnid u64, pgno u64) pairs, at most ``inline_free_max`` — then a
  CRC-32 of all of it; a meta that fails its CRC is ignored. Small commits keep their
  free pages there, so they write no free-tree pages at all.
- A durable commit of few pages syncs once, after its meta (META_WRITTEN), instead of
  before and after it. Its meta then lists, between the inline free list and the
  CRC, the pages it wrote: a count u32 and that many (pgno u64, checksum u32), at most
  WRITTEN_MAX and what the page has room for, covering at most WRITTEN_PAGES_MAX
  pages. A power loss may keep such a meta and lose some of those pages, so a meta
  from an earlier boot counts only if every listed page holds its checksum
  (``written_intact``); else the other meta, the previous durable commit, is used.
- Every other page starts with a 32-byte header::

      checksum u32   CRC-32 of the page from byte 4 (an overflow run: of its header
                     and value, see below)
      kind     u16   BRANCH, LEAF or OVERFLOW
      count    u16   number of entries (0 for overflow pages)
      pgno     u64   the page's own number, so a page written to the wrong place is seen
      txnid    u64   the transaction that wrote it; with ``pgno`` it names the page's
                     contents for ever, since a page is written once per transaction
      extra    u64   overflow: the value's length; otherwise 0

- A branch page of ``n`` children::

      header | n x child pgno u64 | n x child txnid u64 | n x key length u16 | keys

  Key 0 is stored empty: child ``i`` holds keys ``K(i) <= k < K(i+1)``. The child's
  txnid is checked against the child's header when it is read, so a lost or misplaced
  write is reported as corruption instead of being read as data.
- A leaf page of ``n`` entries::

      header | n x key length u16 | n x value word u32 | keys | values

  The value word is the stored value's length in its low 30 bits, plus flags:
  ``F_OVERFLOW`` (the stored value is an overflow reference: pgno u64, txnid u64,
  length u64) and ``F_SUBDB`` (the stored value is a named database's record).
- An overflow run: ``ceil((32 + length) / page_size)`` consecutive pages; the header of
  the first page is followed by the value's bytes. Its checksum covers the header from
  byte 4 and the value.

Lock file (``lock.kvmm``): a header, then ``max_readers`` reader slots of
``pid u32 | pad u32 | txnid u64`` (txnid 0: the slot holds no snapshot). Byte-range
locks (which need no bytes in the file) mark the writer, the reader table while it is
changed, and each slot's owner while it lives.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from struct import Struct

from .errors import CorruptedError, InvalidError, VersionMismatchError

# --- identity -------------------------------------------------------------------

MAGIC = b"KVMMDATA"
VERSION = 1
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 65536
DEFAULT_PAGE_SIZE = 4096

# --- page kinds and flags ---------------------------------------------------------

BRANCH = 2
LEAF = 3
OVERFLOW = 4

F_OVERFLOW = 1 << 31
F_SUBDB = 1 << 30
LENGTH_BITS = 30  # of a leaf's value word; the flags above them
LENGTH_MASK = (1 << LENGTH_BITS) - 1

META_STEADY = 1  # meta flag: the pages of this commit were synced before the meta
META_WRITTEN = 2  # meta flag: synced with its pages in one flush; it lists them

# Named-database flags kept in a database record, with LMDB's values (so a dump's
# header and an LMDB user read them alike). Which orders they give: kvmm.orders.
DB_REVERSEKEY = 0x02
DB_DUPSORT = 0x04
DB_INTEGERKEY = 0x08
DB_DUPFIXED = 0x10
DB_INTEGERDUP = 0x20
DB_FLAGS = DB_REVERSEKEY | DB_DUPSORT | DB_INTEGERKEY | DB_DUPFIXED | DB_INTEGERDUP

# --- sizes ------------------------------------------------------------------------

PAGE_HEADER = Struct("<IHHQQQ")  # checksum, kind, count, pgno, txnid, extra
HEADER_SIZE = PAGE_HEADER.size  # 32
OVERFLOW_REF = Struct("<QQQ")  # pgno, txnid, length
OVERFLOW_REF_SIZE = OVERFLOW_REF.size
LEAF_ENTRY_COST = 2 + 4  # key length + value word, beside the key and value bytes
BRANCH_ENTRY_COST = 8 + 8 + 2  # child pgno + child txnid + key length
MAX_KEY_SIZE = 511
MAX_FILE_SIZE = 1 << 50  # a meta naming more pages than this is damaged

# A database record: root pgno, root txnid, depth, flags, entries, branch pages,
# leaf pages, overflow pages. A root pgno of 0 means an empty tree (page 0 is a meta).
DB_RECORD = Struct("<QQIIQQQQ")
DB_RECORD_SIZE = DB_RECORD.size

# A meta: magic, version, page size, txnid, next pgno (pages in use), flags, boot id,
# the main database's record, the free database's record; then a CRC-32 of all that.
META = Struct("<8sIIQQI16s" + DB_RECORD.format[1:] * 2)
META_CRC = Struct("<I")
META_COUNT = Struct("<I")  # pairs in the inline free list
META_SIZE = META.size + META_COUNT.size + META_CRC.size  # with an empty inline list
WRITTEN_COUNT = Struct("<I")  # pages listed by a one-flush meta
WRITTEN_ENTRY_SIZE = 8 + 4  # pgno u64, checksum u32
WRITTEN_MAX = 32  # pages (or overflow runs) a one-flush meta lists
WRITTEN_PAGES_MAX = 256  # pages they cover: what a later boot reads to trust it
META_TXNID_OFFSET = 16  # where a meta's txnid sits, to spot a new commit cheaply
META_TXNID = Struct("<Q")  # that field's encoding
NUM_METAS = 2

# The free database: key = tag u64 then a sequence number u32, big-endian. The tag is
# the freeing txnid, with the WEAK_BORN bit set for pages written after the last
# steady commit (as in the meta's inline free list). So records sort as all normal
# ones by txnid, then all weak ones by txnid: the reusable records of each kind are a
# prefix of it. Value: the freed page numbers as u64s.
FREE_KEY = Struct(">QI")
WEAK_BORN = 1 << 63

# --- lock file ----------------------------------------------------------------------

LOCK_MAGIC = b"KVMMLOCK"
LOCK_VERSION = 1
LOCK_HEADER = Struct("<8sII")  # magic, version, max_readers
LOCK_HEADER_SIZE = 64
# pid, pad, txnid. Native ("@"): CPython packs and unpacks a native Q with one 8-byte
# copy, so another process never sees a torn txnid ("<Q" goes byte by byte). The lock
# file never leaves its host, so its byte order is the host's.
READER_SLOT = Struct("@IIQ")
READER_SLOT_SIZE = READER_SLOT.size
READER_SLOT_TXNID = Struct("@8xQ")  # a slot's txnid alone (pid and pad skipped)
assert READER_SLOT_TXNID.size == READER_SLOT_SIZE
WRITER_LOCK_BYTE = 0  # held by the process whose write transaction is open
TABLE_LOCK_BYTE = 1  # held while a process claims or frees reader slots
SLOT_LOCK_BASE = 1 << 20  # byte SLOT_LOCK_BASE + i is held by slot i's owner


def lock_file_size(max_readers: int) -> int:
    return LOCK_HEADER_SIZE + max_readers * READER_SLOT_SIZE


def slot_offset(slot: int) -> int:
    return LOCK_HEADER_SIZE + slot * READER_SLOT_SIZE


# --- helpers ------------------------------------------------------------------------

_crc32 = zlib.crc32


def page_capacity(page_size: int) -> int:
    """Bytes available for entries in a branch or leaf page."""
    return page_size - HEADER_SIZE


def max_entry_size(page_size: int) -> int:
    """The largest leaf entry kept inline; larger values go to overflow pages.

    Half a page, so that any page that overflows by one entry splits into two that fit.
    """
    return page_capacity(page_size) // 2


def overflow_pages(length: int, page_size: int) -> int:
    return (HEADER_SIZE + length + page_size - 1) // page_size


def valid_page_size(page_size: int) -> bool:
    return (
        MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0
    )


# --- metas --------------------------------------------------------------------------


class Meta:
    """One decoded meta page: the root of one committed snapshot."""

    __slots__ = (
        "boot_id",
        "flags",
        "free",
        "inline_free",
        "main",
        "next_pgno",
        "page_size",
        "txnid",
        "written",
    )

    def __init__(self, page_size, txnid, next_pgno, flags, boot_id, main, free,
                 inline_free=(), written=()):
        self.page_size = page_size
        self.txnid = txnid
        self.next_pgno = next_pgno
        self.flags = flags
        self.boot_id = boot_id
        self.main = main  # a DB_RECORD tuple
        self.free = free
        self.inline_free = inline_free  # flat (txnid, pgno, txnid, pgno, ...)
        self.written = written  # META_WRITTEN: flat (pgno, checksum, pgno, checksum, ...)

    @property
    def steady(self) -> bool:
        return bool(self.flags & META_STEADY)

    def __repr__(self) -> str:
        return f"Meta(txnid={self.txnid}, next_pgno={self.next_pgno}, steady={self.steady})"


def encode_meta(meta: Meta) -> bytes:
    body = META.pack(
        MAGIC,
        VERSION,
        meta.page_size,
        meta.txnid,
        meta.next_pgno,
        meta.flags,
        meta.boot_id,
        *meta.main,
        *meta.free,
    )
    pairs = meta.inline_free
    n = len(pairs) // 2
    if n > inline_free_max(meta.page_size):
        raise AssertionError(f"inline free list of {n} pages is too long")
    parts = [body, META_COUNT.pack(n), _fmt(f"<{2 * n}Q").pack(*pairs)]
    if meta.flags & META_WRITTEN:
        written = meta.written
        w = len(written) // 2
        if w > written_room(meta.page_size, n):
            raise AssertionError(f"a one-flush meta listing {w} pages")
        parts += [WRITTEN_COUNT.pack(w), _fmt("<" + "QI" * w).pack(*written)]
    body = b"".join(parts)
    return body + META_CRC.pack(_crc32(body))


def inline_free_max(page_size: int) -> int:
    """How many free pages a meta can list inline."""
    return (page_size - META_SIZE) // 16


def written_room(page_size: int, inline_pairs: int) -> int:
    """How many written pages a one-flush meta can list beside ``inline_pairs`` free
    pages (a commit with more syncs its pages before its meta instead)."""
    room = page_size - META_SIZE - 16 * inline_pairs - WRITTEN_COUNT.size
    return max(0, min(WRITTEN_MAX, room // WRITTEN_ENTRY_SIZE))


def decode_meta(buf) -> Meta:
    """Decode a meta from the start of ``buf``.

    Raises InvalidError for bytes that are not a kvmm meta, VersionMismatchError for
    another format version, CorruptedError for a meta that fails its checksum.
    """
    if len(buf) < META_SIZE:
        raise InvalidError("file too short for a kvmm meta page")
    fields = META.unpack_from(buf, 0)
    if fields[0] != MAGIC:
        raise InvalidError("not a kvmm data file (bad magic)")
    if fields[1] != VERSION:
        raise VersionMismatchError(
            f"kvmm data file of format version {fields[1]}; this kvmm reads version {VERSION}"
        )
    page_size = fields[2]
    (count,) = META_COUNT.unpack_from(buf, META.size)
    if (not valid_page_size(page_size) or count > inline_free_max(page_size)
            or not NUM_METAS <= fields[4] <= MAX_FILE_SIZE // page_size):
        raise CorruptedError("meta page fails its checks (page size, free-list length, "
                             "page count)")
    end = META.size + META_COUNT.size + 16 * count
    w = 0
    if fields[5] & META_WRITTEN:
        if len(buf) < end + WRITTEN_COUNT.size:
            raise CorruptedError("meta page is cut short")
        (w,) = WRITTEN_COUNT.unpack_from(buf, end)
        if w > WRITTEN_MAX:
            raise CorruptedError("meta page fails its checks (written pages)")
        end += WRITTEN_COUNT.size + WRITTEN_ENTRY_SIZE * w
    if len(buf) < end + META_CRC.size or end + META_CRC.size > page_size:
        raise CorruptedError("meta page is cut short")
    (crc,) = META_CRC.unpack_from(buf, end)
    if crc != _crc32(memoryview(buf)[:end]):
        raise CorruptedError("meta page fails its checksum")
    written = _fmt("<" + "QI" * w).unpack_from(buf, end - WRITTEN_ENTRY_SIZE * w)
    pairs = struct.unpack_from(f"<{2 * count}Q", buf, META.size + META_COUNT.size)
    n = len(DB_RECORD.format) - 1
    rest = fields[7:]
    return Meta(page_size, fields[3], fields[4], fields[5], fields[6], rest[:n], rest[n:],
                pairs, written)


def stored_checksum(page) -> int:
    """The checksum in a page's header (an overflow run's: its first page's)."""
    return _U32.unpack_from(page)[0]


def written_intact(meta: Meta, pread) -> bool:
    """Whether every page a one-flush meta lists holds what its commit wrote there:
    the listed checksum, in a header naming that page and the meta's txnid, over
    bytes that match it. ``pread(n, offset)`` reads the data file (short at its end).

    The listed checksum, not just the txnid, is compared: a commit lost to an earlier
    power loss may have written the same page under the same txnid.
    """
    ps = meta.page_size
    written = meta.written
    for i in range(0, len(written), 2):
        pgno, crc = written[i], written[i + 1]
        page = pread(ps, pgno * ps)
        if len(page) < ps:
            return False
        pcrc, kind, _, hpgno, txnid, length = PAGE_HEADER.unpack_from(page)
        if pcrc != crc or hpgno != pgno or txnid != meta.txnid:
            return False
        if kind == OVERFLOW:
            if length > WRITTEN_PAGES_MAX * ps:
                return False
            value = pread(length, pgno * ps + HEADER_SIZE)
            if len(value) != length or not overflow_crc_ok(page, value):
                return False
        elif crc != _crc32(memoryview(page)[4:]):
            return False
    return True


# --- pages --------------------------------------------------------------------------


def _fail(pgno: int, what: str):
    raise CorruptedError(f"page {pgno}: {what}")


def check_header(page: bytes, pgno: int, txnid: int, kind: int | None = None,
                 crc: bool = True) -> tuple:
    """Check a page's header and (with ``crc``) checksum; return (kind, count, extra).

    ``txnid`` is the writer named by the reference that led here (0 to skip that
    check). Raises CorruptedError when anything disagrees.
    """
    try:
        stored, pkind, count, ppgno, ptxnid, extra = PAGE_HEADER.unpack_from(page, 0)
    except struct.error:
        _fail(pgno, "truncated page")
    if ppgno != pgno:
        _fail(pgno, f"header names page {ppgno}")
    if txnid and ptxnid != txnid:
        _fail(pgno, f"written by txn {ptxnid}, expected txn {txnid} (lost or stale write)")
    if kind is not None and pkind != kind:
        _fail(pgno, f"kind {pkind}, expected {kind}")
    if crc and pkind != OVERFLOW and stored != _crc32(memoryview(page)[4:]):
        _fail(pgno, "checksum mismatch")
    return pkind, count, extra


def check_crc(page: bytes, pgno: int) -> None:
    """Check a tree page's checksum (its header was checked by check_header)."""
    if _U32.unpack_from(page)[0] != _crc32(memoryview(page)[4:]):
        _fail(pgno, "checksum mismatch")


def encode_leaf(pgno: int, txnid: int, keys: list, vals: list, flags: list | None,
                page_size: int) -> bytes:
    """Serialise a leaf. ``vals`` holds stored values (bytes, or packed references);
    ``flags`` is None or a list of per-entry flag words (F_OVERFLOW, F_SUBDB)."""
    n = len(keys)
    words: Iterable[int]
    if flags is None:
        words = map(len, vals)
    else:
        words = [len(v) | f for v, f in zip(vals, flags)]
    head = _leaf_head(n).pack(*map(len, keys), *words)
    return _finish(LEAF, n, pgno, txnid, 0, b"".join((head, *keys, *vals)), page_size)


def encode_branch(pgno: int, txnid: int, keys, kids, kid_txnids, page_size: int) -> bytes:
    """Serialise a branch; ``kids`` and ``kid_txnids`` are u64 arrays (or sequences)."""
    n = len(keys)
    klens = list(map(len, keys))
    klens[0] = 0  # key 0 is stored empty
    head = _fmt(f"<{n}H").pack(*klens)
    body = b"".join((u64_bytes(kids), u64_bytes(kid_txnids), head, *keys[1:]))
    return _finish(BRANCH, n, pgno, txnid, 0, body, page_size)


# A branch's child pgnos and txnids are held as arrays of u64 (``u64_array``): copied
# and written whole with one memcpy, where a tuple would hold an int object per child.
if array("Q").itemsize != 8:
    raise ImportError("kvmm needs 8-byte array('Q') items")
_SWAP = sys.byteorder != "little"  # the file's integers are little-endian


def u64_array(items=()) -> array:
    """An array of u64, as a branch's ``kids`` and ``ktxn`` are held."""
    return array("Q", items)


def _u64s(page, at: int, n: int) -> array:
    """``n`` little-endian u64 from ``page[at:]`` as an array."""
    out = array("Q")
    out.frombytes(page[at : at + 8 * n])
    if _SWAP:
        out.byteswap()
    return out


def u64_bytes(items) -> bytes:
    """The little-endian bytes of u64 ``items`` (an array or a sequence of ints)."""
    if type(items) is not array or _SWAP:
        items = array("Q", items)  # a copy, which byteswap may change
        if _SWAP:
            items.byteswap()
    return items.tobytes()


_PGNO_TXNID = Struct("<QQ")  # the header's pgno and txnid, at _PATCH_AT
_PATCH_AT = 8
_U64 = Struct("<Q")
_U32 = Struct("<I")


def patch_branch(src, pgno: int, txnid: int, kids: list, kid_txnids: list,
                 changed) -> bytes:
    """A branch page made from the bytes of its committed source page ``src``, whose
    entries are the same but for the children at ``changed``. O(changed) + one CRC."""
    n = len(kids)
    page = bytearray(src)
    _PGNO_TXNID.pack_into(page, _PATCH_AT, pgno, txnid)
    for i in changed:
        _U64.pack_into(page, HEADER_SIZE + 8 * i, kids[i])
        _U64.pack_into(page, HEADER_SIZE + 8 * (n + i), kid_txnids[i])
    _U32.pack_into(page, 0, _crc32(memoryview(page)[4:]))
    return bytes(page)


def patch_leaf(src, pgno: int, txnid: int, keys: list, vals: list, changed) -> bytes:
    """A leaf page made from the bytes of its committed source page ``src``, whose
    entries are the same but for values of unchanged length at ``changed``. O(n)."""
    n = len(keys)
    page = bytearray(src)
    _PGNO_TXNID.pack_into(page, _PATCH_AT, pgno, txnid)
    at = HEADER_SIZE + 6 * n + sum(map(len, keys))  # where value 0 starts
    done = 0  # ... and ``at`` is where value ``done`` starts
    for i in sorted(changed):
        at += sum(map(len, vals[done:i]))
        value = vals[i]
        end = at + len(value)
        page[at:end] = value
        at, done = end, i + 1
    _U32.pack_into(page, 0, _crc32(memoryview(page)[4:]))
    return bytes(page)


_HEADER_REST = Struct("<" + PAGE_HEADER.format[2:])  # PAGE_HEADER after its checksum
_ZEROS = memoryview(bytes(MAX_PAGE_SIZE))


def _finish(kind: int, count: int, pgno: int, txnid: int, extra: int, body: bytes,
            page_size: int) -> bytes:
    pad = page_size - HEADER_SIZE - len(body)
    if pad < 0:
        raise AssertionError(f"page {pgno} overfull by {-pad} bytes")
    rest = _HEADER_REST.pack(kind, count, pgno, txnid, extra)
    zeros = _ZEROS[:pad]
    crc = _crc32(zeros, _crc32(body, _crc32(rest)))
    return b"".join((_U32.pack(crc), rest, body, zeros))  # the page's one copy


def encode_overflow(pgno: int, txnid: int, value) -> tuple[bytes, bytes]:
    """Return (header, value) for an overflow run; written back to back."""
    rest = PAGE_HEADER.pack(0, OVERFLOW, 0, pgno, txnid, len(value))[4:]
    crc = _crc32(value, _crc32(rest))
    return struct.pack("<I", crc) + rest, value


def overflow_crc_ok(page: bytes, value) -> bool:
    (crc,) = struct.unpack_from("<I", page, 0)
    return crc == _crc32(value, _crc32(memoryview(page)[4:HEADER_SIZE]))


_formats: dict = {}
_leaf_heads: dict = {}


def _leaf_head(n: int) -> Struct:
    """The Struct of a leaf's n key lengths and n value words."""
    s = _leaf_heads.get(n)
    if s is None:
        s = _leaf_heads[n] = Struct(f"<{n}H{n}I")
    return s


def _fmt(spec: str) -> Struct:
    s = _formats.get(spec)
    if s is None:
        s = _formats[spec] = Struct(spec)
    return s


# Structs that split a page body into fields of given lengths, keyed by the lengths:
# pages of fixed-size keys and values repeat a few layouts, and one unpack_from is
# about twice as fast as slicing field by field. A layout is compiled the second
# time it is seen (compiling costs about one slow decode). A Struct takes ~36 bytes
# per field: every cache of layouts is emptied when the Structs compiled since hold
# _BODY_FIELDS fields (~9 MiB), or when one of the caches reaches _BODY_LAYOUTS.
_bodies: dict = {}
_BODY_LAYOUTS = 4096
_BODY_FIELDS = 1 << 18
_body_fields = 0
# A leaf's lengths and value words, as bytes -> (its body's Struct, its flags), and
# a branch's key lengths, as bytes -> (its keys' Struct, None): see _split_alike.
_leaf_layouts: dict = {}
_branch_layouts: dict = {}


def _forget_layouts() -> None:
    global _body_fields
    _bodies.clear()
    _find_layouts.clear()
    _leaf_layouts.clear()
    _branch_layouts.clear()
    _body_fields = 0


def _remember_layout(layouts: dict, head: bytes, layout) -> None:
    if len(layouts) >= _BODY_LAYOUTS:
        _forget_layouts()
    layouts[head] = layout


def _body(lens: tuple) -> Struct | None:
    global _body_fields
    s = _bodies.get(lens)
    if s is None:
        if len(_bodies) >= _BODY_LAYOUTS:
            _forget_layouts()
        _bodies[lens] = False
        return None
    if s is False:
        if _body_fields + len(lens) > _BODY_FIELDS:
            _forget_layouts()
        s = _bodies[lens] = Struct("<" + "".join([f"{n}s" for n in lens]))
        _body_fields += len(lens)
    return s


def _split(page, pgno: int, at: int, lens) -> tuple:
    """The fields of ``lens`` bytes each, back to back from ``at``; where they end;
    and the Struct that split them (None when sliced one by one)."""
    body = _body(lens)
    if body is not None:
        try:
            return body.unpack_from(page, at), at + body.size, body
        except struct.error:
            _fail(pgno, "entries run past the end of the page")
    fields: list = []
    append = fields.append
    for n in lens:
        end = at + n
        append(page[at:end])
        at = end
    if at > len(page):
        _fail(pgno, "entries run past the end of the page")
    return tuple(fields), at, None


def _split_alike(layouts: dict, head: bytes, page, pgno: int, at: int):
    """(fields, end, flags) of a page whose lengths (``head``, the bytes just before
    ``at``) are byte for byte those of a page split before, by that page's Struct;
    None when no such page was seen. Fixed-size keys and values make most pages of
    n entries alike, and finding the Struct by these bytes is hashed in C."""
    layout = layouts.get(head)
    if layout is None:
        return None
    body, flags = layout
    try:
        return body.unpack_from(page, at), at + body.size, flags
    except struct.error:
        _fail(pgno, "entries run past the end of the page")


_NO_FLAG_BYTES = bytes(range(1 << (LENGTH_BITS - 24)))  # a value word's last byte, sans flags


def decode_leaf(page: bytes, pgno: int, n: int):
    """Return (keys, vals, flags, used) of a checked leaf page as tuples; flags is
    None when no entry has flags; ``used`` is the bytes after the header the entries
    take (a Node's ``size``). Raises CorruptedError when the lengths run past the
    page."""
    at = HEADER_SIZE + 6 * n  # the lengths and value words end, the entries start
    head = page[HEADER_SIZE:at]  # with the flags: alike leaves have alike flags
    alike = _split_alike(_leaf_layouts, head, page, pgno, at)
    if alike is not None:
        fields, end, flags = alike
        return fields[:n], fields[n:], flags, end - HEADER_SIZE
    try:
        lens = _leaf_head(n).unpack_from(page, HEADER_SIZE)
    except struct.error:
        _fail(pgno, f"{n} entries do not fit in the page")
    # The flags are the top two bits of each little-endian value word: the words'
    # last bytes, all below 0x40 when no entry has flags (checked without making an
    # int of each word).
    if not page[HEADER_SIZE + 2 * n + 3 : at : 4].translate(None, _NO_FLAG_BYTES):
        flags = None
    else:
        words = lens[n:]
        flags = tuple([w & ~LENGTH_MASK for w in words])
        lens = lens[:n] + tuple([w & LENGTH_MASK for w in words])
    fields, end, body = _split(page, pgno, at, lens)
    if body is not None:
        _remember_layout(_leaf_layouts, head, (body, flags))
    return fields[:n], fields[n:], flags, end - HEADER_SIZE


# How to search a leaf in place, by its lengths and value words (the 6n bytes after
# its header): (Struct of its keys or None, value starts, value ends, value flags),
# offsets from where its keys start. The Struct is compiled the second time a layout
# is seen, as _body's are; the layouts are emptied with the other layout caches.
_find_layouts: dict = {}


def _find_layout(head: bytes, n: int, pgno: int, page_size: int) -> tuple:
    """The layout of ``leaf_find`` for a leaf of ``n`` entries whose lengths and
    value words are ``head``; CorruptedError when they run past the page."""
    global _body_fields
    lens = _leaf_head(n).unpack(head)
    klens = lens[:n]
    words = lens[n:]
    kend = sum(klens)
    starts, ends, flags = [], [], []
    at = kend
    for w in words:
        starts.append(at)
        at += w & LENGTH_MASK
        ends.append(at)
        flags.append(w & ~LENGTH_MASK)
    if HEADER_SIZE + 6 * n + at > page_size:
        _fail(pgno, "entries run past the end of the page")
    seen = _find_layouts.get(head)
    split = None
    if seen is None:
        if len(_find_layouts) >= _BODY_LAYOUTS:
            _forget_layouts()
    else:
        if _body_fields + n > _BODY_FIELDS:
            _forget_layouts()
        split = Struct("<" + "".join([f"{k}s" for k in klens]))
        _body_fields += n
    layout = (split, tuple(starts), tuple(ends), tuple(flags), klens)
    _find_layouts[head] = layout if split is not None else False
    return layout


def leaf_find(buf, off: int, pgno: int, n: int, key: bytes, page_size: int):
    """Find ``key`` in the checked leaf page of ``n`` entries at ``buf[off:]``, where
    it lies: return (stored value, its flags) or None. Leaves of fixed-size keys
    and values repeat a few layouts of lengths: for a layout seen before, the search
    is one lookup of the layout by its bytes, one ``unpack_from`` of the keys, a
    bisect and one slice of the value. Reads nothing past the page."""
    kat = off + HEADER_SIZE + 6 * n  # the keys start
    head = buf[off + HEADER_SIZE : kat]
    layout = _find_layouts.get(head)
    if not layout:
        layout = _find_layout(head, n, pgno, page_size)
    split, starts, ends, flags, klens = layout
    if split is not None:
        keys = split.unpack_from(buf, kat)
    else:
        keys = []
        append = keys.append
        at = kat
        for k in klens:
            append(buf[at : at + k])
            at += k
    i = bisect_left(keys, key)
    if i == n or keys[i] != key:
        return None
    return buf[kat + starts[i] : kat + ends[i]], flags[i]


def decode_branch(page: bytes, pgno: int, n: int):
    """Return (keys, kids, kid_txnids, used) of a checked branch page: keys as a
    tuple, kids and kid_txnids as u64 arrays (see decode_leaf)."""
    if n == 0:
        _fail(pgno, "branch page without children")
    if HEADER_SIZE + 18 * n > len(page):
        _fail(pgno, f"{n} children do not fit in the page")
    at = HEADER_SIZE + 18 * n  # the key lengths end, the keys start
    head = page[at - 2 * (n - 1) : at]
    alike = _split_alike(_branch_layouts, head, page, pgno, at)
    if alike is not None:
        keys, end, _ = alike
    else:
        klens = _fmt(f"<{n - 1}H").unpack_from(page, at - 2 * (n - 1))
        keys, end, body = _split(page, pgno, at, klens)
        if body is not None:
            _remember_layout(_branch_layouts, head, (body, None))
    kids = _u64s(page, HEADER_SIZE, n)
    ktxn = _u64s(page, HEADER_SIZE + 8 * n, n)
    return (b"",) + keys, kids, ktxn, end - HEADER_SIZE


def decode_overflow_ref(stored: bytes) -> tuple[int, int, int]:
    if len(stored) != OVERFLOW_REF_SIZE:
        raise CorruptedError("bad overflow reference")
    return OVERFLOW_REF.unpack(stored)


def encode_db_record(rec: tuple) -> bytes:
    return DB_RECORD.pack(*rec)


def decode_db_record(stored: bytes) -> tuple:
    if len(stored) != DB_RECORD_SIZE:
        raise CorruptedError("bad named-database record")
    return DB_RECORD.unpack(stored)


def encode_pgnos(pgnos) -> bytes:
    return struct.pack(f"<{len(pgnos)}Q", *pgnos)


def decode_pgnos(stored: bytes) -> tuple:
    if len(stored) % 8:
        raise CorruptedError("bad free-page record")
    return struct.unpack(f"<{len(stored) // 8}Q", stored)
