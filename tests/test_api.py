"""kvmm's public API, one promise of docs/reference.md per test.

Each test's name says what it proves. The `env` fixture (conftest.py) is a fresh
environment with ``max_dbs=8``; tests that need other options open their own.
"""

from __future__ import annotations

import gc
import os
import stat as stat_module
import threading
import weakref

import lmdb
import pytest

import kvmm

#: The error classes docs/reference.md section 11 names.
REFERENCE_ERRORS = [
    "InvalidError",
    "VersionMismatchError",
    "CorruptedError",
    "MapFullError",
    "ReadonlyError",
    "BadValsizeError",
    "BadTxnError",
    "BadDbiError",
    "DbsFullError",
    "ReadersFullError",
    "LockError",
    "DiskError",
    "InvalidParameterError",
    "NotFoundError",
]

MIB = 1024 * 1024


def _data_file(path) -> str:
    return os.path.join(str(path), "data.kvmm")


def _fill(env, records: dict, db=None) -> None:
    with env.begin(write=True, db=db) as txn:
        for key, value in records.items():
            txn.put(key, value)


def _contents(env, db=None) -> list:
    with env.begin(db=db) as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor()]


# -- files and options ------------------------------------------------------------------


def test_subdir_true_makes_a_directory_with_data_and_lock_files(tmp_path):
    path = tmp_path / "db"
    with kvmm.open(str(path)) as env:
        _fill(env, {b"k": b"v"})
    assert path.is_dir()
    assert sorted(os.listdir(path)) == ["data.kvmm", "lock.kvmm"]


def test_subdir_false_uses_path_as_data_file_and_path_lock_as_lock_file(tmp_path):
    path = tmp_path / "db.kvmm"
    with kvmm.open(str(path), subdir=False) as env:
        _fill(env, {b"k": b"v"})
        assert env.path() == str(path)
    assert path.is_file()
    assert (tmp_path / "db.kvmm-lock").is_file()
    assert sorted(os.listdir(tmp_path)) == ["db.kvmm", "db.kvmm-lock"]
    with kvmm.open(str(path), subdir=False) as env:
        assert _contents(env) == [(b"k", b"v")]


def test_path_returns_the_path_given_to_open(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        assert env.path() == str(tmp_path / "db")


@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_page_size_is_chosen_at_creation_and_read_back_from_the_file(tmp_path, page_size):
    path = str(tmp_path / "db")
    with kvmm.open(path, page_size=page_size) as env:
        assert env.stat()["psize"] == page_size
        _fill(env, {b"k%05d" % i: b"v" * 100 for i in range(500)})
    # Reopened with the default option, the file's own page size wins.
    with kvmm.open(path) as env:
        assert env.stat()["psize"] == page_size
        assert len(_contents(env)) == 500
    assert os.path.getsize(_data_file(path)) % page_size == 0


@pytest.mark.parametrize("page_size", [1024, 2048, 5000, 131072])
def test_page_size_outside_powers_of_two_4096_to_65536_is_refused(tmp_path, page_size):
    with pytest.raises((kvmm.Error, ValueError)):
        kvmm.open(str(tmp_path / "db"), page_size=page_size).close()


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat_module.S_IMODE(os.stat(path).st_mode)


def test_files_are_created_with_mode_0644_by_default(tmp_path, umask_022):
    path = tmp_path / "db"
    kvmm.open(str(path)).close()
    assert _mode(path / "data.kvmm") == 0o644
    assert _mode(path / "lock.kvmm") == 0o644


def test_files_are_created_with_the_mode_option_masked_by_the_umask(tmp_path, umask_022):
    path = tmp_path / "db"
    kvmm.open(str(path), mode=0o600).close()
    assert _mode(path / "data.kvmm") == 0o600
    assert _mode(path / "lock.kvmm") == 0o600
    path2 = tmp_path / "db2"
    kvmm.open(str(path2), mode=0o666).close()
    assert _mode(path2 / "data.kvmm") == 0o644


def test_readonly_environment_refuses_writes_with_readonly_error(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path) as env:
        _fill(env, {b"k": b"v"})
    with kvmm.open(path, readonly=True) as env:
        with pytest.raises(kvmm.ReadonlyError):
            env.begin(write=True)
        with env.begin() as txn:
            assert txn.get(b"k") == b"v"
            with pytest.raises(kvmm.ReadonlyError):
                txn.put(b"k2", b"v2")
    with kvmm.open(path) as env:
        assert _contents(env) == [(b"k", b"v")]


def test_put_in_a_read_transaction_raises_readonly_error(env):
    with env.begin() as txn, pytest.raises(kvmm.ReadonlyError):
        txn.put(b"k", b"v")
    assert _contents(env) == []


def test_create_false_on_a_missing_path_raises_error_and_creates_nothing(tmp_path):
    path = tmp_path / "missing"
    with pytest.raises(kvmm.Error):
        kvmm.open(str(path), create=False)
    assert not path.exists()


@pytest.mark.parametrize("subdir", [True, False])
def test_a_file_that_is_not_kvmm_is_refused_with_invalid_error_and_left_untouched(tmp_path, subdir):
    junk = b"This is not a kvmm data file, just some text.\n" * 400
    if subdir:
        (tmp_path / "db").mkdir()
        data = tmp_path / "db" / "data.kvmm"
        path = tmp_path / "db"
    else:
        data = path = tmp_path / "db.kvmm"
    data.write_bytes(junk)
    with pytest.raises(kvmm.InvalidError):
        kvmm.open(str(path), subdir=subdir)
    assert data.read_bytes() == junk


def test_a_short_file_that_is_not_kvmm_is_refused_with_invalid_error(tmp_path):
    data = tmp_path / "db.kvmm"
    data.write_bytes(b"LMDB? no.")
    with pytest.raises(kvmm.InvalidError):
        kvmm.open(str(data), subdir=False)
    assert data.read_bytes() == b"LMDB? no."


def _tree_state(root) -> dict:
    """Every path under ``root`` with its bytes (None for a directory) and mtime."""
    return {str(p): (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "readonly"])
@pytest.mark.parametrize("lmdb_subdir, kvmm_subdir", [(True, True), (True, False),
                                                      (False, False), (False, True)])
def test_an_lmdb_environment_is_refused_naming_kvmm_migrate_and_left_untouched(
        tmp_path, lmdb_subdir, kvmm_subdir, readonly):
    """docs/reference.md section 2: no data.kvmm appears beside LMDB's data.mdb (the data would look gone),
    no lock file is made, no byte changes."""
    path = str(tmp_path / ("lmdbdir" if lmdb_subdir else "lmdb.file"))
    source = lmdb.open(path, subdir=lmdb_subdir, map_size=1 << 20)
    with source.begin(write=True) as txn:
        txn.put(b"kept", b"1")
    source.close()
    before = _tree_state(tmp_path)
    with pytest.raises(kvmm.InvalidError) as raised:
        kvmm.open(path, subdir=kvmm_subdir, readonly=readonly)
    assert f"kvmm migrate {path} NEW_PATH" in str(raised.value)
    assert _tree_state(tmp_path) == before


def test_a_directory_holding_kvmm_and_lmdb_data_opens_as_kvmm(tmp_path):
    path = str(tmp_path / "both")
    with kvmm.open(path) as env:
        _fill(env, {b"kvmm": b"1"})
    source = lmdb.open(path, map_size=1 << 20)
    with source.begin(write=True) as txn:
        txn.put(b"lmdb", b"1")
    source.close()
    with kvmm.open(path) as env:
        assert _contents(env) == [(b"kvmm", b"1")]


@pytest.mark.parametrize("header, byteorder", [(16, "little"), (16, "big"), (12, "little"),
                                               (12, "big")])
def test_lmdb_data_files_of_32_and_64_bit_builds_in_either_byte_order_are_recognised(
        header, byteorder):
    from kvmm.lmdbfiles import is_lmdb_data

    meta = bytes(header) + (0xBEEFC0DE).to_bytes(4, byteorder) + (1).to_bytes(4, byteorder)
    assert is_lmdb_data(meta)
    assert not is_lmdb_data(meta[:header + 3])
    assert not is_lmdb_data(bytes(header) + b"kvmm" + bytes(4))


# -- context managers -------------------------------------------------------------------


def test_environment_context_manager_closes_the_environment(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env:
        _fill(env, {b"k": b"v"})
    with pytest.raises(kvmm.Error):
        env.begin()


def test_closing_the_environment_aborts_its_open_transactions(tmp_path):
    """As in py-lmdb: what was not committed is lost, and using a transaction or
    cursor of a closed environment raises kvmm.Error (not an error of a closed
    file descriptor)."""
    path = str(tmp_path / "db")
    env = kvmm.open(path)
    _fill(env, {b"kept": b"1"})
    writer = env.begin(write=True)
    for i in range(200):  # in order: the put fast path is warm
        writer.put(b"k%04d" % i, b"v")
    reader = env.begin()
    cursor = reader.cursor()
    assert cursor.first()
    env.close()
    with pytest.raises(kvmm.Error):
        writer.put(b"k9999", b"v")
    with pytest.raises(kvmm.Error):
        writer.commit()
    with pytest.raises(kvmm.Error):
        reader.get(b"kept")
    with pytest.raises(kvmm.Error):
        cursor.next()
    with kvmm.open(path) as env:
        assert _contents(env) == [(b"kept", b"1")]


@pytest.fixture
def no_gc():
    """The cyclic garbage collector off for the test: what it frees, reference counting
    frees."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _reader_txnids(env) -> list[int]:
    """The snapshots pinned in the reader table (``-``: a slot that pins none)."""
    rows = [line.split() for line in env.readers().splitlines()[1:] if line.strip()]
    return [int(row[2]) for row in rows if row[2] not in ("-", "0")]


def _abandon(env, write, cursors, db=None) -> weakref.ref:
    """Begin a transaction, use it (and cursors on it), and return without ending it;
    a weak reference to it is returned."""
    txn = env.begin(write=write, db=db)
    if write:
        txn.put(b"abandoned", b"1")
    txn.get(b"abandoned")
    if cursors:
        cur = txn.cursor()
        cur.first()
        txn.cursor().set_range(b"a")  # one dropped at once, one held by a local
    return weakref.ref(txn)


@pytest.mark.parametrize("dupsort", [False, True])
@pytest.mark.parametrize("cursors", [False, True])
def test_a_dropped_write_transaction_aborts_and_frees_the_writer_lock_at_once(
        env, no_gc, cursors, dupsort):
    """docs/reference.md section 10, as py-lmdb: the next write transaction of the same thread begins at
    once, sees nothing of the dropped one, and the environment closes cleanly."""
    db = env.open_db(b"dups", dupsort=True) if dupsort else None
    ref = _abandon(env, True, cursors, db)
    assert ref() is None
    with env.begin(write=True, db=db) as txn:
        assert txn.get(b"abandoned") is None
        txn.put(b"next", b"2")
    env.close()


@pytest.mark.parametrize("cursors", [False, True])
def test_a_dropped_read_transaction_frees_its_reader_slot_at_once(env, no_gc, cursors):
    with env.begin(write=True) as txn:
        txn.put(b"abandoned", b"1")
    ref = _abandon(env, False, cursors)
    assert ref() is None
    assert _reader_txnids(env) == []


def test_a_write_transaction_dropped_in_another_thread_lets_this_thread_write(env, no_gc):
    refs = []
    worker = threading.Thread(target=lambda: refs.append(_abandon(env, True, True)))
    worker.start()
    worker.join()
    assert refs[0]() is None
    done = []

    def write():
        with env.begin(write=True) as txn:
            done.append(txn.get(b"abandoned"))

    writer = threading.Thread(target=write, daemon=True)  # a hang fails, not blocks
    writer.start()
    writer.join(60)
    assert done == [None]


def test_a_write_transaction_that_fails_to_begin_leaves_the_writer_lock_to_its_holder(env):
    """A second begin(write=True) in the thread that writes raises BadTxnError; the
    failed transaction's finalizer must not release the first one's lock."""
    first = env.begin(write=True)
    with pytest.raises(kvmm.BadTxnError):
        env.begin(write=True)
    gc.collect()
    first.put(b"k", b"v")
    first.commit()  # raised LockError when the failed begin had released the lock
    with env.begin() as txn:
        assert txn.get(b"k") == b"v"


def test_write_transaction_context_manager_commits_on_normal_exit(env):
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    assert _contents(env) == [(b"k", b"v")]


def test_write_transaction_context_manager_aborts_on_exception(env):
    _fill(env, {b"kept": b"1"})
    with pytest.raises(RuntimeError), env.begin(write=True) as txn:
        txn.put(b"lost", b"2")
        txn.delete(b"kept")
        raise RuntimeError("boom")
    assert _contents(env) == [(b"kept", b"1")]
    # The writer lock was released: another write transaction can begin.
    with env.begin(write=True) as txn:
        txn.put(b"after", b"3")
    assert _contents(env) == [(b"after", b"3"), (b"kept", b"1")]


def test_cursor_context_manager_closes_the_cursor(env):
    _fill(env, {b"a": b"1", b"b": b"2"})
    with env.begin() as txn:
        with txn.cursor() as cursor:
            assert cursor.first()
            assert cursor.item() == (b"a", b"1")
        with pytest.raises(kvmm.Error):
            cursor.first()
        assert txn.get(b"b") == b"2"


def test_iterating_a_cursor_yields_records_in_key_order(env):
    records = {bytes([b]): bytes([b]) * 3 for b in (5, 1, 200, 3, 0, 255)}
    _fill(env, records)
    with env.begin() as txn:
        assert [(k, v) for k, v in txn.cursor()] == sorted(records.items())


def test_a_cursor_moved_by_iteration_then_by_next_goes_on_from_where_iteration_stopped(env):
    """Iterating a read transaction's cursor walks its leaves directly; next(), item()
    and prev() afterwards continue from the entry the iteration stopped on, also when
    it stopped in a later leaf than the cursor started in."""
    records = {b"k%05d" % i: b"v%d" % i for i in range(3000)}
    _fill(env, records)
    order = sorted(records)
    with env.begin() as txn:
        cursor = txn.cursor()
        assert cursor.set_range(b"k00010") and cursor.next()  # the fast path is armed
        for stop, (key, _) in enumerate(cursor, start=11):
            if stop == 2500:  # leaves later
                break
        assert key == order[2500] and cursor.key() == key
        assert cursor.next() and cursor.item() == (order[2501], records[order[2501]])
        assert cursor.prev() and cursor.prev() and cursor.key() == order[2499]


# -- transactions -----------------------------------------------------------------------


def test_read_transaction_keeps_its_snapshot_after_a_later_commit(env):
    _fill(env, {b"a": b"old", b"b": b"old"})
    reader = env.begin()
    cursor = reader.cursor()
    assert cursor.first()
    with env.begin(write=True) as txn:
        txn.put(b"a", b"new")
        txn.delete(b"b")
        txn.put(b"c", b"new")
    assert reader.get(b"a") == b"old"
    assert reader.get(b"b") == b"old"
    assert reader.get(b"c") is None
    assert list(reader.cursor()) == [(b"a", b"old"), (b"b", b"old")]
    assert cursor.next() and cursor.item() == (b"b", b"old")
    assert reader.stat(env.open_db())["entries"] == 2
    reader.abort()
    assert _contents(env) == [(b"a", b"new"), (b"c", b"new")]


def test_gets_of_a_read_transaction_after_its_first_follow_its_default_database(env):
    """A read transaction's gets start from the root its first get found: they must
    still honour db=, key checks, buffers, a named default database and the end of
    the transaction."""
    _fill(env, {b"k%04d" % i: b"main" for i in range(500)})
    named = env.open_db(b"named")
    with env.begin(write=True, db=named) as txn:
        txn.put(b"k0001", b"named")
    with env.begin() as reader:
        assert reader.get(b"k0001") == b"main"
        assert reader.get(b"k0499") == b"main"
        assert reader.get(b"nope", b"dflt") == b"dflt"
        assert reader.get(b"k0001", db=named) == b"named"
        assert reader.get(bytearray(b"k0002")) == b"main"
        with pytest.raises(kvmm.BadValsizeError):
            reader.get(b"")
    with env.begin() as reader:
        assert reader.get(b"k0001", db=named) == b"named"
        assert reader.get(b"k0001") == b"main"
    with env.begin(db=named) as reader:
        assert reader.get(b"k0001") == b"named"
        assert reader.get(b"k0002") is None
        assert reader.get(b"k0002", db=env.open_db()) == b"main"
    with env.begin(buffers=True) as reader:
        assert reader.get(b"k0001") == b"main"
        assert isinstance(reader.get(b"k0003"), memoryview)
    reader = env.begin()
    assert reader.get(b"k0001") == b"main"
    reader.abort()
    with pytest.raises(kvmm.Error):
        reader.get(b"k0001")


def test_in_order_puts_to_two_databases_interleaved_each_land_in_their_own(env):
    """put's fast path for keys past the last one caches the rightmost leaf of the
    database a put named: puts naming another database, or the same one another way
    (None and the main database's handle), must not use it."""
    named = env.open_db(b"another")  # its record sorts before the main keys
    main = env.open_db()
    with env.begin(write=True) as txn:
        for i in range(600):
            assert txn.put(b"m%05d" % i, b"main", append=True)
            assert txn.put(b"m%05d" % i, b"named", db=named)  # the same keys
            if i % 3 == 0:
                assert txn.put(b"m%05d~" % i, b"via handle", db=main, append=True)
        assert not txn.put(b"m00000", b"late", append=True)
        assert txn.stat(main)["entries"] == 600 + 200 + 1  # + the record of "another"
        assert txn.stat(named)["entries"] == 600
    with env.begin() as txn:
        got = dict(txn.cursor())
        assert got.pop(b"another") is not None
        assert got == {**{b"m%05d" % i: b"main" for i in range(600)},
                       **{b"m%05d~" % i: b"via handle" for i in range(0, 600, 3)}}
        assert dict(txn.cursor(db=named)) == {b"m%05d" % i: b"named" for i in range(600)}


def test_read_transaction_keeps_its_snapshot_across_many_commits(env):
    _fill(env, {b"k%04d" % i: b"0" * 50 for i in range(300)})
    reader = env.begin()
    for round_ in range(1, 6):
        with env.begin(write=True) as txn:
            for i in range(300):
                txn.put(b"k%04d" % i, str(round_).encode() * 50)
    assert {v for _, v in reader.cursor()} == {b"0" * 50}
    reader.abort()
    assert {v for _, v in _contents(env)} == {b"5" * 50}


def test_write_transaction_sees_its_own_changes(env):
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
        assert txn.get(b"k") == b"v"
        assert list(txn.cursor()) == [(b"k", b"v")]
        txn.delete(b"k")
        assert txn.get(b"k") is None


def test_abort_discards_every_change(env):
    _fill(env, {b"a": b"1"})
    txn = env.begin(write=True)
    txn.put(b"b", b"2")
    txn.put(b"a", b"changed")
    txn.abort()
    assert _contents(env) == [(b"a", b"1")]


def test_buffers_true_returns_memoryviews_from_get_and_cursor_reads(env):
    _fill(env, {b"k": b"value", b"l": b"x" * 10000})
    with env.begin(buffers=True) as txn:
        value = txn.get(b"k")
        assert isinstance(value, memoryview)
        assert bytes(value) == b"value"
        big = txn.get(b"l")
        assert isinstance(big, memoryview) and bytes(big) == b"x" * 10000
        cursor = txn.cursor()
        assert cursor.first()
        assert isinstance(cursor.key(), memoryview) and bytes(cursor.key()) == b"k"
        assert isinstance(cursor.value(), memoryview) and bytes(cursor.value()) == b"value"
        k, v = cursor.item()
        assert isinstance(k, memoryview) and isinstance(v, memoryview)
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        assert items == [(b"k", b"value"), (b"l", b"x" * 10000)]


def test_buffers_false_returns_bytes(env):
    _fill(env, {b"k": b"value"})
    with env.begin() as txn:
        assert type(txn.get(b"k")) is bytes
        cursor = txn.cursor()
        cursor.first()
        assert type(cursor.key()) is bytes and type(cursor.value()) is bytes


def test_str_key_or_value_raises_type_error(env):
    with env.begin(write=True) as txn:
        with pytest.raises(TypeError):
            txn.put("key", b"v")
        with pytest.raises(TypeError):
            txn.put(b"key", "v")
        with pytest.raises(TypeError):
            txn.get("key")
        with pytest.raises(TypeError):
            txn.put(1, b"v")
        assert list(txn.cursor()) == []


def test_bytearray_and_memoryview_are_accepted_as_keys_and_values(env):
    with env.begin(write=True) as txn:
        assert txn.put(bytearray(b"k1"), bytearray(b"v1"))
        assert txn.put(memoryview(b"k2"), memoryview(b"v2"))
        assert txn.put(memoryview(b"xk3y")[1:3], b"v3")
    with env.begin() as txn:
        assert txn.get(bytearray(b"k1")) == b"v1"
        assert txn.get(memoryview(b"k2")) == b"v2"
        assert txn.get(b"k3") == b"v3"
        assert txn.cursor().set_key(bytearray(b"k2"))


def test_max_key_size_is_at_least_511_and_such_a_key_is_stored(env):
    assert env.max_key_size() >= 511
    key = b"k" * env.max_key_size()
    _fill(env, {key: b"v"})
    with env.begin() as txn:
        assert txn.get(key) == b"v"


def test_512_byte_key_raises_bad_valsize_error_as_in_py_lmdb(env):
    assert env.max_key_size() == 511
    with env.begin(write=True) as txn, pytest.raises(kvmm.BadValsizeError):
        txn.put(b"k" * 512, b"v")


@pytest.mark.parametrize("too_long", [False, True], ids=["empty", "max_key_size+1"])
def test_empty_or_too_long_key_raises_bad_valsize_error_and_changes_nothing(env, too_long):
    _fill(env, {b"a": b"1"})
    key = b"k" * (env.max_key_size() + 1) if too_long else b""
    with env.begin(write=True) as txn:
        with pytest.raises(kvmm.BadValsizeError):
            txn.put(key, b"v")
        with pytest.raises(kvmm.BadValsizeError):
            txn.cursor().put(key, b"v")
        with pytest.raises(kvmm.BadValsizeError):
            txn.replace(key, b"v")
        with pytest.raises(kvmm.BadValsizeError):
            txn.cursor().putmulti([(key, b"v")])
        assert list(txn.cursor()) == [(b"a", b"1")]
    assert _contents(env) == [(b"a", b"1")]


@pytest.mark.parametrize("size", [0, 1, 4000, 5 * MIB])
def test_values_of_any_size_round_trip_through_commit_and_reopen(tmp_path, size):
    path = str(tmp_path / "db")
    value = os.urandom(size)
    with kvmm.open(path) as env:
        _fill(env, {b"before": b"1", b"v": value, b"w": b"2"})
        with env.begin() as txn:
            assert txn.get(b"v") == value
    with kvmm.open(path) as env:
        assert _contents(env) == [(b"before", b"1"), (b"v", value), (b"w", b"2")]


def test_a_large_value_uses_overflow_pages(env):
    _fill(env, {b"big": b"x" * 100000})
    assert env.stat()["overflow_pages"] >= 100000 // env.stat()["psize"]


def test_a_committed_transaction_raises_error_when_used(env):
    txn = env.begin(write=True)
    cursor = txn.cursor()
    txn.put(b"k", b"v")
    txn.commit()
    for use in (
        lambda: txn.get(b"k"),
        lambda: txn.put(b"k2", b"v"),
        lambda: txn.delete(b"k"),
        lambda: txn.cursor(),
        lambda: txn.commit(),
        lambda: cursor.first(),
        lambda: cursor.key(),
        lambda: cursor.set_key(b"k"),
        lambda: list(cursor),
    ):
        with pytest.raises(kvmm.Error):
            use()
    assert _contents(env) == [(b"k", b"v")]


def test_an_aborted_read_transaction_and_its_cursor_raise_error_when_used(env):
    _fill(env, {b"k": b"v"})
    txn = env.begin()
    cursor = txn.cursor()
    assert cursor.first()
    txn.abort()
    with pytest.raises(kvmm.Error):
        txn.get(b"k")
    with pytest.raises(kvmm.Error):
        cursor.next()
    with pytest.raises(kvmm.Error):
        cursor.value()


def test_an_iterator_of_a_finished_transaction_raises_error(env):
    _fill(env, {b"a": b"1", b"b": b"2"})
    txn = env.begin()
    it = txn.cursor().iternext()
    assert next(it) == (b"a", b"1")
    txn.abort()
    with pytest.raises(kvmm.Error):
        next(it)


def test_transaction_ids_increase_with_each_commit(env):
    ids = []
    for i in range(3):
        with env.begin(write=True) as txn:
            txn.put(b"k", b"%d" % i)
            ids.append(txn.id())
        with env.begin() as reader:
            assert reader.id() == ids[-1] == env.info()["last_txnid"]
    assert ids == sorted(set(ids))
    with env.begin(write=True) as txn:
        assert txn.id() > ids[-1]


# -- cursors ----------------------------------------------------------------------------


def test_an_unpositioned_cursor_answers_empty_key_and_value(env):
    _fill(env, {b"b": b"1"})
    with env.begin() as txn:
        cursor = txn.cursor()
        assert cursor.key() == b"" and cursor.value() == b""
        assert cursor.item() == (b"", b"")
        assert not cursor.set_key(b"a")
        assert cursor.key() == b"" and cursor.value() == b""
        assert not cursor.set_range(b"c")
        assert cursor.item() == (b"", b"")


def test_cursor_stays_valid_across_puts_and_deletes_in_its_transaction(env):
    _fill(env, {b"k%04d" % i: b"v" * 200 for i in range(0, 2000, 2)})
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        assert cursor.set_key(b"k1000")
        # Enough writes on both sides of the cursor to split and merge pages.
        for i in range(1, 2000, 2):
            txn.put(b"k%04d" % i, b"w" * 200)
        assert cursor.key() == b"k1000"
        for i in range(0, 2000, 3):
            if i != 1000:
                txn.delete(b"k%04d" % i)
        assert cursor.key() == b"k1000"
        assert cursor.next() and cursor.key() == b"k1001"
        assert cursor.prev() and cursor.prev() and cursor.key() == b"k0998"


def test_cursors_moved_by_next_keep_their_entry_through_writes_before_them(env):
    """next() within a leaf does not note the cursor's key; the transaction has every
    positioned cursor note it just before the tree changes."""
    model = {b"k%04d" % i: b"v" for i in range(0, 400, 4)}
    _fill(env, model)
    with env.begin(write=True) as txn:
        a, b = txn.cursor(), txn.cursor()
        assert a.first()
        for _ in range(10):
            assert a.next()
        assert b.set_range(b"k0201") and b.next()
        ka, kb = a.key(), b.key()
        assert (ka, kb) == (sorted(model)[10], b"k0208")
        for key in (b"k0001", b"k0205", b"k0002"):  # before each cursor, in its leaf
            txn.put(key, b"x")
            model[key] = b"x"
            assert (a.key(), b.key()) == (ka, kb)
        order = sorted(model)
        assert a.next() and a.key() == order[order.index(ka) + 1]
        # Keys past the last one, with cursors open: in-order inserts keep them right.
        for i in range(400, 800):
            txn.put(b"k%04d" % i, b"t")
            model[b"k%04d" % i] = b"t"
        assert b.key() == kb and b.next() and b.key() == b"k0212"
        assert b.last() and b.key() == b"k0799"
        assert dict(txn.cursor()) == model


def test_cursor_put_positions_the_cursor_on_the_key(env):
    _fill(env, {b"a": b"1", b"c": b"3"})
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        assert cursor.put(b"b", b"2")
        assert cursor.item() == (b"b", b"2")
        assert cursor.next() and cursor.key() == b"c"


def test_cursor_delete_removes_the_record_and_moves_to_the_next(env):
    _fill(env, {b"a": b"1", b"b": b"2", b"c": b"3"})
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        assert cursor.set_key(b"b")
        assert cursor.delete()
        assert cursor.item() == (b"c", b"3")
        assert list(txn.cursor()) == [(b"a", b"1"), (b"c", b"3")]


def test_putmulti_and_getmulti_follow_py_lmdb(env, lmdb_env):
    items = [(b"b", b"2"), (b"a", b"1"), (b"b", b"3"), (b"c", b"4")]
    answers = []
    for e in (env, lmdb_env):
        with e.begin(write=True) as txn:
            cursor = txn.cursor()
            answers.append(
                (
                    cursor.putmulti(items),
                    cursor.putmulti([(b"a", b"x"), (b"d", b"5")], overwrite=False),
                    cursor.putmulti([(b"c", b"x"), (b"e", b"6")], append=True),
                    cursor.getmulti([b"e", b"zz", b"a"]),
                    list(txn.cursor()),
                )
            )
    assert answers[0] == answers[1]
    assert answers[0][0] == (4, 4)


# -- environment: stat, info, named databases, copy -------------------------------------


def test_env_stat_has_py_lmdb_keys_with_sensible_values(env):
    _fill(env, {b"k%05d" % i: b"v" * 100 for i in range(2000)})
    _fill(env, {b"big": b"x" * 50000})
    stat = env.stat()
    assert set(stat) >= {
        "psize",
        "depth",
        "branch_pages",
        "leaf_pages",
        "overflow_pages",
        "entries",
    }
    assert stat["psize"] == 4096
    assert stat["entries"] == 2001
    assert stat["depth"] >= 2
    assert stat["branch_pages"] >= 1
    assert stat["leaf_pages"] >= 2001 * 100 // 4096
    assert stat["overflow_pages"] >= 50000 // 4096


def test_env_info_has_py_lmdb_keys_with_sensible_values(env):
    info0 = env.info()
    assert set(info0) >= {"map_size", "last_pgno", "last_txnid", "max_readers", "num_readers"}
    assert info0["max_readers"] == 126 == env.max_readers()
    _fill(env, {b"k%05d" % i: b"v" * 100 for i in range(1000)})
    info1 = env.info()
    assert info1["last_txnid"] == info0["last_txnid"] + 1
    assert info1["last_pgno"] > info0["last_pgno"]
    assert info1["map_size"] >= (info1["last_pgno"] + 1) * env.stat()["psize"]
    with env.begin():
        assert env.info()["num_readers"] >= 1


def test_empty_environment_stat_reports_no_entries(env):
    stat = env.stat()
    assert stat["entries"] == 0 and stat["depth"] == 0 and stat["leaf_pages"] == 0


def test_named_databases_are_separate_key_spaces(env):
    a = env.open_db(b"a")
    b = env.open_db(b"b")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"in a", db=a)
        txn.put(b"k", b"in b", db=b)
        txn.put(b"k", b"in main")
    with env.begin() as txn:
        assert txn.get(b"k", db=a) == b"in a"
        assert txn.get(b"k", db=b) == b"in b"
        assert txn.get(b"k") == b"in main"
        assert txn.stat(a)["entries"] == 1
        # Each named database is a record of the main database, as in LMDB.
        assert [k for k, _ in txn.cursor()] == [b"a", b"b", b"k"]
    with env.begin(db=a) as txn:
        assert txn.get(b"k") == b"in a"


def test_named_databases_survive_reopen(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path, max_dbs=2) as env:
        _fill(env, {b"k": b"v"}, db=env.open_db(b"names"))
    with kvmm.open(path, max_dbs=2) as env:
        assert _contents(env, db=env.open_db(b"names", create=False)) == [(b"k", b"v")]


def test_opening_more_named_databases_than_max_dbs_raises_dbs_full_error(tmp_path):
    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        env.open_db(b"one")
        env.open_db(b"two")
        env.open_db(b"one")  # the same name again is not another database
        with pytest.raises(kvmm.DbsFullError):
            env.open_db(b"three")


def test_named_database_without_max_dbs_raises_dbs_full_error(tmp_path):
    with kvmm.open(str(tmp_path / "db")) as env, pytest.raises(kvmm.DbsFullError):
        env.open_db(b"one")


def test_open_db_create_false_on_a_missing_name_raises_not_found_error(env):
    with pytest.raises(kvmm.NotFoundError):
        env.open_db(b"missing", create=False)


def test_drop_with_delete_false_empties_the_database_and_keeps_it(env):
    db = env.open_db(b"d")
    _fill(env, {b"k%03d" % i: b"v" * 500 for i in range(300)}, db=db)
    with env.begin(write=True) as txn:
        txn.drop(db, delete=False)
        assert txn.stat(db)["entries"] == 0
        txn.put(b"new", b"1", db=db)
    assert _contents(env, db=db) == [(b"new", b"1")]
    with env.begin() as txn:
        assert txn.get(b"d") is not None  # still a record of the main database


def test_drop_with_delete_true_removes_the_database(env):
    db = env.open_db(b"d")
    _fill(env, {b"k%03d" % i: b"v" * 500 for i in range(300)}, db=db)
    with env.begin(write=True) as txn:
        txn.drop(db)
    with env.begin() as txn:
        assert txn.get(b"d") is None
        assert list(txn.cursor()) == []
    with pytest.raises(kvmm.NotFoundError):
        env.open_db(b"d", create=False)


def test_dropped_pages_are_reused(env):
    db = env.open_db(b"d")
    _fill(env, {b"k%04d" % i: b"v" * 500 for i in range(2000)}, db=db)
    with env.begin(write=True) as txn:
        txn.drop(db, delete=False)
    _fill(env, {b"k": b"v"})  # one more commit: the dropped pages are now reusable
    size = os.path.getsize(_data_file(env.path()))
    _fill(env, {b"k%04d" % i: b"w" * 500 for i in range(2000)}, db=db)
    assert os.path.getsize(_data_file(env.path())) <= size * 1.1


@pytest.mark.parametrize("compact", [False, True])
def test_copy_makes_an_environment_with_equal_contents(env, tmp_path, compact):
    named = env.open_db(b"named")
    main_records = {b"k%04d" % i: os.urandom(i % 700) for i in range(1500)}
    main_records[b"big"] = os.urandom(70000)
    _fill(env, main_records)
    _fill(env, {b"x": b"1", b"y": b"2"}, db=named)
    with env.begin(write=True) as txn:  # leave some free pages behind
        for i in range(0, 1500, 2):
            txn.delete(b"k%04d" % i)
    destination = tmp_path / ("compact" if compact else "copy")
    destination.mkdir()
    env.copy(str(destination), compact=compact)
    with kvmm.open(str(destination), max_dbs=8) as copy:
        # The named database's record in main holds page numbers, which compaction
        # changes: compare the records of the main database by key only for it.
        def main_records(e):
            return [(k, v if k != b"named" else None) for k, v in _contents(e)]

        assert main_records(copy) == main_records(env)
        assert _contents(copy, db=copy.open_db(b"named", create=False)) == [
            (b"x", b"1"),
            (b"y", b"2"),
        ]
    if compact:
        assert os.path.getsize(destination / "data.kvmm") <= os.path.getsize(_data_file(env.path()))


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REFERENCE_ERRORS)
def test_spec_error_class_exists_subclasses_error_and_has_a_docstring(name):
    cls = getattr(kvmm, name)
    assert issubclass(cls, kvmm.Error)
    assert issubclass(kvmm.Error, Exception)
    assert cls.__doc__ and len(cls.__doc__.strip().splitlines()) == 1


def test_every_py_lmdb_error_name_exists_in_kvmm():
    """docs/reference.md section 11: py-lmdb's names, so `except lmdb.X` code ports unchanged."""
    names = {
        name
        for name in dir(lmdb)
        if isinstance(getattr(lmdb, name), type) and issubclass(getattr(lmdb, name), lmdb.Error)
    }
    missing = sorted(n for n in names if not hasattr(kvmm, n))
    assert missing == []
    for name in names:
        assert issubclass(getattr(kvmm, name), kvmm.Error)


# -- processes --------------------------------------------------------------------------


def _in_child(body) -> int:
    """Run body() in a forked child; return its exit code (body's result, 99 on error)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_using_the_parents_environment_after_fork_raises_error(env):
    _fill(env, {b"k": b"v"})

    def child():
        codes = 0
        for use in (lambda: env.begin(), lambda: env.begin(write=True)):
            try:
                use()
            except kvmm.Error:
                continue
            except BaseException:  # noqa: BLE001 - any other outcome is a failure
                return 3
            codes += 1
        return 1 if codes else 0

    assert _in_child(child) == 0
    # The parent's environment is unaffected.
    with env.begin() as txn:
        assert txn.get(b"k") == b"v"


def test_a_read_transaction_begun_before_fork_raises_error_in_the_child(env):
    _fill(env, {b"k": b"v"})
    txn = env.begin()
    assert txn.get(b"k") == b"v"  # a get before the fork: later gets start at its root

    def child():
        try:
            txn.get(b"k")
        except kvmm.Error:
            return 0
        except BaseException:  # noqa: BLE001 - any other outcome is a failure
            return 3
        return 1

    assert _in_child(child) == 0
    assert txn.get(b"k") == b"v"
    txn.abort()


def test_opening_the_environment_afresh_in_a_forked_child_works(env):
    _fill(env, {b"k": b"v"})
    path = env.path()

    def child():
        with kvmm.open(path) as fresh, fresh.begin(write=True) as txn:
            if txn.get(b"k") != b"v":
                return 1
            txn.put(b"from child", b"1")
        return 0

    assert _in_child(child) == 0
    assert _contents(env) == [(b"from child", b"1"), (b"k", b"v")]


# -- space ------------------------------------------------------------------------------


def test_rewriting_the_same_keys_reaches_a_steady_file_size(env):
    """Pages freed by each commit are reused by the next ones: the file stops growing."""
    keys = [b"key%06d" % i for i in range(10_000)]
    data = _data_file(env.path())
    sizes, last_pgnos = [], []
    for round_ in range(30):
        value = b"%02d" % round_ * 40
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key, value)
        sizes.append(os.path.getsize(data))
        last_pgnos.append(env.info()["last_pgno"])
    assert max(sizes[10:]) <= max(sizes[:10]), sizes
    # The file grows in large steps; the highest page used tells page by page.
    assert max(last_pgnos[10:]) <= max(last_pgnos[:10]), last_pgnos


def test_deleting_most_of_a_large_database_gives_space_back_to_the_file_system(env):
    data = _data_file(env.path())
    value = b"v" * 6000  # one overflow record per key
    with env.begin(write=True) as txn:
        for i in range(4000):
            txn.put(b"k%05d" % i, value)
    peak = os.path.getsize(data)
    assert peak >= 4000 * 6000
    with env.begin(write=True) as txn:
        for i in range(400, 4000):
            txn.delete(b"k%05d" % i)
    # The commit that frees the pages, and at most two later ones, may give them back.
    sizes = [os.path.getsize(data)]
    for i in range(2):
        _fill(env, {b"small%d" % i: b"x"})
        sizes.append(os.path.getsize(data))
    assert min(sizes) < peak / 2, (peak, sizes)
    with env.begin() as txn:
        assert txn.stat(env.open_db())["entries"] == 402


def test_commit_past_max_size_raises_map_full_error_and_keeps_previous_contents(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path, max_size=4 * MIB) as env:
        _fill(env, {b"k%04d" % i: b"v" * 1000 for i in range(1000)})
        before = _contents(env)
        with pytest.raises(kvmm.MapFullError), env.begin(write=True) as txn:
            txn.put(b"a", b"1")
            txn.put(b"huge", b"x" * (8 * MIB))
        assert _contents(env) == before
        assert os.path.getsize(_data_file(path)) <= 4 * MIB
        # The environment is still usable.
        _fill(env, {b"small": b"ok"})
    with kvmm.open(path) as env:
        assert len(_contents(env)) == 1001
        with env.begin() as txn:
            assert txn.get(b"huge") is None and txn.get(b"a") is None


# -- dupsort ----------------------------------------------------------------------------


def test_dupsort_database_keeps_a_sorted_set_of_values_per_key_as_py_lmdb(env, lmdb_env):
    """docs/reference.md section 5: with dupsort=True a key holds a sorted set of values."""

    def exercise(e):
        db = e.open_db(b"dups", dupsort=True)
        with e.begin(write=True, db=db) as txn:
            for key, value in [
                (b"b", b"2"),
                (b"a", b"9"),
                (b"b", b"1"),
                (b"b", b"3"),
                (b"b", b"1"),
                (b"c", b"0"),
            ]:
                txn.put(key, value)
            cursor = txn.cursor()
            answers = [
                txn.put(b"b", b"2", dupdata=False),
                cursor.set_key(b"b"),
                cursor.count(),
                list(cursor.iternext_dup()),
                cursor.set_key_dup(b"b", b"3"),
                cursor.prev_dup(),
                cursor.value(),
                cursor.next_nodup(),
                cursor.item(),
                cursor.set_range_dup(b"b", b"15"),
                cursor.value(),
                cursor.last_dup(),
                cursor.first_dup(),
                txn.delete(b"b", b"2"),
                txn.get(b"b"),
            ]
        return answers, _contents(e, db=db)

    assert exercise(env) == exercise(lmdb_env)
