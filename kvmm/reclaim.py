"""Giving space back: when to try, and moving the few tree pages that pin the file's tail.

After many deletes most of the file's end may be free, yet the file cannot be cut while
a single page there is in use. Copy-on-write never moves a page it does not touch, so a
reclaiming commit touches those pages on purpose: each is copied to the lowest free page
and its old number freed. A later commit then finds the tail free and cuts it off
(``FreeList.trim_tail``, then the file is truncated after the meta is durable).

Only branch and leaf pages of the trees this transaction knows (the main tree, the free
tree and the named databases it opened) are moved, found by walking branch pages only;
overflow runs stay where they are.

When to try is :class:`ReclaimPolicy`'s to say (one per environment, ``Store.policy``):

- ``want_reclaim(txn)``: at a writer's begin, whether to gather every reusable page.
- ``worth_moving(txn, reusable)``: commit step 1, whether to move the pages pinning the tail.
- ``reclaimed(txn, trimmed, reusable)``: commit step 3, when to try again after an attempt.
- ``steady_to_give_back(txn)``: with sync=False, whether the commit must be steady anyway.
- ``worth_giving_back(txn)``: after a commit, whether an empty commit should cut the file.
- ``give_back(txn)``: those empty commits.
"""

from __future__ import annotations

from .btree import descend, touch_path
from .errors import Error

# Free space at the end is given back when it passes half the file (more than a
# growth step leaves) and SHRINK_MIN; what stays is a slack of an eighth of the used
# size.
SHRINK_MIN = 4 << 20
# Commits between two attempts to give the tail back that found nothing to give.
RECLAIM_RETRY = 64
RECLAIM_RETRY_MAX = 4096
# While free pages are pinned, an attempt to give space back is retried after one
# commit per this many reusable pages it had to gather (see ReclaimPolicy.reclaimed).
RECLAIM_PAGES_PER_COMMIT = 16
# Move at most this many pages in one commit, and only to free a tail at least
# TAIL_GAIN times larger than what is moved.
MAX_MOVES = 64
TAIL_GAIN = 4


def tail_targets(txn) -> set[int]:
    """The used pages in the file's tail worth moving to give that tail back."""
    reuse = set(txn.freelist.reuse)
    used: list[int] = []
    best: list[int] = []
    free = 0
    p = txn.next_pgno - 1
    while p >= 2 and len(used) <= MAX_MOVES:
        if p in reuse:
            free += 1
            if free >= 64 and free >= TAIL_GAIN * len(used):
                best = used[:]
        else:
            used.append(p)
        p -= 1
    return set(best)


def relocate_tail(txn) -> int:
    """Copy the tree pages found by :func:`tail_targets` to lower free pages.
    Returns how many pages were moved. O(branch pages) reads."""
    targets = tail_targets(txn)
    if not targets:
        return 0
    moves: list = []  # (db state, key leading to the page, depth of the page)
    for state in list(txn._dbs.values()) + [txn.free_db]:
        if state.root:
            _find(txn, state, txn.load(state.root, state.root_txnid), b"", 0, targets,
                  moves)
    if moves:
        txn._changing()
    for state, key, depth in moves:
        path: list = descend(txn.load, state, key)  # type: ignore[assignment]  # not empty
        touch_path(txn, state, path[: depth + 1])
        state.changed = True
    return len(moves)


def _find(txn, state, node, low: bytes, depth: int, targets: set, moves: list) -> None:
    if depth == 0 and node.pgno in targets:
        moves.append((state, low, 0))
    if node.kids is None:
        return
    for i, kid in enumerate(node.kids):
        key = low if i == 0 else node.keys[i]
        if kid in targets:
            moves.append((state, key, depth + 1))
        if depth + 2 < state.depth:  # the child is a branch: look below it
            child = txn.load(kid, node.ktxn[i])
            _find(txn, state, child, key, depth + 1, targets, moves)


class ReclaimPolicy:
    """When a commit tries to give the file's free tail back, and when an empty commit
    follows one that freed much of the file. Its state is the back-off of attempts
    that gave little back."""

    __slots__ = ("floor", "retry", "tries", "wait")

    def __init__(self) -> None:
        self.floor = 0  # free pages after the last fruitless reclaim
        self.retry = 0  # the txnid from which to try again anyway
        self.tries = 0
        self.wait = RECLAIM_RETRY  # commits until the next try after two failed

    def want_reclaim(self, txn) -> bool:
        """Whether this commit should gather every reusable free page, to give the
        file's tail back: when an eighth of the file or more is free, and either more
        pages are free than after the last attempt that gave nothing back, or
        RECLAIM_RETRY commits have passed since (readers may have let go)."""
        free = txn.free_db.entries + len(txn.meta.inline_free) // 2
        if free < 64 or free * 8 < txn.next_pgno:
            return False
        return free * 2 > self.floor * 3 or txn.txnid >= self.retry

    @staticmethod
    def _frees_much(txn, freed: int) -> bool:
        """Whether a commit that frees ``freed`` pages is worth giving space back at
        once: a quarter of the pages in use or more (SHRINK_MIN at least), and it
        wrote nothing in the top quarter of the file (a commit that rewrote the
        whole tree into the file's end, say, leaves no free tail to cut)."""
        end = txn.next_pgno
        if freed * 4 < end or freed * txn.page_size < SHRINK_MIN:
            return False
        top = max(max(txn._dirty, default=0), max(txn._ovf_dirty, default=0))
        return top * 4 < end * 3

    def steady_to_give_back(self, txn) -> bool:
        """With sync=False, whether this commit should be steady (synced) all the
        same: it frees much of the file (or gives space back), some of it pages the
        last steady commit reaches, which only a steady commit lets go of (they may
        pin the tail)."""
        fl = txn.freelist
        return bool(fl.freed) and (txn._giving_back or self._frees_much(
            txn, len(fl.freed) + len(fl.freed_weak)))

    def worth_giving_back(self, txn) -> bool:
        """Whether the commit just made freed so much of the file that an empty
        commit should give it back now, instead of leaving the file large until the
        next writer's commit. Only when that commit may reuse them: no reader holds
        an older snapshot, the meta is durable or needs no sync (metasync), and pages
        the steady commit reaches are not counted (see ``Store.write_meta``: such a
        commit is made steady)."""
        store = txn._storage
        fl = txn.freelist
        freed = len(fl.freed_weak)
        if txn.txnid <= store.metas.picked[2]:  # this commit is steady
            freed += len(fl.freed)
        if not self._frees_much(txn, freed) or not store.metasync:
            return False
        oldest = store.oldest_reader()
        return oldest is None or oldest >= txn.txnid

    @staticmethod
    def give_back(txn) -> None:
        """The empty commits of ``worth_giving_back``, after ``txn``'s: each gathers
        the reusable pages and cuts the file's free tail (see ``want_reclaim``). The
        first one frees the free tree's own old pages as it empties it; they may pin
        the tail until a commit after it (steady, see ``steady_to_give_back``), so a
        second one follows when the first cut nothing. They take the writer lock
        again, after any writer waiting for it. Giving space back is optional: a
        failure here leaves the file as the last commit left it."""
        env = txn.env
        store = txn._storage
        for _ in range(2):
            size = store.file_size
            try:
                empty = env.begin(write=True)
            except Error:
                return
            empty._giving_back = True
            try:
                if not empty._reclaim:
                    empty._reclaim = True
                    empty.freelist.load_all()
                empty.commit()
            except Error:
                empty.abort()
                return  # the commit stands; the space is given back by a later one
            if store.file_size < size:
                return

    @staticmethod
    def worth_moving(txn, reusable: int) -> bool:
        """Move pages that pin the tail only when most free pages are reusable: while
        readers (or, with sync=False, the last steady commit) pin them, moving would
        not free the tail yet."""
        return reusable * 2 >= txn.free_db.entries + len(txn.meta.inline_free) // 2

    def reclaimed(self, txn, trimmed: int, reusable: int) -> None:
        """After an attempt. While free pages are pinned, try again soon: after a
        number of commits in proportion to the reusable pages it gathered, what an
        attempt costs (at 10^6 records, ~10^4 reusable pages once sync=False leaves
        half the file waiting for the next sync: gathered every 8 commits, they made
        each commit several times slower). A tail still in use is often the free tree
        itself, which the attempt moved down, so one more attempt follows; after two
        that gave nothing back, attempts wait (see ``want_reclaim``), twice as long
        after each such pair, up to RECLAIM_RETRY_MAX commits: an attempt gathers every
        reusable page, which costs milliseconds in a large file whose tail stays in
        use (say, after rewriting every key in one transaction). An attempt that cut
        less than 1/64 of the file counts as one that gave nothing back: else a tail
        that frees a few pages per commit would have every commit gather them all."""
        if trimmed * 64 >= txn.next_pgno + trimmed:
            self.tries = 0
            self.wait = RECLAIM_RETRY
            return
        if not self.worth_moving(txn, reusable):
            # Gathering the reusable pages and writing them back costs about 0.4 µs
            # a page: wait commits in proportion, so this costs the commits in
            # between a few µs each at most (a commit of 10 puts takes ~500 µs).
            self.retry = txn.txnid + max(RECLAIM_RETRY // 8,
                                         reusable // RECLAIM_PAGES_PER_COMMIT)
            self.floor = txn.free_db.entries + len(txn.freelist.inline) // 2
            return
        self.tries += 1
        if self.tries >= 2:
            self.tries = 0
            self.floor = txn.free_db.entries + len(txn.freelist.inline) // 2
            self.retry = txn.txnid + self.wait
            self.wait = min(2 * self.wait, RECLAIM_RETRY_MAX)
