"""Free pages: which a write transaction may reuse, and how they are recorded.

A commit that stops using committed pages (the old copies of touched pages, deleted
overflow runs) records them with its txnid. While few pages are free, the list lives in
the meta itself (the *inline free list*, pairs of (tag, pgno)), so a small commit
writes no page for it. When it outgrows the meta, it spills into the *free database*,
a B+tree of its own: key ``(txnid, seq)``, value the page numbers (at most ``chunk``
per record, so taking a few pages never rewrites a huge record).

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
- A (txnid, tag)'s pages are either all inline or all in the free database, so
  spilled records never collide; inline pages of txnid 0 are reusable by anyone.
- The free database's ``entries`` counts the pages it lists, not its records.
- A page taken for reuse is removed from its record in the same commit that reuses it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from sortedcontainers import SortedList

from .btree import descend, insert, remove_at, replace_at
from .cursor import path_next
from .errors import CorruptedError
from .format import (
    FREE_KEY,
    NUM_METAS,
    SEQ_WEAK_BORN,
    WEAK_BORN,
    decode_pgnos,
    encode_pgnos,
    inline_free_max,
    max_entry_size,
)

# Reusing records would make this commit rewrite them; give up after this many
# rounds of "saving the free list changed the free list" and take new pages instead.
_SAVE_ROUNDS = 6


def free_key(txnid: int, seq: int) -> bytes:
    return FREE_KEY.pack(txnid, seq)


def key_txnid(key: bytes) -> int:
    return FREE_KEY.unpack(key)[0]


def key_weak_born(key: bytes) -> bool:
    return bool(FREE_KEY.unpack(key)[1] & SEQ_WEAK_BORN)


def chunk_size(page_size: int) -> int:
    """Page numbers per free record: the most that still fit inline in a leaf."""
    return (max_entry_size(page_size) - 6 - FREE_KEY.size) // 8


def _checked(pgnos, next_pgno: int):
    """Free page numbers about to be reused, refused unless they lie among the file's
    pages (a damaged free list must not send a write anywhere else)."""
    if pgnos and (min(pgnos) < NUM_METAS or max(pgnos) >= next_pgno):
        raise CorruptedError(f"free list names pages outside 2..{next_pgno - 1}")
    return pgnos


class FreeList:
    """A write transaction's free pages: those it may reuse and those it freed."""

    def __init__(self, txn, reader_bound: int, steady: int, inline: tuple):
        self.txn = txn
        self.reader_bound = reader_bound
        self.steady = steady
        # The inline list is sorted by tag (see save), so the reusable pages are two
        # slices: normal tags up to min(reader_bound, steady), weak ones up to
        # reader_bound. The rest must wait.
        tags = inline[::2]
        pgnos = inline[1::2]
        n = len(tags)
        w = bisect_left(tags, WEAK_BORN)
        a = bisect_right(tags, min(reader_bound, steady), 0, w)
        b = bisect_right(tags, WEAK_BORN | reader_bound, w, n)
        self.reuse = SortedList(_checked(pgnos[:a] + pgnos[w:b], txn.next_pgno))
        self.pending = (tags[a:w] + tags[b:], pgnos[a:w] + pgnos[b:])  # tags, pgnos
        self.inline: tuple = ()  # the inline free list for the new meta (set by save)
        self.freed: list[int] = []  # committed pages this transaction stopped using
        self.freed_weak: list[int] = []  # ... that the steady commit cannot reach
        self.consumed: list[bytes] = []  # free-DB keys whose pages moved into reuse
        self.next_key = b""  # the next free-DB key to look at
        self.exhausted = False  # no reusable record is left to load
        self.saving = False
        self.extend_only = False

    def reusable(self, tag: int) -> bool:
        """Whether pages freed with ``tag`` (txnid, maybe | WEAK_BORN) may be reused."""
        txnid = tag & ~WEAK_BORN
        return txnid <= self.reader_bound and (txnid <= self.steady or tag != txnid)

    # --- taking pages ---------------------------------------------------------------

    def alloc(self, n: int = 1) -> int:
        """A run of ``n`` free pages: reused when possible, else from the file's end.
        O(log f) for one page; a longer run scans the reusable pages."""
        if not self.extend_only:
            reuse = self.reuse
            if n == 1:
                if not reuse:
                    self._load()
                if reuse:
                    return reuse.pop(0)
            else:
                pgno = self._find_run(n)
                if pgno is not None:
                    return pgno
        txn = self.txn
        pgno = txn.next_pgno
        txn.next_pgno += n
        return pgno

    def _find_run(self, n: int):
        while True:
            reuse = self.reuse
            start = prev = None
            for p in reuse:
                if prev is None or p != prev + 1:
                    start = p
                if p - start + 1 == n:
                    for q in range(start, p + 1):
                        reuse.remove(q)
                    return start
                prev = p
            if not self._load():
                return None

    def _load(self) -> bool:
        """Move the next reusable record's pages into ``reuse``; False when none."""
        if self.exhausted or self.saving:
            return False
        txn = self.txn
        db = txn.free_db
        path = descend(txn.load, db, self.next_key)
        if path is None:
            self.exhausted = True
            return False
        leaf, i = path[-1]
        if i >= len(leaf.keys) and not path_next(txn.load, path):
            self.exhausted = True
            return False
        while True:
            leaf, i = path[-1]
            key = leaf.keys[i]
            txnid = key_txnid(key)
            if txnid > self.reader_bound:
                self.exhausted = True
                return False
            if self.reusable(txnid | WEAK_BORN if key_weak_born(key) else txnid):
                break
            if not path_next(txn.load, path):
                self.exhausted = True
                return False
        self.consumed.append(key)
        self.reuse.update(_checked(decode_pgnos(leaf.vals[i]), txn.next_pgno))
        self.next_key = key + b"\0"
        return True

    def load_all(self) -> None:
        """Move every reusable record into ``reuse`` (used before giving space back)."""
        while self._load():
            pass

    # --- giving pages back ----------------------------------------------------------

    def free(self, pgno: int, n: int, born: int) -> None:
        """Pages ``pgno .. pgno+n-1``, written by txn ``born``, are no longer used by
        this transaction. Pages it wrote itself were never committed: reusable at
        once. Pages written after the steady commit need not wait for a sync."""
        pages = range(pgno, pgno + n)
        if born == self.txn.txnid:
            self.reuse.update(pages)
        elif born > self.steady:
            self.freed_weak.extend(pages)
        else:
            self.freed.extend(pages)

    # --- commit ---------------------------------------------------------------------

    def trim_tail(self) -> int:
        """Drop reusable pages at the end of the file from use: lowers ``next_pgno``.
        Returns how many pages were given back."""
        txn = self.txn
        reuse = self.reuse
        n = 0
        while reuse and reuse[-1] == txn.next_pgno - 1:
            reuse.pop()
            txn.next_pgno -= 1
            n += 1
        return n

    def save(self) -> None:
        """Record this commit's free pages: inline in the meta when they fit, else
        in the free database.

        Consumed records are deleted first. Spilling writes the pending inline pages
        under their own tags, and the pages freed plus the reusable pages left over
        under this commit's txnid (the left-over ones with the WEAK_BORN tag). Writing the free database itself frees and
        allocates pages, so repeat until a round changes nothing.
        """
        txn = self.txn
        db = txn.free_db
        self.saving = True
        for key in self.consumed:
            self._delete(db, key)
        self.consumed = []
        tid = txn.txnid
        weak = tid | WEAK_BORN
        ptags, ppgnos = self.pending
        size = len(ptags) + len(self.freed) + len(self.freed_weak) + len(self.reuse)
        if size <= inline_free_max(txn.page_size):
            # Sorted by tag: reusable-by-anyone (0), normal by txnid, then weak ones.
            k = bisect_left(ptags, WEAK_BORN)
            reuse = list(self.reuse)
            freed = sorted(self.freed)
            freed_weak = sorted(self.freed_weak)
            tags = [0] * len(reuse) + list(ptags[:k]) + [tid] * len(freed)
            tags += ptags[k:]
            tags += [weak] * len(freed_weak)
            pgnos = reuse + list(ppgnos[:k]) + freed
            pgnos += ppgnos[k:]
            pgnos += freed_weak
            flat = [0] * (2 * len(tags))
            flat[::2] = tags
            flat[1::2] = pgnos
            self.inline = tuple(flat)
            self.saving = False
            return
        groups: dict[int, list[int]] = {}
        for t, p in zip(ptags, ppgnos):
            groups.setdefault(t, []).append(p)
        self.pending = ((), ())
        for t, pages in groups.items():
            self._write_group(db, t, sorted(pages), 0)
        # Writing the free database frees and allocates pages itself: repeat until a
        # round changes nothing.
        written = {tid: 0, weak: 0}  # records of each group written so far
        last = None
        for rounds in range(1000):
            self.extend_only = rounds >= _SAVE_ROUNDS
            # Reusable pages left over are reusable by the next writer too: recorded
            # with the WEAK_BORN tag they wait for no sync (no steady commit reaches
            # them), only for readers, as pages freed now do.
            now = (sorted(self.freed), sorted(self.freed_weak + list(self.reuse)))
            if now == last:
                break
            last = now
            written[tid] = self._write_group(db, tid, now[0], written[tid])
            written[weak] = self._write_group(db, weak, now[1], written[weak])
        else:
            raise AssertionError("free list did not settle")
        self.inline = ()
        self.saving = False

    def _write_group(self, db, tag: int, pages: list, written: int) -> int:
        """Write ``pages`` as the records of ``tag``, deleting records past them from
        an earlier round (``written`` of them). Returns the number of records."""
        chunk = chunk_size(self.txn.page_size)
        txnid = tag & ~WEAK_BORN
        flag = SEQ_WEAK_BORN if tag != txnid else 0
        records = [pages[i : i + chunk] for i in range(0, len(pages), chunk)]
        for seq, record in enumerate(records):
            self._put(db, free_key(txnid, seq | flag), encode_pgnos(record))
        for seq in range(len(records), written):
            self._delete(db, free_key(txnid, seq | flag))
        return len(records)

    def _delete(self, db, key: bytes) -> None:
        txn = self.txn
        path = descend(txn.load, db, key)
        leaf, i = path[-1]
        db.entries -= len(leaf.vals[i]) // 8 - 1
        remove_at(txn, db, path)

    def _put(self, db, key: bytes, value: bytes) -> None:
        txn = self.txn
        path = descend(txn.load, db, key)
        if path is not None:
            leaf, i = path[-1]
            if i < len(leaf.keys) and leaf.keys[i] == key:
                db.entries += (len(value) - len(leaf.vals[i])) // 8
                replace_at(txn, db, path, value, 0)
                return
        insert(txn, db, path, key, value, 0, False)
        db.entries += len(value) // 8 - 1
