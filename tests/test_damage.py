"""Damaged and foreign data files (docs/reference.md sections 2 and 8).

A small database (a few hundred keys, some on overflow pages, and a named database) is
built once; each test writes damaged copies of it and has a spawned child open each copy
and read every key by cursor and by get() (``_workers.read_damaged``). The child must
come back — no signal such as SIGBUS, no hang — with one outcome per file, and each
outcome must be one the damage allows:

- ``final``: exactly the data of the last commit;
- ``previous``: exactly the data of the commit before (a damaged meta falls back to the
  other meta, as after a torn meta write);
- ``error: <class>``: a ``kvmm.Error``;
- never ``wrong`` (other data) or ``crash`` (IndexError, struct.error, RecursionError...).

Which outcomes a damage allows depends on what the damaged bytes hold, read from the
original file with ``kvmm.check.Checker``: damage only to bytes no reader needs (the
older meta, free pages, overflow padding, the file's slack) must leave the last commit
readable; damage only to the newest meta must fall back to the commit before.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from pathlib import Path

import _workers
import pytest

import kvmm
from kvmm import format as fmt
from kvmm.check import Checker

SPAWN = multiprocessing.get_context("spawn")
WAIT = 120  # a child reading a batch of files; a hang fails the test after this

# What the bytes at an offset of the original file hold.
UNUSED = 0  # nothing any reader of the last commit needs
META = 1  # the newest meta
LIVE = 2  # a tree page or overflow value the read must visit
FREE_TREE = 3  # the free database: not read when reading keys


class Layout:
    """The role of every byte of the damage database's data file."""

    def __init__(self, path: str, data: bytes):
        self.size = len(data)
        with kvmm.open(path, subdir=False, readonly=True, max_dbs=2) as env:
            info = env.info()
            self.page_size = ps = env.stat()["psize"]
            with env.begin() as txn:
                checker = _RunCollector(env, txn)
                assert checker.run() == []
        self.next_pgno = info["last_pgno"] + 1
        slots = [_decode_meta(data[s * ps : (s + 1) * ps]) for s in range(fmt.NUM_METAS)]
        txnid = info["last_txnid"]
        self.active = next(s for s, m in enumerate(slots) if m and m.txnid == txnid)
        self.meta_end = _meta_extent(data[self.active * ps : (self.active + 1) * ps])
        self.roles = roles = bytearray(self.size)  # UNUSED everywhere to begin with
        base = self.active * ps
        roles[base : base + self.meta_end] = bytes([META]) * self.meta_end
        runs = dict(checker.runs)
        labels = set()
        for pgno, what in checker.seen.items():
            start = pgno * ps
            if what.startswith(("main", "database")) and "overflow run" in what:
                labels.add("overflow run")
                if pgno in runs:  # the run's first page; the padding after the value
                    end = fmt.HEADER_SIZE + runs[pgno]  # is unused
                    roles[start : start + end] = bytes([LIVE]) * end
            elif what.startswith(("main", "database")):
                labels.add(what.split(" ")[0])
                roles[start : start + ps] = bytes([LIVE]) * ps
            elif what == "free page":
                labels.add("free tree")
                roles[start : start + ps] = bytes([FREE_TREE]) * ps
            elif what.startswith(("free record", "inline free list")):
                labels.add("free page")
            else:
                raise AssertionError(f"page {pgno}: unknown use {what!r}; update Layout")
        # The file has every kind of region the damage tests are about.
        assert {"main", "database", "overflow run", "free page"} <= labels, labels
        assert self.size > self.next_pgno * ps

    def roles_of(self, offsets) -> set[int]:
        roles = self.roles
        return {roles[o] for o in offsets}


class _RunCollector(Checker):
    """The checker, also noting each overflow run's (first pgno, value length)."""

    def __init__(self, env, txn):
        super().__init__(env, txn)
        self.runs: list[tuple[int, int]] = []

    def overflow(self, name, leaf_pgno, stored, counts) -> None:
        pgno, _txnid, length = fmt.decode_overflow_ref(stored)
        self.runs.append((pgno, length))
        super().overflow(name, leaf_pgno, stored, counts)


def _decode_meta(page: bytes):
    try:
        return fmt.decode_meta(page)
    except kvmm.Error:
        return None


def _meta_extent(page: bytes) -> int:
    """The length of the meta at the start of ``page``: the shortest prefix that
    decodes (bytes after it belong to no meta)."""
    lo, hi = 1, len(page)
    while lo < hi:
        mid = (lo + hi) // 2
        if _decode_meta(page[:mid]) is None:
            lo = mid + 1
        else:
            hi = mid
    return lo


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(data file bytes, Layout) of the damage database."""
    path = str(tmp_path_factory.mktemp("damage") / "original.kvmm")
    _workers.build_damage_db(path)
    with open(path, "rb") as f:
        data = f.read()
    return data, Layout(path, data)


def _write(path: str, data, page_size: int) -> None:
    """Write ``data`` to ``path``, skipping pages of zeros (the copy stays sparse)."""
    zero = bytes(page_size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        for off in range(0, len(data), page_size):
            chunk = view[off : off + page_size]
            if chunk != zero[: len(chunk)]:
                os.pwrite(fd, chunk, off)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _read_in_children(batches: list[list], tmp_path) -> dict:
    """Run ``read_damaged`` on each batch of (path, options) in its own child, all at
    once; return every path's outcome. Fails if a child hangs, dies or raises."""
    procs = []
    for n, cases in enumerate(batches):
        out, progress = str(tmp_path / f"outcomes{n}.json"), str(tmp_path / f"progress{n}")
        proc = SPAWN.Process(target=_workers.read_damaged, args=(cases, out, progress), daemon=True)
        proc.start()
        procs.append((proc, out, progress))
    outcomes = {}
    for proc, out, progress in procs:
        proc.join(WAIT)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        if proc.exitcode != 0:
            current = "(no file yet)"
            if os.path.exists(progress):
                with open(progress) as f:
                    current = f.read()
            pytest.fail(
                f"reading {current}: the child exited with {proc.exitcode}"
                + (" (hung)" if proc.exitcode == -9 else "")
            )
        with open(out) as f:
            outcomes.update(json.load(f))
    return outcomes


def _kind(outcome: str) -> str:
    return outcome.split(":")[0]


#: What damage may raise: CorruptedError, or for a file too damaged to be recognised
#: as kvmm's (say, cut to less than its two metas), what a foreign file gets.
DAMAGE_ERRORS = ("CorruptedError", "InvalidError", "VersionMismatchError")


def _judge(outcomes: dict, allowed: dict) -> list[str]:
    """The cases whose outcome is not one of those allowed."""
    bad = []
    for path, outcome in outcomes.items():
        kind = _kind(outcome)
        if kind not in allowed[path] or (
            kind == "error" and outcome.split(":")[1].strip() not in DAMAGE_ERRORS
        ):
            bad.append(f"{os.path.basename(path)}: {outcome} (allowed: {sorted(allowed[path])})")
    return bad


def _allowed_for_damage(layout: Layout, changed) -> set[str]:
    """The outcomes a change of the bytes at offsets ``changed`` allows."""
    roles = layout.roles_of(changed)
    if roles <= {UNUSED}:
        return {"final"}
    if roles == {META}:
        return {"previous"}
    if META in roles:
        return {"previous", "error"}
    return {"final", "error"}


def _changed(before, after) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(before, after)) if a != b]


# --- tests ----------------------------------------------------------------------------


def test_truncated_file_reads_whole_or_raises_kvmm_error(original, tmp_path):
    data, layout = original
    ps, end = layout.page_size, layout.next_pgno * layout.page_size
    offsets = {k * ps for k in range(1, layout.next_pgno + 3)}
    offsets |= {
        100,
        ps + 20,
        ps + ps // 2,
        2 * ps + 1,
        end // 2 + 7,
        end - 1,
        end + 17,
        len(data) - ps,
        len(data),
    }
    cases, allowed = [], {}
    for t in sorted(offsets):
        path = str(tmp_path / f"truncated-{t}.kvmm")
        _write(path, data[:t], ps)
        cases.append((path, {}))
        if t >= end:
            allowed[path] = {"final"}  # only slack past the last page in use is gone
        elif t < layout.active * ps + layout.meta_end:
            allowed[path] = {"previous", "error"}
        else:
            allowed[path] = {"final", "error"}
    outcomes = _read_in_children([cases], tmp_path)
    assert _judge(outcomes, allowed) == []
    assert sum(_kind(o) == "error" for o in outcomes.values()) >= layout.next_pgno - 2


def test_zeroed_page_reads_whole_or_raises_kvmm_error(original, tmp_path):
    data, layout = original
    ps = layout.page_size
    pages = [*range(layout.next_pgno + 2), len(data) // ps - 1]
    cases, allowed = [], {}
    for pgno in pages:
        damaged = bytearray(data)
        damaged[pgno * ps : (pgno + 1) * ps] = bytes(ps)
        path = str(tmp_path / f"zeroed-{pgno}.kvmm")
        _write(path, damaged, ps)
        cases.append((path, {}))
        changed = [pgno * ps + i for i in range(ps) if data[pgno * ps + i]]
        allowed[path] = _allowed_for_damage(layout, changed)
    outcomes = _read_in_children([cases], tmp_path)
    assert _judge(outcomes, allowed) == []
    kinds = [_kind(o) for o in outcomes.values()]
    assert kinds.count("error") >= 10 and kinds.count("final") >= 3, kinds


def test_flipped_bits_read_whole_or_raise_kvmm_error(original, tmp_path):
    data, layout = original
    ps, end = layout.page_size, layout.next_pgno * layout.page_size
    cases, allowed = [], {}
    for seed in range(200):
        rng = random.Random(seed)
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if seed % 4 == 0:  # only bytes no reader needs: these must change nothing
                offset = rng.randrange(end + 4 * ps)
                while layout.roles[offset] != UNUSED:
                    offset = rng.randrange(end + 4 * ps)
            elif seed % 10 == 1:  # only the newest meta: the commit before is read
                offset = layout.active * ps + rng.randrange(layout.meta_end)
            else:
                offset = rng.randrange(end)
            damaged[offset] ^= 1 << rng.randrange(8)
        path = str(tmp_path / f"flipped-{seed}.kvmm")
        _write(path, damaged, ps)
        cases.append((path, {"readonly": seed % 3 == 2}))
        allowed[path] = _allowed_for_damage(
            layout, _changed(data[: end + 4 * ps], damaged[: end + 4 * ps])
        )
    outcomes = _read_in_children([cases[0::2], cases[1::2]], tmp_path)
    assert _judge(outcomes, allowed) == []
    must_be_whole = [p for p, a in allowed.items() if a == {"final"}]
    assert len(must_be_whole) >= 50
    assert sum(_kind(o) == "error" for o in outcomes.values()) >= 50


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "readonly"])
def test_file_that_is_not_kvmm_raises_invalid_error_and_is_left_unchanged(tmp_path, readonly):
    rng = random.Random(7)
    contents = {
        "random": rng.randbytes(64 << 10),
        "short-random": rng.randbytes(100),
        "text": b"this is not a kvmm data file\n" * 500,
    }
    if readonly:
        # Opened for writing, an empty file is a new database (as in LMDB: a creator
        # may not have written its metas yet); read-only, it is not a kvmm file.
        contents["empty"] = b""
    cases = []
    for name, body in contents.items():
        path = str(tmp_path / f"{name}.kvmm")
        with open(path, "wb") as f:
            f.write(body)
        cases.append((path, {"readonly": readonly}))
    outcomes = _read_in_children([cases], tmp_path)
    for path, _ in cases:
        assert outcomes[path].startswith("error: InvalidError:"), (path, outcomes[path])
    for name, body in contents.items():
        with open(tmp_path / f"{name}.kvmm", "rb") as f:
            assert f.read() == body, f"{name}: the file was changed"


# --- damage found by tools/fuzz.py: each once hung, or escaped as a non-kvmm error -------


def _fuzz_base(tmp_path):
    """A database of depth 3 with an overflow value; its newest meta and that meta's slot."""
    import kvmm.format as fmt

    path = str(tmp_path / "fz")
    env = kvmm.open(path)
    with env.begin(write=True) as txn:
        for i in range(3000):
            txn.put(b"%06d" % i, b"v" * 60)
        txn.put(b"big", b"B" * 20000)
    env.close()
    data = os.path.join(path, "data.kvmm")
    with open(data, "rb") as f:
        raw = f.read()
    metas = []
    for slot in (0, 1):
        try:
            metas.append((fmt.decode_meta(raw[slot * 4096 : (slot + 1) * 4096]), slot))
        except kvmm.Error:
            pass
    meta, slot = max(metas, key=lambda m: m[0].txnid)
    return path, data, meta, slot


def _rewrite_meta(data, slot, meta, **changes):
    import kvmm.format as fmt

    fields = {name: getattr(meta, name) for name in fmt.Meta.__slots__}
    fields.update(changes)
    with open(data, "r+b") as f:
        f.seek(slot * 4096)
        f.write(fmt.encode_meta(fmt.Meta(**fields)))


def _within(seconds, fn):
    """Run ``fn``; a hang fails the test instead of stalling the suite."""
    def alarm(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reads_fail_cleanly(path):
    from kvmm.check import check

    def read():
        with kvmm.open(path) as env:
            with env.begin() as txn:
                list(txn.cursor())
                txn.get(b"001234")
            with env.begin(write=True) as txn:
                txn.put(b"new", b"x")

    with pytest.raises(kvmm.Error):
        _within(20, read)
    assert _within(20, lambda: check(path)) != []


def test_a_branch_pointing_at_itself_raises_corrupted_error_without_hanging(tmp_path):
    import kvmm.format as fmt

    path, data, meta, _ = _fuzz_base(tmp_path)
    root, root_txnid = meta.main[0], meta.main[1]
    with open(data, "r+b") as f:
        f.seek(root * 4096)
        page = f.read(4096)
        _, n, _ = fmt.check_header(page, root, root_txnid)
        keys, kids, ktxn, _ = fmt.decode_branch(page, root, n)
        kids, ktxn = list(kids), list(ktxn)
        kids[0], ktxn[0] = root, root_txnid  # a loop
        f.seek(root * 4096)
        f.write(fmt.encode_branch(root, root_txnid, keys, kids, ktxn, 4096))
    _reads_fail_cleanly(path)


def test_a_meta_txnid_below_its_roots_raises_corrupted_error(tmp_path):
    path, data, meta, slot = _fuzz_base(tmp_path)
    _rewrite_meta(data, slot, meta, txnid=meta.main[1] - 1)
    with kvmm.open(path) as env, pytest.raises(kvmm.CorruptedError), env.begin(write=True) as txn:
        for i in range(0, 3000, 7):
            txn.put(b"%06d" % i, b"w" * 60)


def test_a_free_page_number_past_the_file_is_refused_before_any_write(tmp_path):
    path, data, meta, slot = _fuzz_base(tmp_path)
    _rewrite_meta(data, slot, meta, inline_free=(0, 1 << 40))
    before = Path(data).read_bytes()
    with kvmm.open(path) as env, pytest.raises(kvmm.CorruptedError), env.begin(write=True) as txn:
        txn.put(b"000001", b"w" * 60)
    assert Path(data).read_bytes()[8192:] == before[8192:]


def test_check_of_absurd_sizes_in_a_meta_reports_without_hanging(tmp_path):
    from kvmm.check import check

    path, data, meta, slot = _fuzz_base(tmp_path)
    _rewrite_meta(data, slot, meta, next_pgno=meta.next_pgno + (1 << 32))
    problems = _within(20, lambda: check(path))  # not a list of 2^32 page numbers
    assert any("neither used nor free" in p for p in problems), problems


def test_a_meta_naming_an_absurd_page_count_is_treated_as_damaged(tmp_path):
    """tools/fuzz.py: a meta (with a valid checksum) whose page count no file can hold
    once reached a truncate() with an integer too large for the OS."""
    path, data, meta, slot = _fuzz_base(tmp_path)
    _rewrite_meta(data, slot, meta, next_pgno=1 << 62)
    with kvmm.open(path) as env:  # the other meta: the commit before
        with env.begin(write=True) as txn:
            txn.put(b"after", b"x")
        with env.begin() as txn:
            assert txn.get(b"after") == b"x"


def test_an_empty_leaf_below_a_branch_raises_corrupted_error_when_a_cursor_steps_onto_it(
        tmp_path):
    import kvmm.format as fmt

    path, data, meta, _ = _fuzz_base(tmp_path)
    root, root_txnid = meta.main[0], meta.main[1]
    with open(data, "r+b") as f:
        # Down the rightmost edge to the last leaf; rewrite it empty, checksum and all.
        pgno, txnid = root, root_txnid
        for _ in range(meta.main[2] - 1):
            f.seek(pgno * 4096)
            page = f.read(4096)
            _, n, _ = fmt.check_header(page, pgno, txnid)
            _, kids, ktxn, _ = fmt.decode_branch(page, pgno, n)
            pgno, txnid = kids[-1], ktxn[-1]
        f.seek(pgno * 4096)
        f.write(fmt.encode_leaf(pgno, txnid, [], [], None, 4096))
    with kvmm.open(path) as env, env.begin() as txn:
        with pytest.raises(kvmm.CorruptedError, match="empty page below a branch"):
            list(txn.cursor())
        cursor = txn.cursor()
        assert cursor.first()
        with pytest.raises(kvmm.CorruptedError, match="empty page below a branch"):
            while cursor.next():
                pass
        with pytest.raises(kvmm.CorruptedError, match="empty page below a branch"):
            cursor.last()  # not False, as for an empty database
