"""Giving space back: moving the few tree pages that pin the file's tail.

After many deletes most of the file's end may be free, yet the file cannot be cut while
a single page there is in use. Copy-on-write never moves a page it does not touch, so a
reclaiming commit touches those pages on purpose: each is copied to the lowest free page
and its old number freed. A later commit then finds the tail free and cuts it off
(``FreeList.trim_tail``, then the file is truncated after the meta is durable).

Only branch and leaf pages of the trees this transaction knows (the main tree, the free
tree and the named databases it opened) are moved, found by walking branch pages only;
overflow runs stay where they are.
"""

from __future__ import annotations

from .btree import descend, touch_path

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
