"""The copy-on-write B+tree (kvmm/btree.py), driven through the public API.

After each commit the tree is walked page by page by :func:`walk` below — written here,
apart from ``kvmm.check`` — and must satisfy the invariants listed in btree.py: keys
strictly increasing inside a page and between the parent's separators, all leaves at
one depth, no page overfull, no empty non-root page, a root branch with two children
or more, and the database record's depth and page and entry counts equal to what the
walk found. ``kvmm.check.check_env`` must agree (no problem found).
"""

from __future__ import annotations

import random
import tempfile
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmm
from kvmm import format as fmt
from kvmm.btree import Node, _split_point
from kvmm.check import check_env

PAGE_SIZES = [4096, 16384, 65536]


class Shape:
    """What a walk of one database's tree found."""

    def __init__(self):
        self.leaf_depths: set[int] = set()
        self.entries: list[tuple[bytes, int]] = []  # (key, flag) in tree order
        self.leaf_pages = 0
        self.branch_pages = 0
        self.overflow_pages = 0


def walk(env, db=None) -> tuple[Shape, tuple]:
    """Walk the newest snapshot's tree of ``db``; assert each page's invariants.
    Returns the shape found and the database's record."""
    shape = Shape()
    with env.begin(db=db) as txn:
        ps = txn.page_size
        cap = fmt.page_capacity(ps)
        state = txn._state(db)
        record = state.record()
        if state.root:
            _walk(txn, state.root, state.root_txnid, None, None, 1, True, shape, cap, ps)
    return shape, record


def _walk(txn, pgno, txnid, low, high, level, is_root, shape, cap, ps):
    node = txn.load(pgno, txnid)
    assert node.pgno == pgno
    assert node.measure() <= cap, f"page {pgno} overfull"
    body = node.keys if node.is_leaf else node.keys[1:]
    assert all(a < b for a, b in pairwise(body)), f"page {pgno}: keys not increasing"
    if body:
        assert low is None or body[0] >= low, f"page {pgno}: key below its separator"
        assert high is None or body[-1] < high, f"page {pgno}: key not below next separator"
    if node.is_leaf:
        assert node.keys or is_root, f"page {pgno}: empty non-root leaf"
        shape.leaf_pages += 1
        shape.leaf_depths.add(level)
        flags = node.flags or [0] * len(node.keys)
        for key, stored, flag in zip(node.keys, node.vals, flags):
            assert fmt.LEAF_ENTRY_COST + len(key) + len(stored) <= fmt.max_entry_size(ps)
            if flag & fmt.F_OVERFLOW:
                _, _, length = fmt.decode_overflow_ref(stored)
                shape.overflow_pages += fmt.overflow_pages(length, ps)
            shape.entries.append((key, flag))
        return
    assert node.keys[0] == b"", f"branch {pgno}: key 0 not empty"
    assert len(node.kids) >= (2 if is_root else 1), f"branch {pgno}: too few children"
    shape.branch_pages += 1
    for i, (kid, ktxn) in enumerate(zip(node.kids, node.ktxn)):
        lo = low if i == 0 else node.keys[i]
        hi = node.keys[i + 1] if i + 1 < len(node.keys) else high
        _walk(txn, kid, ktxn, lo, hi, level + 1, False, shape, cap, ps)


def assert_tree_matches(env, model: dict) -> Shape:
    """The tree's invariants hold, its record's figures are right, and it holds
    exactly ``model``."""
    shape, record = walk(env)
    _root, _root_txnid, depth, _flags, entries, branches, leaves, overflows = record
    assert len(shape.leaf_depths) <= 1, f"leaves at depths {shape.leaf_depths}"
    assert depth == (max(shape.leaf_depths) if shape.leaf_depths else 0)
    assert (entries, branches, leaves, overflows) == (
        len(shape.entries),
        shape.branch_pages,
        shape.leaf_pages,
        shape.overflow_pages,
    )
    assert [k for k, _ in shape.entries] == sorted(model)
    with env.begin() as txn:
        assert dict(txn.cursor()) == model
        stat = txn.stat()
    assert stat["entries"] == len(model) and stat["depth"] == depth
    assert check_env(env) == []
    return shape


def inline_limit(key: bytes, page_size: int) -> int:
    """The longest value kept in the leaf beside ``key``; one byte more overflows."""
    return fmt.max_entry_size(page_size) - fmt.LEAF_ENTRY_COST - len(key)


# --- random edits against a dict ----------------------------------------------------------

MAX_KEY = fmt.MAX_KEY_SIZE


def make_key(i: int, long_keys: bool) -> bytes:
    head = b"%06d" % i
    if long_keys:
        return head.ljust(MAX_KEY, b"k")  # every key of the maximum size
    return head + b"k" * (i * 37 % 60)


value_sizes = st.sampled_from(["empty", "small", "at_limit", "over_limit", "large"])


def make_value(key: bytes, size: str, page_size: int, tag: int) -> bytes:
    limit = inline_limit(key, page_size)
    n = {
        "empty": 0,
        "small": 1 + tag % 90,
        "at_limit": limit,
        "over_limit": limit + 1,
        "large": 3 * page_size + tag % 500,
    }[size]
    return bytes([tag % 251]) * n


ops = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["put", "put", "delete"]), st.integers(0, 150), value_sizes),
        min_size=1,
        max_size=40,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80)
@given(batches=ops, long_keys=st.booleans())
def test_random_puts_and_deletes_keep_every_tree_invariant_and_match_a_dict(batches, long_keys):
    model: dict[bytes, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp, kvmm.open(tmp) as env:
        for b, batch in enumerate(batches):
            with env.begin(write=True) as txn:
                for j, (op, i, size) in enumerate(batch):
                    key = make_key(i, long_keys)
                    if op == "put":
                        value = make_value(key, size, 4096, b * 41 + j)
                        assert txn.put(key, value)
                        model[key] = value
                    else:
                        assert txn.delete(key) == (key in model)
                        model.pop(key, None)
            assert_tree_matches(env, model)


def test_a_value_at_the_inline_limit_stays_in_the_leaf_and_one_byte_more_overflows(tmp_path):
    key = b"k" * MAX_KEY
    limit = inline_limit(key, 4096)
    assert limit == (4096 - 32) // 2 - 6 - 511
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            txn.put(key, b"a" * limit)
        assert env.stat()["overflow_pages"] == 0
        with env.begin(write=True) as txn:
            txn.put(key, b"b" * (limit + 1))
        assert env.stat()["overflow_pages"] == 1
        shape = assert_tree_matches(env, {key: b"b" * (limit + 1)})
        assert shape.entries == [(key, fmt.F_OVERFLOW)]
        with env.begin(write=True) as txn:
            txn.put(key, b"c" * limit)
        assert env.stat()["overflow_pages"] == 0
        assert assert_tree_matches(env, {key: b"c" * limit}).entries == [(key, 0)]


def test_an_overfull_leaf_splits_into_two_pages_that_fit(tmp_path):
    """Entries of half a page (the largest kept inline) with small ones between: the
    split point must leave both halves within a page. Sizes 2032, 49, 2032, 63 on a
    4 KiB page (capacity 4064): only a split after the second entry fits both sides."""
    half = fmt.max_entry_size(4096) - fmt.LEAF_ENTRY_COST - 1  # with a 1-byte key
    model = {b"a": b"x" * half, b"b": b"y" * 42, b"c": b"z" * half, b"d": b"w" * 56}
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for key in (b"b", b"c", b"d", b"a"):
                txn.put(key, model[key])
        shape = assert_tree_matches(env, model)
        assert shape.leaf_pages == 2 and shape.overflow_pages == 0


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_max_size_keys_with_values_at_the_inline_limit_build_a_deep_valid_tree(tmp_path, page_size):
    """Entries of exactly half a page: every leaf holds two at most, so the tree gets
    deep quickly; each split must still leave pages that fit."""
    model = {}
    rng = random.Random(page_size)
    order = list(range(60))
    rng.shuffle(order)
    with kvmm.open(str(tmp_path / "db"), page_size=page_size) as env:
        for start in range(0, 60, 20):
            with env.begin(write=True) as txn:
                for i in order[start : start + 20]:
                    key = make_key(i, True)
                    model[key] = b"v" * inline_limit(key, page_size)
                    txn.put(key, model[key])
            shape = assert_tree_matches(env, model)
        assert shape.overflow_pages == 0
        assert env.stat()["depth"] >= 2
        rng.shuffle(order)
        for start in range(0, 60, 15):
            with env.begin(write=True) as txn:
                for i in order[start : start + 15]:
                    assert txn.delete(make_key(i, True))
                    del model[make_key(i, True)]
            assert_tree_matches(env, model)
        assert env.stat()["depth"] == 0


# --- filling pages ------------------------------------------------------------------------

FILL_KEYS = 10_000
FILL_VALUE = b"v" * 20


def _fill_leaf_pages(tmp_path, name, keys, append) -> int:
    with kvmm.open(str(tmp_path / name)) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                assert txn.put(key, FILL_VALUE, append=append)
        assert_tree_matches(env, dict.fromkeys(keys, FILL_VALUE))
        return env.stat()["leaf_pages"]


def test_append_fills_leaf_pages_almost_fully_and_random_order_needs_clearly_more(tmp_path):
    keys = [b"key%07d" % i for i in range(FILL_KEYS)]
    entry = fmt.LEAF_ENTRY_COST + len(keys[0]) + len(FILL_VALUE)
    per_page = fmt.page_capacity(4096) // entry
    minimum = -(-FILL_KEYS // per_page)
    appended = _fill_leaf_pages(tmp_path, "append", keys, True)
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    random_order = _fill_leaf_pages(tmp_path, "random", shuffled, False)
    assert minimum <= appended <= minimum + 1, (minimum, appended)
    # A random-order fill leaves pages about 70% full (ln 2 on average).
    assert random_order > 1.25 * appended, (appended, random_order)


def test_append_of_a_key_not_past_the_last_is_refused_and_changes_nothing(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            assert txn.put(b"b", b"1", append=True)
            assert txn.put(b"c", b"2", append=True)
            assert not txn.put(b"a", b"3", append=True)
            assert not txn.put(b"c", b"4", append=True)
        assert_tree_matches(env, {b"b": b"1", b"c": b"2"})


def test_in_order_fills_that_start_many_leaves_and_split_branches_keep_the_tree_valid(tmp_path):
    """A put past the last key that does not fit the rightmost leaf starts a new one
    beside it (``append_leaf``) while the parent has room, and takes the general path
    when it has not (a branch split, a new root) or when the value overflows."""
    rng = random.Random(5)
    keys = [b"%06d" % i + b"k" * rng.choice((0, 40, 200, 400)) for i in range(4000)]
    model = {}
    with kvmm.open(str(tmp_path / "db"), map_size=1 << 26) as env:
        with env.begin(write=True) as txn:
            for i, key in enumerate(keys):
                value = b"%d" % i * rng.choice((1, 10, 100, 700 if i % 97 else 2000))
                assert txn.put(key, value, append=bool(i % 2))
                model[key] = value
                if i % 250 == 0:  # reads between fills see every earlier put
                    assert txn.get(keys[i // 2]) == model[keys[i // 2]]
        assert_tree_matches(env, model)
        assert env.stat()["depth"] >= 3
        with env.begin() as txn:
            leaves = _leaves(txn, txn._state(None))
        cap = fmt.page_capacity(4096)
        for leaf, following in pairwise(leaves):  # each was full when the next began
            assert leaf.measure() + following.entry_size(0) > cap, leaf.pgno


def _leaves(txn, state) -> list:
    """The leaves of a tree, left to right."""
    nodes = [txn.load(state.root, state.root_txnid)]
    while nodes[0].kids is not None:
        nodes = [txn.load(kid, ktxn) for node in nodes for kid, ktxn in zip(node.kids, node.ktxn)]
    return nodes


def test_a_cursor_opened_during_an_in_order_fill_follows_the_keys_added_after_it(tmp_path):
    """In-order puts go straight to the end of the rightmost leaf while no cursor is
    open, telling no one; a cursor opened meanwhile must see every later put,
    across leaf splits, and keep its place."""
    keys = [b"key%05d" % i for i in range(3000)]
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for key in keys[:1000]:
                assert txn.put(key, b"v" * 50, append=True)
            cursor = txn.cursor()
            assert cursor.set_key(keys[500])
            last = txn.cursor()
            assert last.last() and last.key() == keys[999]
            for i, key in enumerate(keys[1000:], 1000):
                assert txn.put(key, b"w" * 50)
                # on the last key, then on the one just put after it
                assert last.next() and last.key() == key, (i, last.key())
            assert cursor.next() and cursor.key() == keys[501]
            assert [k for k, _ in cursor] == keys[501:]  # from where it is
            assert cursor.last() and cursor.key() == keys[-1]
            assert cursor.value() == b"w" * 50
        assert_tree_matches(env, {k: b"v" * 50 if i < 1000 else b"w" * 50
                                  for i, k in enumerate(keys)})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 600)), min_size=2, max_size=60),
       st.booleans())
def test_a_split_leaves_the_larger_half_as_small_as_it_can_be(entries, leaf):
    keys = [bytes(k) for k, _ in entries]
    if leaf:
        node = Node(2, 1, keys, [bytes(v) for _, v in entries], None)
    else:
        keys[0] = b""
        node = Node(2, 1, keys, kids=list(range(len(keys))), ktxn=[1] * len(keys))
    node.measure()
    sizes = [node.entry_size(i) for i in range(len(keys))]

    def larger(m):
        return max(sum(sizes[:m]), sum(sizes[m:]))

    best = min(range(1, len(keys)), key=larger)  # the smallest count of the best
    assert _split_point(node, False) == best


# --- emptying -----------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_deleting_every_key_returns_to_an_empty_tree_with_no_pages(tmp_path, page_size):
    rng = random.Random(page_size)
    # Maximum-size keys keep branches narrow, so every page size gets a deep tree;
    # entries of a sixteenth of a page (or more) keep leaves at a handful of entries.
    value_len = max(0, page_size // 16 - fmt.LEAF_ENTRY_COST - MAX_KEY)
    model = {make_key(i, True): bytes([i % 256]) * value_len for i in range(2500)}
    model[b"big"] = b"B" * (2 * page_size)  # an overflow run to free as well
    with kvmm.open(str(tmp_path / "db"), page_size=page_size) as env:
        with env.begin(write=True) as txn:
            for key in rng.sample(list(model), len(model)):
                txn.put(key, model[key])
        assert_tree_matches(env, model)
        assert env.stat()["depth"] >= 3
        doomed = rng.sample(list(model), len(model))
        for start in range(0, len(doomed), 900):
            with env.begin(write=True) as txn:
                for key in doomed[start : start + 900]:
                    assert txn.delete(key)
                    del model[key]
            assert_tree_matches(env, model)
        assert model == {}
        stat = env.stat()
        assert stat["psize"] == page_size
        assert (
            stat["depth"],
            stat["entries"],
            stat["branch_pages"],
            stat["leaf_pages"],
            stat["overflow_pages"],
        ) == (0, 0, 0, 0, 0)
        with env.begin() as txn:
            assert txn.meta.main[:2] == (0, 0)  # no root page
            assert not txn.cursor().first()
        # The emptied tree grows again from nothing.
        with env.begin(write=True) as txn:
            txn.put(b"again", b"1")
        assert_tree_matches(env, {b"again": b"1"})
        assert env.stat()["depth"] == 1


def test_deleting_keys_in_order_from_the_left_keeps_the_tree_valid(tmp_path):
    """Deleting from one edge empties the leftmost leaves one after another: each
    must be merged away or refilled from its sibling."""
    keys = [b"%05d" % i for i in range(3000)]
    model = dict.fromkeys(keys, b"x" * 60)
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, model[key], append=True)
        for start in range(0, 3000, 500):
            with env.begin(write=True) as txn:
                for key in keys[start : start + 500]:
                    assert txn.delete(key)
                    del model[key]
            assert_tree_matches(env, model)
        assert env.stat()["leaf_pages"] == 0


@pytest.mark.parametrize("from_left", [True, False])
def test_deleting_long_keys_from_one_edge_moves_branch_entries_between_siblings(
        tmp_path, from_left):
    """With keys of 400 bytes a branch holds about nine; deleting from one edge
    leaves the edge branch underfull beside a sibling too full to merge with, so
    children move over one at a time (with their links, in strict mode checked
    after every commit)."""
    keys = [b"%05d" % i + b"k" * 400 for i in range(1200)]
    model = dict.fromkeys(keys, b"x" * 20)
    order = keys if from_left else keys[::-1]
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, model[key])
        assert env.stat()["depth"] >= 3
        for start in range(0, len(order), 100):
            with env.begin(write=True) as txn:
                for key in order[start : start + 100]:
                    assert txn.delete(key)
                    del model[key]
                # Reads in the same transaction go through the edited links.
                for key in rng_sample(model, 20):
                    assert txn.get(key) == model[key]
            assert_tree_matches(env, model)


def rng_sample(model: dict, n: int) -> list:
    keys = sorted(model)
    return keys[:: max(1, len(keys) // n)]


def test_edits_in_leaves_a_transaction_already_copied_match_a_dict_with_and_without_cursors(
        tmp_path, monkeypatch):
    """Puts and deletes that land in a leaf the transaction already copied are done in
    place, without a path (btree.put_in_place, delete_in_place); those that would
    overfill or underfill it, go past its end, or run while a cursor is open take the
    general path. Both must leave the same tree."""
    import kvmm.txn

    taken = {"put": 0, "delete": 0}
    for name, fn in (("put", kvmm.txn.put_in_place), ("delete", kvmm.txn.delete_in_place)):
        def counted(*args, _fn=fn, _name=name):
            done = _fn(*args)
            taken[_name] += done is not None
            return done
        monkeypatch.setattr(kvmm.txn, f"{name}_in_place", counted)
    rng = random.Random(5)
    model: dict[bytes, bytes] = {}
    with kvmm.open(str(tmp_path)) as env:
        for round_ in range(6):
            with env.begin(write=True) as txn:
                cursor = txn.cursor() if round_ % 3 == 2 else None
                for j in range(1500):
                    key = b"%05d" % rng.randrange(3000)
                    roll = rng.random()
                    if roll < 0.55:
                        value = bytes([j % 251]) * rng.choice((0, 8, 8, 40, 300))
                        assert txn.put(key, value)
                        model[key] = value
                    elif roll < 0.65:
                        assert txn.put(key, b"new", overwrite=False) == (key not in model)
                        model.setdefault(key, b"new")
                    else:
                        assert txn.delete(key) == (key in model)
                        model.pop(key, None)
                    if cursor is not None and j % 100 == 0:
                        cursor.set_range(key)
            assert_tree_matches(env, model)
    assert taken["put"] > 1000 and taken["delete"] > 1000, taken


def test_puts_into_clean_leaves_stop_trying_in_place_edits_until_leaves_are_dirty_again(
        tmp_path, monkeypatch):
    """put tries put_in_place while at least about a quarter of puts find their leaf
    already copied: random puts into a large committed tree first find clean leaves
    (the attempts stop), then, once most leaves are copied, dirty ones (they resume).
    The tree matches a dict either way."""
    import kvmm.txn

    tried = []  # the index of each put that tried put_in_place
    puts = 0
    real = kvmm.txn.put_in_place

    def counted(*args):
        tried.append(puts)
        return real(*args)

    monkeypatch.setattr(kvmm.txn, "put_in_place", counted)
    rng = random.Random(7)
    model = {b"%08d" % i: b"v" * 60 for i in range(0, 40000, 2)}
    with kvmm.open(str(tmp_path)) as env:
        with env.begin(write=True) as txn:
            for key in sorted(model):
                txn.put(key, model[key], append=True)
        leaves = env.stat()["leaf_pages"]
        assert leaves > 300
        tried.clear()
        with env.begin(write=True) as txn:
            for puts in range(12000):
                key = b"%08d" % rng.randrange(40000)
                value = bytes([puts % 251]) * 60
                assert txn.put(key, value)
                model[key] = value
        assert_tree_matches(env, model)
    # The first puts (at most 1 in 7 of them finds a dirty leaf) soon stop trying;
    # the last ones (nearly every leaf is dirty by then) all try.
    first = leaves // 7
    assert sum(1 for i in tried if i < first) < first // 2
    assert sum(1 for i in tried if i >= 11000) == 1000


def test_a_commit_leaves_its_cached_leaves_as_tuples_the_gc_does_not_track(tmp_path):
    import gc

    with kvmm.open(str(tmp_path)) as env:
        with env.begin(write=True) as txn:
            for i in range(5000):
                txn.put(b"%06d" % i, b"v" * 50)
        gc.collect()
        nodes = list(env._store.cache.nodes())
        assert len(nodes) > 40
        leaves = [node for node in nodes if node.kids is None]
        assert len(leaves) > 40
        for node in leaves:
            assert all(type(f) is tuple and not gc.is_tracked(f)
                       for f in (node.keys, node.vals)), node
        with env.begin() as txn:
            assert txn.get(b"004999") == b"v" * 50


def test_a_branch_copy_shares_its_keys_until_a_split_and_the_snapshot_before_keeps_them(
    tmp_path,
):
    """Node.copy gives a dirty branch its source's key tuple and copies of its child
    arrays; the first change of its keys (a child's split) gives it a list of its own,
    and the committed branch, still read by an older snapshot, stays as it was."""
    with kvmm.open(str(tmp_path)) as env:
        keys = [b"%08d" % (i * 10) for i in range(3000)]
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, b"v" * 40)
        reader = env.begin()
        root = reader.load(reader._state(None).root, reader._state(None).root_txnid)
        assert root.kids is not None and type(root.keys) is tuple
        before = (root.keys, list(root.kids), list(root.ktxn))
        with env.begin(write=True) as txn:
            txn.put(keys[5], b"w" * 40)  # replaced in place: no key of a branch changes
            state = txn._state(None)
            dirty_root = txn._dirty[state.root]
            assert dirty_root.keys is root.keys and dirty_root.kids is not root.kids
            assert dirty_root.kids.typecode == "Q" and dirty_root.ktxn.typecode == "Q"
            for i in range(2000):  # new keys between the old ones split leaves
                txn.put(b"%08d" % (i * 10 + 5), b"x" * 40)
            assert type(dirty_root.keys) is list and len(dirty_root.keys) > len(root.keys)
        assert (root.keys, list(root.kids), list(root.ktxn)) == before
        assert reader.get(keys[5]) == b"v" * 40 and reader.get(b"%08d" % 5) is None
        reader.abort()
        with env.begin() as txn:
            assert txn.get(keys[5]) == b"w" * 40 and txn.get(b"%08d" % 19995) == b"x" * 40
        assert not check_env(env)


def test_a_committed_branch_holds_copies_of_its_separators_not_the_keys_it_was_given(
        tmp_path, monkeypatch):
    """Separators are compared on every descent: a committed branch keeps its own
    copies, made together (``fresh_copies``), not the leaves' or the caller's key
    objects, wherever those lie in memory."""
    # Strict mode's check after each commit decodes the pages into the cache anew.
    monkeypatch.setattr(kvmm.txn, "_STRICT", False)
    keys = [b"key%06d" % i for i in range(3000)]
    random.Random(2).shuffle(keys)
    given = {id(key) for key in keys}
    with kvmm.open(str(tmp_path / "db")) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, b"v" * 40)
        branches = [node for node in env._store.cache.nodes() if node.kids is not None]
        assert branches
        for node in branches:
            assert type(node.keys) is tuple
            assert not given & {id(key) for key in node.keys}, node.pgno
        assert_tree_matches(env, dict.fromkeys(keys, b"v" * 40))


def test_the_dirty_pages_slots_hold_exactly_the_open_write_transactions_nodes(tmp_path):
    """DirtyPages: while a write transaction (and its children) runs, the store's slots
    hold exactly its dirty nodes; after its commit or abort, and after a child's abort
    restored the parent, they hold the parent's or nothing."""
    with kvmm.open(str(tmp_path / "db"), sync=False) as env:
        slots = env._store.dirty_slots

        def held() -> dict:
            return {pgno: node for pgno, node in enumerate(slots) if node is not None}

        rng = random.Random(5)
        keys = [b"%06d" % rng.randrange(10**6) for _ in range(3000)]
        for how in ("commit", "abort"):
            txn = env.begin(write=True)
            for key in keys:
                txn.put(key, key * 4)
            assert held() == dict(txn._dirty) and len(held()) > 20
            child = env.begin(write=True, parent=txn)
            for key in keys[::3]:
                child.delete(key)
            child.put(b"new", b"x" * 3000)
            assert held() == dict(txn._dirty)
            child.abort()
            assert held() == dict(txn._dirty)
            getattr(txn, how)()
            assert held() == {}
        with env.begin() as txn:
            assert all(txn.get(key) == key * 4 for key in keys)
