"""The page cache (kvmm.pagecache) and page access (kvmm.pages): a byte budget kept
with O(1) work per page, nodes freed as the cache forgets them, and checksums
verified once per version of a page per process."""

from __future__ import annotations

import gc
import os
import random
import weakref

import pytest

import kvmm
from kvmm import format as fmt
from kvmm.btree import NO_LINKS, Node
from kvmm.format import u64_array
from kvmm.pagecache import PageCache, node_bytes
from kvmm.pages import _replaced


def _leaf(pgno: int, n: int = 10) -> Node:
    node = Node(pgno, 1, tuple(b"k%05d" % i for i in range(n)), tuple(b"v" * 50 for _ in range(n)))
    node.measure()
    return node


def _branch(pgno: int, n: int = 100) -> Node:
    keys = (b"",) + tuple(b"%08d" % i for i in range(1, n))
    node = Node(pgno, 1, keys, kids=fmt.u64_array(range(n)), ktxn=fmt.u64_array([1] * n))
    node.measure()
    return node


def test_the_cache_keeps_its_budget_when_branches_alone_fill_it():
    cache = PageCache(256 << 10)
    for pgno in range(2, 1000):
        cache.put(_branch(pgno))
        assert cache.bytes <= cache.budget
    assert 0 < len(cache) < 500
    assert cache.bytes == sum(node_bytes(n) for n in cache.nodes())


def test_the_cache_forgets_the_oldest_leaves_and_keeps_its_branches():
    cache = PageCache(64 << 10)
    cache.put(_branch(2, 20))
    for pgno in range(3, 400):
        cache.put(_leaf(pgno))
    held = {node.pgno for node in cache.nodes()}
    assert 2 in held  # the branch, the oldest entry, stayed
    leaves = sorted(held - {2})
    assert leaves == list(range(400 - len(leaves), 400))  # the youngest leaves
    assert cache.bytes <= cache.budget


def test_one_put_into_a_full_cache_forgets_about_one_node():
    """Eviction is O(1) per page: making room for one node forgets one or two, never
    a batch, and walks nothing."""
    cache = PageCache(128 << 10)
    for pgno in range(2, 2000):
        before = len(cache)
        cache.put(_leaf(pgno))
        assert len(cache) >= before - 1


def test_the_age_queue_stays_near_the_nodes_held_under_churn_within_budget():
    """Commits that put and drop as many nodes as they free never trim: the queue's
    entries of dropped nodes are cleared out, so it stays within twice the nodes
    held (plus a constant), and the oldest node is still the first to go."""
    cache = PageCache(1 << 20)
    for pgno in range(2, 12):
        cache.put(_leaf(pgno))
    for n in range(20_000):
        pgno = 100 + n
        cache.put(_leaf(pgno))
        cache.replace([pgno], ())
        assert len(cache._order) <= 2 * (len(cache) + 1) + 1024  # checked at put
    assert {node.pgno for node in cache.nodes()} == set(range(2, 12))
    for pgno in range(10**5, 10**5 + 10**4):  # now fill past the budget
        cache.put(_leaf(pgno))
        if cache.get(2) is None:
            break
    assert all(cache.get(pgno) is not None for pgno in range(3, 12))  # younger: kept


def test_dropping_many_pages_forgets_those_held_and_keeps_the_weights():
    cache = PageCache(1 << 20)
    cache.put(_branch(2, 20))
    for pgno in range(3, 40):
        cache.put(_leaf(pgno))
    cache.replace([2, 5, 6, 7, 1000, 5000, 5], ())  # some not held, one twice
    held = {node.pgno for node in cache.nodes()}
    assert held == set(range(3, 40)) - {5, 6, 7}
    assert cache.bytes == sum(node_bytes(n) for n in cache.nodes())
    cache.put(_branch(2, 20))  # the branches' share was taken off too: the budget holds
    assert cache.bytes == sum(node_bytes(n) for n in cache.nodes())


def test_a_commits_replace_forgets_the_freed_pages_and_holds_its_nodes_within_budget():
    """What a commit does in one call: the freed pgnos go (also one a new node takes
    again), the new nodes stay (the youngest), the weights stay exact and the budget
    holds once the call returns."""
    cache = PageCache(128 << 10)
    for pgno in range(2, 60):
        cache.put(_leaf(pgno))
    before = len(cache)
    new = [_leaf(pgno) for pgno in (10, 200, 201, 202)]  # 10: freed, then reused
    cache.replace([10, 11, 12, 9999], new)
    assert cache.bytes <= cache.budget
    assert cache.bytes == sum(node_bytes(n) for n in cache.nodes())
    assert len(cache) == len(cache.nodes())
    assert all(cache.get(node.pgno) is node for node in new)
    assert cache.get(11) is None and cache.get(12) is None
    assert len(cache) == before - 3 + len(new)  # nothing trimmed: within budget
    many = [_leaf(1000 + i) for i in range(400)]  # more than the budget holds
    cache.replace((), many)
    assert cache.bytes <= cache.budget
    assert cache.bytes == sum(node_bytes(n) for n in cache.nodes())
    held = sorted(node.pgno for node in cache.nodes())
    assert held == list(range(1400 - len(held), 1400))  # the youngest of the batch


def test_the_lookup_by_slot_finds_exactly_the_nodes_held():
    """``lookup`` indexes slots by pgno: the node held, None where none is, IndexError
    past the highest pgno ever held (callers take it as a miss); ``get`` is None there."""
    cache = PageCache(64 << 10)
    with pytest.raises(IndexError):
        cache.lookup(2)
    assert cache.get(2) is None
    nodes = {pgno: _leaf(pgno) for pgno in (2, 9, 40)}
    for node in nodes.values():
        cache.put(node)
    for pgno in range(41):
        assert cache.lookup(pgno) is nodes.get(pgno)
    with pytest.raises(IndexError):
        cache.lookup(10**6)
    assert cache.get(10**6) is None
    newer = _leaf(9)
    cache.put(newer)  # replaces the entry of its pgno
    cache.drop(40)
    cache.replace([2], ())
    for pgno in range(200):  # then the budget pushes the oldest out, slots and all
        cache.put(_leaf(50 + pgno))
    held = {node.pgno: node for node in cache.nodes()}
    assert 0 < len(held) < 200
    for pgno in range(300):
        assert cache.get(pgno) is held.get(pgno)
    cache.clear()
    assert cache.get(9) is None and len(cache) == 0


def test_a_node_the_cache_forgets_is_freed_at_once():
    """Nodes name their children by number, never hold them: nothing keeps a
    forgotten node alive, without the cyclic GC's help."""
    cache = PageCache(64 << 10)
    first = _leaf(2)
    ref = weakref.ref(first)
    cache.put(first)
    del first
    gc.disable()
    try:
        for pgno in range(3, 400):
            cache.put(_leaf(pgno))
        assert ref() is None
    finally:
        gc.enable()


def _check_links(cache: PageCache) -> int:
    """Assert the cache's link invariant; return how many links there are."""
    links = 0
    for node in cache.nodes():
        if node.up is not None:
            assert node.up[0][node.up[1]] is node
        # No links yet: the shared read-only NO_LINKS; else one slot per child.
        assert node.ch is NO_LINKS or len(node.ch) == len(node.kids)
        for i, kid in enumerate(node.ch):
            if kid is not None:
                links += 1
                assert cache.get(kid.pgno) is kid  # held
                assert (kid.pgno, kid.txnid) == (node.kids[i], node.ktxn[i])
                assert kid.up[0] is node.ch and kid.up[1] == i
    return links


def test_links_between_cached_nodes_hold_only_nodes_the_cache_holds(tmp_path):
    """Descents link a cached branch to its cached children (``Node.ch``); a node
    the cache forgets (here: a commit frees its page) is unlinked and freed at once,
    without the cyclic GC."""
    rng = random.Random(3)
    keys = [b"%08d" % i for i in range(20_000)]
    with kvmm.open(str(tmp_path / "db"), cache_size=8 << 20) as env:
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, b"v" * 60)
        cache = env._store.cache
        gc.disable()
        try:
            for _ in range(3):
                with env.begin() as txn:
                    for key in rng.sample(keys, 3000):
                        assert txn.get(key) in (b"v" * 60, b"w" * 60)
                    with txn.cursor() as cursor:
                        assert cursor.set_range(rng.choice(keys))
                assert _check_links(cache) > 100
                linked = [kid for node in cache.nodes() for kid in node.ch if kid]
                refs = [weakref.ref(kid) for kid in linked]
                del linked
                with env.begin(write=True) as txn:  # rewrites, so frees, most leaves
                    for key in rng.sample(keys, 4000):
                        txn.put(key, b"w" * 60)
                assert _check_links(cache) >= 0
                gone = [ref for ref in refs if ref() is not None and cache.get(ref().pgno)
                        is not ref()]
                assert gone == []  # every linked node the cache forgot was freed
                assert sum(ref() is None for ref in refs) > 100
                assert cache.bytes <= cache.budget
        finally:
            gc.enable()


def test_reading_a_database_larger_than_the_cache_frees_what_it_forgets(tmp_path):
    records = {b"%08d" % i: bytes([i % 251]) * 100 for i in range(20000)}
    with kvmm.open(str(tmp_path / "db")) as env, env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    with kvmm.open(str(tmp_path / "db"), cache_size=256 << 10) as env:
        refs = []
        with env.begin() as txn:
            for key, value in records.items():
                assert txn.get(key) == value
            refs = [weakref.ref(n) for n in env._store.cache.nodes()]
        gc.disable()
        try:
            with env.begin() as txn:
                for key in reversed(records):
                    txn.get(key)
            alive = sum(ref() is not None for ref in refs)
            assert alive <= len(env._store.cache)
        finally:
            gc.enable()


@pytest.fixture
def crc_calls(monkeypatch):
    """Counts the checksum checks of tree pages, by pgno."""
    calls: dict[int, int] = {}
    real = fmt.check_crc

    def counted(page, pgno):
        calls[pgno] = calls.get(pgno, 0) + 1
        return real(page, pgno)

    monkeypatch.setattr(fmt, "check_crc", counted)
    return calls


def test_a_page_checksum_is_verified_once_per_version_per_process(tmp_path, crc_calls):
    path = str(tmp_path / "db")
    records = {b"%08d" % i: b"x" * 100 for i in range(20000)}
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    crc_calls.clear()  # of the strict mode's check after the commit, if on
    # A cache far smaller than the tree: pages are read from the map again and again.
    with kvmm.open(path, cache_size=256 << 10) as env:
        for _ in range(3):
            with env.begin() as txn:
                assert all(txn.get(key) == value for key, value in records.items())
        pages = env.stat()["branch_pages"] + env.stat()["leaf_pages"]
        assert len(crc_calls) == pages
        assert set(crc_calls.values()) == {1}
        # A commit of another environment rewrites a leaf: its new version is checked.
        with kvmm.open(path) as other, other.begin(write=True) as txn:
            txn.put(b"%08d" % 5, b"new")
        crc_calls.clear()
        with env.begin() as txn:
            assert txn.get(b"%08d" % 5) == b"new"
        assert len(crc_calls) >= 1


def test_a_damaged_new_version_of_a_verified_page_is_refused(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for i in range(2000):
            txn.put(b"%08d" % i, b"x" * 100)
    with kvmm.open(path, cache_size=256 << 10) as reader:
        with reader.begin() as txn:
            assert txn.get(b"%08d" % 7) == b"x" * 100  # verified, cached
        with kvmm.open(path) as writer:
            with writer.begin(write=True) as txn:
                txn.put(b"%08d" % 7, b"y" * 100)
            with writer.begin() as txn:
                cur = txn.cursor()
                assert cur.set_key(b"%08d" % 7)
                leaf = cur._path[-1][0]
                pgno = leaf.pgno
        ps = reader._page_size
        with open(os.path.join(path, "data.kvmm"), "r+b") as f:
            f.seek(pgno * ps + ps - 60)
            byte = f.read(1)
            f.seek(pgno * ps + ps - 60)
            f.write(bytes([byte[0] ^ 0xFF]))
        with reader.begin() as txn, pytest.raises(kvmm.CorruptedError, match="checksum"):
            txn.get(b"%08d" % 7)


@pytest.mark.parametrize("buffers", [False, True])
def test_gets_of_leaves_searched_in_the_map_match_what_was_put(tmp_path, buffers):
    """A get in a fresh environment finds each leaf in the map without decoding it:
    keys of every length, empty values, overflow values, missing keys."""
    import random

    rng = random.Random(7)
    records = {}
    for _ in range(3000):
        key = rng.randbytes(rng.choice([1, 2, 16, 40, rng.randrange(1, 512)]))
        records[key] = rng.randbytes(rng.choice([0, 1, 100, rng.randrange(0, 5000)]))
    path = str(tmp_path / "db")
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    with kvmm.open(path, cache_size=256 << 10) as env, env.begin(buffers=buffers) as txn:
        for key, value in records.items():
            got = txn.get(key)
            assert bytes(got) == value
            assert isinstance(got, memoryview) == buffers
        for _ in range(2000):
            key = rng.randbytes(rng.randrange(1, 40))
            assert txn.get(key, b"none") == records.get(key, b"none")
        leaves = [n for n in env._store.cache.nodes() if n.kids is None]
        assert leaves == []  # no get decoded a leaf


def test_a_leaf_whose_lengths_run_past_its_page_is_corrupted_not_read(tmp_path):
    """A leaf whose last value length claims the whole page, with its checksum made
    good again: only the checks of the lengths stand between it and a read past
    the page."""
    path = str(tmp_path / "db")
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for i in range(300):
            txn.put(b"%08d" % i, b"x" * 100)
    with kvmm.open(path) as env, env.begin() as txn:
        cur = txn.cursor()
        assert cur.set_key(b"%08d" % 3)
        leaf = cur._path[-1][0]
        pgno, keys = leaf.pgno, leaf.keys
        ps = env._page_size
    n = len(keys)
    with open(os.path.join(path, "data.kvmm"), "r+b") as f:
        f.seek(pgno * ps)
        page = bytearray(f.read(ps))
        at = fmt.HEADER_SIZE + 2 * n + 4 * (n - 1)
        page[at : at + 4] = ps.to_bytes(4, "little")
        page[0:4] = fmt._crc32(bytes(page[4:])).to_bytes(4, "little")
        f.seek(pgno * ps)
        f.write(page)
    with kvmm.open(path) as env, env.begin() as txn:
        for key in (keys[0], keys[-1]):  # the lengths are checked as a whole
            with pytest.raises(kvmm.CorruptedError, match=f"page {pgno}"):
                txn.get(key)


def test_a_write_transaction_takes_over_the_leaves_it_decodes_and_copies_cached_ones(
        tmp_path, monkeypatch):
    """A leaf a write transaction decodes for itself is not cached, and becomes the
    dirty page itself; a leaf the cache holds (shared with readers) is copied."""
    path = str(tmp_path / "db")
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for i in range(3000):
            txn.put(b"%08d" % i, b"x" * 100)
    copied = []
    real_copy = Node.copy

    def counted_copy(node, pgno, txnid):
        copied.append(node)
        return real_copy(node, pgno, txnid)

    monkeypatch.setattr(Node, "copy", counted_copy)
    with kvmm.open(path) as env:
        with env.begin() as txn:
            cur = txn.cursor()
            assert cur.set_key(b"%08d" % 10)  # a cursor caches the leaves it reads
            cached_leaf = cur._path[-1][0]
        assert env._store.cache.get(cached_leaf.pgno) is cached_leaf
        with env.begin(write=True) as txn:
            cur = txn.cursor()
            assert cur.set_key(b"%08d" % 2990)
            own = cur._path[-1][0]
            assert own.own and env._store.cache.get(own.pgno) is None
            txn.put(b"%08d" % 2990, b"y")
            assert not [n for n in copied if n.kids is None]  # taken over
            txn.put(b"%08d" % 10, b"y")
            assert [n for n in copied if n.kids is None] == [cached_leaf]
            assert cached_leaf.vals[cached_leaf.keys.index(b"%08d" % 10)] == b"x" * 100
        with env.begin() as txn:
            assert txn.get(b"%08d" % 2990) == b"y" and txn.get(b"%08d" % 10) == b"y"
            assert txn.get(b"%08d" % 11) == b"x" * 100


@pytest.mark.parametrize("cache_size, cached", [(64 << 20, True), (6 << 20, True), (1 << 20, False)])
def test_a_commit_caches_the_leaves_it_wrote_when_they_all_fit_in_the_cache(
        tmp_path, cache_size, cached):
    with kvmm.open(str(tmp_path), cache_size=cache_size) as env:
        with env.begin(write=True) as txn:
            for i in range(20000):
                txn.put(b"%08d" % (i * 7919 % 20000), b"v" * 100)
        leaves = [n for n in env._store.cache.nodes() if n.kids is None]
        if cached:
            assert len(leaves) == env.stat()["leaf_pages"]
        else:
            assert leaves == []


def test_the_children_a_branch_replaced_are_those_its_successor_does_not_name():
    """Pages._supersede forgets the children of an older branch version that the newer
    one does not name: rewritten in place (found by comparing the arrays whole), or
    any when a child was added or removed."""
    rng = random.Random(9)

    def branch(kids, ktxn):
        keys = (b"",) + tuple(b"%04d" % i for i in range(1, len(kids)))
        return Node(5, 7, keys, kids=u64_array(kids), ktxn=u64_array(ktxn))

    for _ in range(300):
        n = rng.randrange(1, 140)
        kids = [rng.randrange(2, 1 << 64) for _ in range(n)]
        ktxn = [rng.randrange(1, 1 << 64) for _ in range(n)]
        new_kids, new_ktxn = kids[:], ktxn[:]
        for i in rng.sample(range(n), rng.randrange(0, min(n, 6) + 1)):
            if rng.random() < 0.5:
                new_kids[i] = rng.randrange(2, 1 << 64)
            new_ktxn[i] = rng.randrange(1, 1 << 64)
        if rng.random() < 0.3:  # a split or a merge: a child more or fewer
            if rng.random() < 0.5 or n == 1:
                at = rng.randrange(n + 1)
                new_kids.insert(at, rng.randrange(2, 1 << 64))
                new_ktxn.insert(at, 1)
            else:
                at = rng.randrange(n)
                del new_kids[at], new_ktxn[at]
        named = set(zip(new_kids, new_ktxn))
        expected = [i for i in range(n) if (kids[i], ktxn[i]) not in named]
        got = _replaced(branch(kids, ktxn), branch(new_kids, new_ktxn))
        assert sorted(got) == expected


def test_a_reader_beside_a_writer_forgets_the_versions_newer_snapshots_no_longer_reach(
        tmp_path):
    """Each commit writes a new root and branches at new pgnos; a reader (here another
    environment on the file, so the writer's own cache work does not help) keeps the
    live ones and forgets the versions it met that a newer root no longer names."""
    path = str(tmp_path / "db")
    keys = [b"%08d" % i for i in range(0, 60000, 3)]
    with kvmm.open(path, sync=False) as writer, kvmm.open(path, sync=False) as reader:
        with writer.begin(write=True) as txn:
            for key in keys:
                txn.put(key, b"v" * 100)
        stat = writer.stat()
        assert stat["depth"] >= 3
        rng = random.Random(4)
        for n in range(300):
            with writer.begin(write=True) as txn:
                txn.put(rng.choice(keys), b"w%d" % n * 20)
            with reader.begin() as txn:
                for key in rng.sample(keys, 20):
                    assert txn.get(key) is not None
        cache = reader._store.cache
        branches = sum(1 for node in cache.nodes() if node.kids is not None)
        # Live branches only (give or take the last commit's), not one per commit.
        assert branches <= stat["branch_pages"] + 4, (branches, stat["branch_pages"])
