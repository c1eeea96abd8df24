"""Free pages: which a write transaction may reuse, and how they are recorded.

A commit that stops using committed pages (the old copies of touched pages, deleted
overflow runs) records them with its txnid. While few pages are free, the list lives in
the meta itself (the *inline free list*, pairs of (tag, pgno)), so a small commit
writes no page for it. When it outgrows its budget (INLINE_KEEP), it spills into the
*free database*, a B+tree of its own: key ``(tag, seq)`` (the tag is the txnid, maybe
| WEAK_BORN), value the page numbers (at most CHUNK per record, so taking a few pages
never rewrites a large record).

A page freed by commit ``T`` is visible to snapshots older than ``T``; it may be
reused once none of them can be read again:

- by a reader: ``T <= reader_bound = min(oldest live reader, last commit)``;
- after a power loss: with ``sync=False`` the database falls back to the last
  *steady* (synced) commit ``S``, so a page that ``S`` reaches must wait until
  ``T <= S``. A page written after ``S`` (its header txnid is newer) is not in ``S``
  and need not wait: it is recorded with the WEAK_BORN tag. This is what keeps
  ``sync=False`` both safe and compact: a page written and freed between two syncs is
  reused at once.

Invariants:
- Every page below ``next_pgno`` is exactly one of: reachable from a root (main tree,
  named trees, free tree, overflow runs), listed once in the free database, or listed
  once in the meta's inline free list.
- A tag's pages are either all inline or all in the free database, so spilled
  records never collide (a spill records pages under the spilling commit's own tags);
  inline pages of tag 0 are reusable by anyone.
- A page is recorded under a tag no earlier than the commit that freed it (a later
  one only delays its reuse).
- The free database's ``entries`` counts the pages it lists, not its records.
- A page taken for reuse is removed from its record in the same commit that reuses it.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right, insort
from operator import neg
from typing import Any

from .btree import descend, insert, remove_at, replace_at
from .cursor import path_next
from .errors import CorruptedError
from .format import (
    FREE_KEY,
    NUM_METAS,
    WEAK_BORN,
    decode_pgnos,
    encode_pgnos,
    inline_free_max,
)

# Reusing records would make this commit rewrite them; give up after this many
# rounds of "saving the free list changed the free list" and take new pages instead.
_SAVE_ROUNDS = 6
# Free pages kept in the meta before they spill into the free database, once it has
# records: every write transaction reads the inline list and every commit writes
# it, so it stays short. While the free database is empty, the list may fill the meta
# (format.inline_free_max): a first record would put a page wherever a page is free,
# often at the file's end, where it keeps the file from shrinking.
INLINE_KEEP = 48


def free_key(tag: int, seq: int) -> bytes:
    return FREE_KEY.pack(tag, seq)


_FIRST_WEAK_KEY = free_key(WEAK_BORN, 0)


# Page numbers per free record. Taking pages from a record deletes it and keeps the
# pages it did not need inline, so a record holds half of what stays inline: then
# the left-over pages stay in the meta instead of being written back as a record.
CHUNK = INLINE_KEEP // 2


def _checked(pgnos, next_pgno: int):
    """Free page numbers about to be reused, refused unless they lie among the file's
    pages (a damaged free list must not send a write anywhere else)."""
    if pgnos and (min(pgnos) < NUM_METAS or max(pgnos) >= next_pgno):
        raise CorruptedError(f"free list names pages outside 2..{next_pgno - 1}")
    return pgnos


class FreeList:
    """A write transaction's free pages: those it may reuse and those it freed.

    ``reuse`` is kept sorted in descending order, so the lowest page pops off its end
    in O(1); a record's pages are merged in with one sort (Timsort: linear for two
    sorted runs), a single page with a binary search.
    """

    def __init__(self, txn, reader_bound: int, steady: int, inline: tuple):
        # The transaction owns its free list; a weak reference back keeps the two out
        # of a reference cycle, so dropping the transaction aborts it at once.
        self._txn = weakref.ref(txn)
        self.txnid = txn.txnid
        self.reader_bound = reader_bound
        self.steady = steady
        if inline:
            # The inline list is sorted by tag (see save), so the reusable pages are
            # two slices: normal tags up to min(reader_bound, steady), weak ones up to
            # reader_bound. The rest must wait.
            tags = inline[::2]
            pgnos = inline[1::2]
            n = len(tags)
            w = bisect_left(tags, WEAK_BORN)
            a = bisect_right(tags, min(reader_bound, steady), 0, w)
            b = bisect_right(tags, WEAK_BORN | reader_bound, w, n)
            reuse = _checked(pgnos[:a] + pgnos[w:b], txn.next_pgno)
            self.reuse = sorted(reuse, reverse=True)
            self.pending = (tags[a:w] + tags[b:], pgnos[a:w] + pgnos[b:])  # tags, pgnos
        else:
            self.reuse = []
            self.pending = ((), ())
        self.inline: tuple = ()  # the inline free list for the new meta (set by save)
        self.freed: list[int] = []  # committed pages this transaction stopped using
        self.freed_weak: list[int] = []  # ... that the steady commit cannot reach
        self.consumed: list[bytes] = []  # free-DB keys whose pages moved into reuse
        self.next_key = b""  # the next free-DB key to look at
        self.exhausted = False  # no reusable record is left to load
        self.saving = False
        self.extend_only = False


    def _owner(self) -> Any:
        """The transaction this list allocates for (alive while the list is used)."""
        return self._txn()

    def bind(self, txn) -> None:
        """Allocate for ``txn`` from now on: a nested transaction shares its parent's
        list while it is open (kvmm.nested). Weak, as in __init__: the list is the
        transaction's and must not keep it alive."""
        self._txn = weakref.ref(txn)
    def reusable(self, tag: int) -> bool:
        """Whether pages freed with ``tag`` (txnid, maybe | WEAK_BORN) may be reused."""
        txnid = tag & ~WEAK_BORN
        return txnid <= self.reader_bound and (txnid <= self.steady or tag != txnid)

    # --- taking pages ---------------------------------------------------------------

    def alloc(self, n: int = 1) -> int:
        """A run of ``n`` free pages: reused when possible (lowest first), else from
        the file's end. O(1) for one page; a longer run scans the reusable pages."""
        if not self.extend_only:
            if n == 1:
                reuse = self.reuse
                if not reuse:
                    self._load()
                if reuse:
                    return reuse.pop()
            else:
                pgno = self._find_run(n)
                if pgno is not None:
                    return pgno
        txn = self._owner()
        pgno = txn.next_pgno
        txn.next_pgno += n
        return pgno

    def _find_run(self, n: int):
        """The lowest run of ``n`` consecutive reusable pages, taken out of ``reuse``.
        Pages are distinct and sorted, so n of them in a row are consecutive exactly
        when the first and last differ by n - 1."""
        while True:
            reuse = self.reuse
            for i in range(len(reuse) - 1, n - 2, -1):
                if reuse[i - n + 1] - reuse[i] == n - 1:
                    start = reuse[i]
                    del reuse[i - n + 1 : i + 1]
                    return start
            if not self._load():
                return None

    def _load(self, sort: bool = True) -> bool:
        """Move the next reusable record's pages into ``reuse``; False when none.

        Records sort normal ones first, then weak ones, each by txnid (see
        format.FREE_KEY), and reusability is a txnid bound per kind: the first record
        of a kind that is not reusable ends that kind. So a call descends at most
        twice, however many records wait.
        """
        if self.exhausted or self.saving:
            return False
        txn = self._owner()
        load = txn.load
        db = txn.free_db
        while True:
            path = descend(load, db, self.next_key)
            if path is None:
                break
            leaf, i = path[-1]
            if i >= len(leaf.keys) and not path_next(load, path):
                break
            leaf, i = path[-1]
            key = leaf.keys[i]
            tag = FREE_KEY.unpack(key)[0]
            if self.reusable(tag):
                self.consumed.append(key)
                self.reuse += _checked(decode_pgnos(leaf.vals[i]), txn.next_pgno)
                if sort:
                    self.reuse.sort(reverse=True)
                self.next_key = key + b"\0"
                return True
            if tag & WEAK_BORN:
                break
            self.next_key = _FIRST_WEAK_KEY
        self.exhausted = True
        return False

    def load_all(self) -> None:
        """Move every reusable record into ``reuse`` (used before giving space back)."""
        while self._load(sort=False):
            pass
        self.reuse.sort(reverse=True)

    # --- giving pages back ----------------------------------------------------------

    def free(self, pgno: int, n: int, born: int) -> None:
        """Pages ``pgno .. pgno+n-1``, written by txn ``born``, are no longer used by
        this transaction. Pages it wrote itself were never committed: reusable at
        once. Pages written after the steady commit need not wait for a sync."""
        pages = range(pgno, pgno + n)
        if born == self.txnid:
            reuse = self.reuse
            for p in pages:
                insort(reuse, p, key=neg)
        elif born > self.steady:
            self.freed_weak.extend(pages)
        else:
            self.freed.extend(pages)

    # --- commit ---------------------------------------------------------------------

    def trim_tail(self) -> int:
        """Drop reusable pages at the end of the file from use: lowers ``next_pgno``.
        Returns how many pages were given back."""
        txn = self._owner()
        reuse = self.reuse
        n = 0
        while n < len(reuse) and reuse[n] == txn.next_pgno - 1:
            txn.next_pgno -= 1
            n += 1
        del reuse[:n]
        return n

    def save(self) -> None:
        """Record this commit's free pages: inline in the meta while they fit
        (INLINE_KEEP pairs once the free database has records, else as many as a meta
        holds), else partly or wholly in the free database.

        Consumed records are deleted first. When the list is too long, the pages
        that wait for a sync (normal tags: pending ones and the ones freed now) spill
        first, under this commit's txnid: a later tag than a page's own only makes it
        wait longer, never less. The reusable and weak ones stay inline if they then
        fit, else spill too, under this commit's WEAK_BORN tag. Writing the free
        database frees and allocates pages itself, so repeat until a round changes
        nothing.
        """
        txn = self._owner()
        db = txn.free_db
        self.saving = True
        for key in self.consumed:
            self._delete(db, key)
        self.consumed = []
        tid = txn.txnid
        weak = tid | WEAK_BORN
        ptags, ppgnos = self.pending
        k = bisect_left(ptags, WEAK_BORN)
        keep = INLINE_KEEP if db.root else inline_free_max(txn.page_size)
        if len(ptags) + len(self.freed) + len(self.freed_weak) + len(self.reuse) <= keep:
            self.inline = self._inline(ptags[:k], ppgnos[:k], self.freed, ptags[k:],
                                       ppgnos[k:])
            self.saving = False
            return
        held = list(ppgnos[:k])  # pages pending inline that wait for a sync
        self.pending = ((), ())
        written = {tid: 0, weak: 0}  # records of each group written so far
        last = None
        for rounds in range(1000):
            self.extend_only = rounds >= _SAVE_ROUNDS
            normal = sorted(held + self.freed)
            rest = len(ptags) - k + len(self.freed_weak) + len(self.reuse)
            now = (normal, tuple(self.reuse), sorted(self.freed_weak))
            if now == last:
                break
            last = now
            written[tid] = self._write_group(db, tid, normal, written[tid])
            # Reusable pages left over are reusable by the next writer too: recorded
            # with the WEAK_BORN tag they wait for no sync (no steady commit reaches
            # them), only for readers, as pages freed now do.
            spill = [] if rest <= INLINE_KEEP else sorted(
                list(ppgnos[k:]) + self.freed_weak + list(self.reuse))
            written[weak] = self._write_group(db, weak, spill, written[weak])
        else:
            raise AssertionError("free list did not settle")
        self.inline = () if rest > INLINE_KEEP else self._inline(
            (), (), (), ptags[k:], ppgnos[k:])
        self.saving = False

    def _inline(self, ntags, npgnos, freed, wtags, wpgnos) -> tuple:
        """The inline free list, sorted by tag as __init__ expects: reusable-by-anyone
        (0), then normal tags by txnid, then weak ones; flattened as (tag, pgno)."""
        tid = self.txnid
        flat: list[int] = []
        for p in reversed(self.reuse):
            flat += (0, p)
        for t, p in zip(ntags, npgnos):
            flat += (t, p)
        for p in sorted(freed):
            flat += (tid, p)
        for t, p in zip(wtags, wpgnos):
            flat += (t, p)
        weak = tid | WEAK_BORN
        for p in sorted(self.freed_weak):
            flat += (weak, p)
        return tuple(flat)

    def _write_group(self, db, tag: int, pages: list, written: int) -> int:
        """Write ``pages`` as the records of ``tag``, deleting records past them from
        an earlier round (``written`` of them). Returns the number of records."""
        chunk = CHUNK
        records = [pages[i : i + chunk] for i in range(0, len(pages), chunk)]
        for seq, record in enumerate(records):
            self._put(db, free_key(tag, seq), encode_pgnos(record))
        for seq in range(len(records), written):
            self._delete(db, free_key(tag, seq))
        return len(records)

    def _delete(self, db, key: bytes) -> None:
        txn = self._owner()
        path: list = descend(txn.load, db, key)  # type: ignore[assignment]  # not empty
        leaf, i = path[-1]
        db.entries -= len(leaf.vals[i]) // 8 - 1
        remove_at(txn, db, path)

    def _put(self, db, key: bytes, value: bytes) -> None:
        txn = self._owner()
        path = descend(txn.load, db, key)
        if path is not None:
            leaf, i = path[-1]
            if i < len(leaf.keys) and leaf.keys[i] == key:
                db.entries += (len(value) - len(leaf.vals[i])) // 8
                replace_at(txn, db, path, value, 0)
                return
        insert(txn, db, path, key, value, 0, False)
        db.entries += len(value) // 8 - 1
