"""Page access: tree pages and overflow values read from the map of the data file.

A page is read where it lies in the map. Its header is checked on every read (its
pgno, the txnid the reference names, its kind), its checksum once per version per
process: a page is written once per transaction, so (pgno, txnid) names its contents
for ever, and ``Checked`` remembers the txnid each page was last verified at. Decoded
pages go to the :class:`~kvmm.pagecache.PageCache`.

Invariants:
- No bytes reach a caller from a page whose checksum this process has not verified
  at the txnid its header names; a page that fails raises CorruptedError.
- A damaged page raises CorruptedError, never IndexError, struct.error or a crash.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right

from . import format as fmt
from .btree import Node
from .errors import CorruptedError
from .pagecache import PageCache, heaviest_node_bytes, node_bytes

CHECKED_CHUNK_BITS = 12  # pages per chunk of Checked: 4096, 32 KiB of txnids
_CHECKED_MASK = (1 << CHECKED_CHUNK_BITS) - 1
_NEVER = array("Q", bytes(8 << CHECKED_CHUNK_BITS))  # the chunk of pages never verified


class Checked:
    """The txnid at which each page's checksum was last verified, by pgno (0: never).

    8 bytes per page (0.2% of the file at 4 KiB pages), in chunks of 4096 pages
    made when a page of theirs is first verified: a process that reads a few pages
    of a large file holds a few chunks, and opening costs nothing. O(1) per lookup
    (``seen``, inlined on hot paths as ``chunks[pgno >> CHECKED_CHUNK_BITS][pgno &
    _CHECKED_MASK]``) and per mark.
    """

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[array] = []

    def seen(self, pgno: int, txnid: int) -> bool:
        chunks = self.chunks
        c = pgno >> CHECKED_CHUNK_BITS
        return c < len(chunks) and chunks[c][pgno & _CHECKED_MASK] == txnid

    def mark(self, pgno: int, txnid: int) -> None:
        chunks = self.chunks
        c = pgno >> CHECKED_CHUNK_BITS
        if c >= len(chunks):
            chunks.extend([_NEVER] * (c + 1 - len(chunks)))
        chunk = chunks[c]
        if chunk is _NEVER:
            chunk = chunks[c] = array("Q", _NEVER)
        chunk[pgno & _CHECKED_MASK] = txnid

    def clear(self) -> None:
        self.chunks.clear()  # in place: finders hold the list


class Pages:
    """Reads an environment's tree pages and overflow runs, through its cache."""

    __slots__ = ("cache", "checked", "heaviest", "page_size", "root")

    def __init__(self, page_size: int, cache_size: int):
        self.page_size = page_size
        self.heaviest = heaviest_node_bytes(page_size)
        self.cache = PageCache(cache_size)
        self.checked = Checked()
        self.root: Node | None = None  # the main database's root a reader last began on

    def began(self, root: Node, depth: int, load) -> None:
        """A read transaction reads the main database (of ``depth`` levels) from
        ``root``. Forget the cached versions of pages that the root a reader began on
        before reached and this one does not (``load``: this transaction's): each
        commit writes a new root and new branches at new pgnos, and without this a
        reader beside a writer kept every version it met until the budget pushed them
        out (at 10^6 records, ~11,000 nodes after 5 s of 3,600 commits/s, for a tree of
        ~430 branches). Only a perf matter: a reader of an older snapshot that still
        needs one reads it again."""
        old = self.root
        if old is root or root.kids is None:
            return
        self.root = root
        if old is None or old.kids is None or old.txnid > root.txnid:
            return  # none yet, a leaf, or an older snapshot began late: nothing to say
        if old.pgno != root.pgno:
            self.cache.drop(old.pgno)
        self._supersede(old, root, depth - 1, load)

    def _supersede(self, old: Node, new: Node, depth: int, load) -> None:
        """Forget the cached children of branch ``old`` that ``new``, its successor for
        the same keys, does not name; then theirs, against the children of ``new``
        that took their place (decoded if they were not: a reader soon needs them)."""
        if depth <= 0:
            return
        gone = _replaced(old, new)
        cache = self.cache
        for i in gone:
            pgno = old.kids[i]
            node = cache.get(pgno)
            if node is None or node.txnid != old.ktxn[i]:
                continue
            cache.drop(pgno)
            if node.kids is not None:
                j = bisect_right(new.keys, old.keys[i]) - 1 if i else 0
                self._supersede(node, load(new.kids[j], new.ktxn[j]), depth - 1, load)

    def loader(self, mm, limit: int, private: bool = False):
        """A function (pgno, txnid) -> Node reading a snapshot of ``limit`` pages
        from map ``mm``: the cached node when it is that version, else the page
        (``private``: see ``read_node``). Its ``cached`` is the cache's ``lookup``,
        which a hot loop may try first (checking the txnid itself); ``dirty`` and
        ``mine`` are a write transaction's (see ``Transaction._write_loader``)."""
        lookup = self.cache.lookup
        read = self.read_node

        def load(pgno: int, txnid: int) -> Node:
            try:
                node = lookup(pgno)
            except IndexError:  # past the slots: not held
                node = None
            if node is not None and node.txnid == txnid:
                return node
            return read(mm, limit, pgno, txnid, private=private)

        if not private:  # a write transaction's loader wraps this one and says its own
            load.cached = lookup  # type: ignore[attr-defined]  # see btree.descend
            load.link = self.cache.link  # type: ignore[attr-defined]
            load.dirty = lookup  # type: ignore[attr-defined]  # no dirty pages: never used
            load.mine = -1  # type: ignore[attr-defined]  # no txnid is -1
        return load

    def read_node(self, mm, limit: int, pgno: int, txnid: int, verify: bool = False,
                  private: bool = False) -> Node:
        """Decode page ``pgno`` written by ``txnid`` and cache it. ``verify``: check
        its checksum even if this process verified that version before, and keep it
        out of the cache (``kvmm check`` reads every page once). ``private``: a
        write transaction's read, whose leaves it keeps for itself (``Node.own``):
        most are made dirty at once, and their committed version is freed."""
        if not fmt.NUM_METAS <= pgno < limit:
            raise CorruptedError(f"reference to page {pgno}, outside the file's pages")
        ps = self.page_size
        off = pgno * ps
        page = mm[off : off + ps]  # short (and refused) past the end of the map
        kind, count, _ = fmt.check_header(page, pgno, txnid, crc=False)
        if verify or not txnid or not self.checked.seen(pgno, txnid):
            fmt.check_crc(page, pgno)
            self.checked.mark(pgno, txnid)
        try:
            if kind == fmt.LEAF:
                keys, vals, flags, used = fmt.decode_leaf(page, pgno, count)
                node = Node(pgno, txnid, keys, vals, flags)
            elif kind == fmt.BRANCH:
                keys, kids, ktxn, used = fmt.decode_branch(page, pgno, count)
                node = Node(pgno, txnid, keys, kids=kids, ktxn=ktxn)
            else:
                raise CorruptedError(f"page {pgno}: kind {kind} where a tree page belongs")
        except (ValueError, IndexError, OverflowError) as e:
            raise CorruptedError(f"page {pgno}: {e}") from None
        node.size = used
        if private and node.kids is None:
            node.own = True
        elif not verify:
            self.cache.put(node)
        return node

    def finder(self, mm, limit: int):
        """A function (pgno, txnid, key) -> (stored value, flags) or None that searches
        leaf ``pgno`` written by ``txnid`` for ``key`` where it lies in map ``mm`` (a
        snapshot of ``limit`` pages), without decoding or caching it. Bound once per
        transaction, so a get makes one call here and one to ``fmt.leaf_find``."""
        ps = self.page_size
        checked = self.checked
        chunks = checked.chunks  # Checked.seen, inline below (``clear`` empties this list)
        header = fmt.PAGE_HEADER.unpack_from
        leaf_find = fmt.leaf_find
        leaf = fmt.LEAF
        first = fmt.NUM_METAS

        def find(pgno: int, txnid: int, key: bytes):
            if not first <= pgno < limit:
                raise CorruptedError(f"reference to page {pgno}, outside the file's pages")
            off = pgno * ps
            try:
                _, kind, count, hpgno, htxnid, _ = header(mm, off)
            except struct.error:
                raise CorruptedError(f"page {pgno}: truncated page") from None
            if kind != leaf or hpgno != pgno or htxnid != txnid:
                # Raises, naming the field that disagrees (the checksum is checked below).
                fmt.check_header(mm[off : off + fmt.HEADER_SIZE], pgno, txnid, leaf,
                                 crc=False)
            c = pgno >> CHECKED_CHUNK_BITS
            if not txnid or c >= len(chunks) or chunks[c][pgno & _CHECKED_MASK] != txnid:
                fmt.check_crc(mm[off : off + ps], pgno)
                checked.mark(pgno, txnid)
            return leaf_find(mm, off, pgno, count, key, ps)

        return find

    def read_overflow(self, mm, limit: int, pgno: int, txnid: int, length: int,
                      buffers: bool, verify: bool = False):
        """The value of ``length`` bytes in the overflow run at ``pgno``: bytes, or a
        memoryview into the map with ``buffers``."""
        n = fmt.overflow_pages(length, self.page_size)
        if not fmt.NUM_METAS <= pgno or pgno + n > limit:
            raise CorruptedError(f"overflow run at page {pgno} lies outside the file's pages")
        off = pgno * self.page_size
        head = mm[off : off + fmt.HEADER_SIZE]
        _, _, extra = fmt.check_header(head, pgno, txnid, fmt.OVERFLOW)
        if extra != length:
            raise CorruptedError(f"page {pgno}: overflow length {extra}, expected {length}")
        start = off + fmt.HEADER_SIZE
        value = memoryview(mm)[start : start + length] if buffers else mm[start : start + length]
        if verify or not txnid or not self.checked.seen(pgno, txnid):
            if not fmt.overflow_crc_ok(head, value):
                raise CorruptedError(f"page {pgno}: overflow checksum mismatch")
            self.checked.mark(pgno, txnid)
        return value

    def published(self, nodes, freed=()) -> None:
        """A commit wrote dirty ``nodes`` (committed now) and freed the pages
        ``freed``. Forget the freed ones (only readers of older snapshots could use
        them, and they read them again; left in, they would push live pages out of a
        full cache). Cache the new branches, and the new leaves when they all fit in the
        cache: a process that fills a store then reads decoded nodes (at 10^6
        records a get takes 3.9 µs so, 7.1 searching pages in the map; a cursor 0.24
        against 1.7 µs per item). A larger commit's leaves would only push each other
        out. This process encoded them, so their checksums need no check."""
        cache = self.cache
        budget = cache.budget
        # Whether all of them fit: a bound on any node's weight says so for all but
        # commits of thousands of pages, without weighing each.
        leaves = (len(nodes) * self.heaviest <= budget
                  or sum(map(node_bytes, nodes)) <= budget)
        checked = self.checked
        chunks = checked.chunks
        held = []
        for node in nodes:
            pgno = node.pgno
            c = pgno >> CHECKED_CHUNK_BITS  # Checked.mark, inline where its chunk is made
            if c < len(chunks) and chunks[c] is not _NEVER:
                chunks[c][pgno & _CHECKED_MASK] = node.txnid
            else:
                checked.mark(pgno, node.txnid)
            if leaves or node.kids is not None:
                node.freeze()
                held.append(node)
        cache.replace(freed, held)

    def clear(self) -> None:
        self.cache.clear()
        self.checked.clear()


def _replaced(old: Node, new: Node) -> list[int]:
    """The positions of the children of branch ``old`` that its successor ``new`` does
    not name. Between two snapshots a writer mostly rewrites a few children in place:
    when both have as many children, the positions where pgno or txnid differ, found
    by comparing the arrays as integers in C (a reader beside a writer compared every
    child in Python at every snapshot: 22% of its time at 10^6 records). A child moved
    rather than rewritten (both a split and a merge in one branch between the two
    snapshots) counts as replaced too, which costs a reader a decode, nothing more."""
    n = len(old.kids)
    if n != len(new.kids):
        named = set(zip(new.kids, new.ktxn))
        return [i for i, kid in enumerate(zip(old.kids, old.ktxn)) if kid not in named]
    diff = ((int.from_bytes(old.kids, "little") ^ int.from_bytes(new.kids, "little"))
            | (int.from_bytes(old.ktxn, "little") ^ int.from_bytes(new.ktxn, "little")))
    gone = []
    while diff:  # child i is bits 64i..64i+63 (in some order within them)
        i = (diff.bit_length() - 1) >> 6
        gone.append(i)
        diff &= (1 << (i << 6)) - 1
    return gone
