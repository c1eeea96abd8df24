"""Free pages: which a write transaction may reuse, and how they are recorded.

A commit that stops using committed pages (the old copies of touched pages, deleted
overflow runs) records them in the *free database*, a B+tree of its own, under the
commit's txnid: key ``(txnid, seq)``, value the page numbers (at most ``chunk`` per
record, so taking a few pages never rewrites a huge record). A later writer may reuse
the pages of record ``txnid`` once no snapshot can still reach them, that is when
``txnid <= bound`` where

    bound = min(oldest live reader's snapshot, last commit, last steady commit).

The last term is what keeps ``sync=False`` safe: pages of the last commit whose pages
were synced (a *steady* commit) are never overwritten, so a power loss can always fall
back to it.

Invariants:
- Every page below ``next_pgno`` is exactly one of: reachable from a root (main tree,
  named trees, free tree, overflow runs) or listed once in the free database.
- The free database's ``entries`` counts the pages it lists, not its records.
- A page taken for reuse is removed from its record in the same commit that reuses it.
"""

from __future__ import annotations

from sortedcontainers import SortedList

from .btree import descend, insert, remove_at, replace_at
from .format import FREE_KEY, decode_pgnos, encode_pgnos, max_entry_size

# Records of the free database: key = FREE_KEY (txnid) + 4-byte sequence number.
_SEQ_BYTES = 4
# Reusing records would make this commit rewrite them; give up after this many
# rounds of "saving the free list changed the free list" and take new pages instead.
_SAVE_ROUNDS = 6


def free_key(txnid: int, seq: int) -> bytes:
    return FREE_KEY.pack(txnid) + seq.to_bytes(_SEQ_BYTES, "big")


def key_txnid(key: bytes) -> int:
    return FREE_KEY.unpack_from(key)[0]


def chunk_size(page_size: int) -> int:
    """Page numbers per free record: the most that still fit inline in a leaf."""
    return (max_entry_size(page_size) - 6 - FREE_KEY.size - _SEQ_BYTES) // 8


class FreeList:
    """A write transaction's free pages: those it may reuse and those it freed."""

    def __init__(self, txn, bound: int):
        self.txn = txn
        self.bound = bound
        self.reuse = SortedList()  # free pages this transaction may take now
        self.freed: list[int] = []  # committed pages this transaction stopped using
        self.consumed: list[bytes] = []  # free-DB keys whose pages moved into reuse
        self.next_key = b""  # the next free-DB key to look at
        self.exhausted = False  # no reusable record is left to load
        self.saving = False
        self.extend_only = False

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
        from .cursor import path_next  # the shared in-order step

        leaf, i = path[-1]
        if i >= len(leaf.keys) and not path_next(txn.load, path):
            self.exhausted = True
            return False
        leaf, i = path[-1]
        key = leaf.keys[i]
        if key_txnid(key) > self.bound:
            self.exhausted = True
            return False
        self.consumed.append(key)
        self.reuse.update(decode_pgnos(leaf.vals[i]))
        self.next_key = key + b"\0"
        return True

    def load_all(self) -> None:
        """Move every reusable record into ``reuse`` (used before giving space back)."""
        while self._load():
            pass

    # --- giving pages back ----------------------------------------------------------

    def free(self, pgno: int, n: int, dirty: bool) -> None:
        """Pages ``pgno .. pgno+n-1`` are no longer used by this transaction. Pages it
        allocated itself (``dirty``) were never committed and are reusable at once."""
        if dirty:
            self.reuse.update(range(pgno, pgno + n))
        else:
            self.freed.extend(range(pgno, pgno + n))

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
        """Record this commit's free pages in the free database.

        Consumed records are deleted; the pages freed, plus reusable pages left over,
        are written under this commit's txnid. Writing the free database itself frees
        and allocates pages, so repeat until a round changes nothing.
        """
        txn = self.txn
        db = txn.free_db
        load = txn.load
        self.saving = True
        for key in self.consumed:
            path = descend(load, db, key)
            leaf, i = path[-1]
            db.entries -= len(leaf.vals[i]) // 8 - 1
            remove_at(txn, db, path)
        self.consumed = []
        written = 0  # records of this txnid written so far
        last = None
        chunk = chunk_size(txn.page_size)
        for rounds in range(1000):
            self.extend_only = rounds >= _SAVE_ROUNDS
            pages = sorted(self.freed)
            pages += self.reuse
            if pages == last:
                break
            last = pages
            records = [pages[i : i + chunk] for i in range(0, len(pages), chunk)]
            for seq, record in enumerate(records):
                self._put(db, free_key(txn.txnid, seq), encode_pgnos(sorted(record)))
            for seq in range(len(records), written):
                path = descend(load, db, free_key(txn.txnid, seq))
                leaf, i = path[-1]
                db.entries -= len(leaf.vals[i]) // 8 - 1
                remove_at(txn, db, path)
            written = len(records)
        else:
            raise AssertionError("free list did not settle")
        self.saving = False

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
