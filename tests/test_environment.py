"""The Environment's py-lmdb surface: options as given, dbs(), the reader table,
max_spare_txns, a closed environment, and the files and directory it makes
(docs/reference.md sections 2, 3 and 10)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

import kvmm

NO_READERS = "(no active readers)\n"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _reader_lines(env) -> list[str]:
    return env.readers().splitlines()[1:]


@pytest.fixture
def no_umask():
    old = os.umask(0)
    yield
    os.umask(old)


# --- options -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["map_async", "readahead", "writemap", "meminit", "sync",
                                  "metasync", "lock"])
def test_flags_report_each_option_as_given(tmp_path, flag):
    for value in (True, False):
        with kvmm.open(str(tmp_path / f"{flag}-{value}"), **{flag: value}) as env:
            assert env.flags()[flag] is value


@pytest.mark.parametrize("option", ["max_dbs", "max_readers", "max_spare_txns", "map_size"])
def test_negative_counts_raise_overflow_error(tmp_path, option):
    with pytest.raises(OverflowError):
        kvmm.open(str(tmp_path / "db"), **{option: -1})
    assert not (tmp_path / "db").exists()


def test_lock_false_creates_no_lock_file(tmp_path):
    with kvmm.open(str(tmp_path / "db"), lock=False) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    assert sorted(os.listdir(tmp_path / "db")) == ["data.kvmm"]


# --- files and directory -------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o700])
def test_the_directory_gets_mode_and_the_files_mode_without_x(tmp_path, no_umask, mode):
    path = tmp_path / "db"
    kvmm.open(str(path), mode=mode).close()
    assert _mode(path) == mode
    assert _mode(path / "data.kvmm") == mode & ~0o111
    assert _mode(path / "lock.kvmm") == mode & ~0o111


def test_a_mode_without_x_still_gives_a_usable_directory(tmp_path, no_umask):
    path = tmp_path / "db"
    kvmm.open(str(path), mode=0o640).close()
    assert _mode(path) == 0o750
    assert _mode(path / "data.kvmm") == 0o640


def test_create_false_makes_the_files_in_an_existing_directory(tmp_path, no_umask):
    path = tmp_path / "db"
    path.mkdir()
    with kvmm.open(str(path), create=False, mode=0o700) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    assert _mode(path / "data.kvmm") == 0o600
    assert _mode(path / "lock.kvmm") == 0o600


def test_a_regular_file_with_subdir_true_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"not a directory")
    with pytest.raises(kvmm.Error):
        kvmm.open(str(path))
    assert path.read_bytes() == b"not a directory"
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_missing_parent_directory_is_refused(tmp_path):
    with pytest.raises(kvmm.Error):
        kvmm.open(str(tmp_path / "missing" / "db"))
    assert not (tmp_path / "missing").exists()


# --- dbs() ----------------------------------------------------------------------------


def test_dbs_lists_the_named_databases_in_key_order(tmp_path):
    with kvmm.open(str(tmp_path / "db"), max_dbs=4) as env:
        assert env.dbs() == []
        with env.begin(write=True) as txn:
            for i in range(300):  # plain keys around the records, over several leaves
                txn.put(b"%03d" % i, b"v" * 40)
        for name in (b"zeta", b"alpha", b"150x"):
            env.open_db(name)
        assert env.dbs() == [b"150x", b"alpha", b"zeta"]
        with env.begin(write=True) as txn:
            env.open_db(b"beta", txn=txn)
            assert env.dbs(txn=txn) == [b"150x", b"alpha", b"beta", b"zeta"]
            assert env.dbs() == [b"150x", b"alpha", b"zeta"]  # not committed yet
            txn.abort()
    env.close()
    with pytest.raises(kvmm.Error):
        env.dbs()


# --- a closed environment -------------------------------------------------------------


@pytest.mark.parametrize("method", ["path", "flags", "max_key_size", "max_readers", "info",
                                    "readers", "reader_check", "dbs", "stat"])
def test_a_closed_environment_refuses_every_method(tmp_path, method):
    env = kvmm.open(str(tmp_path / "db"))
    getattr(env, method)()
    env.close()
    with pytest.raises(kvmm.Error):
        getattr(env, method)()


# --- the reader table -------------------------------------------------------------------


def test_readers_prints_no_active_readers_and_py_lmdb_rows(tmp_path):
    with kvmm.open(str(tmp_path / "db"), max_spare_txns=0) as env:
        assert env.readers() == NO_READERS
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        txn = env.begin()
        text = env.readers()
        assert text.splitlines()[0] == "    pid     thread     txnid"
        (row,) = _reader_lines(env)
        assert row == f"{os.getpid():>10} 0 {txn.id()}"
        txn.abort()
        assert env.readers() == NO_READERS


def test_max_spare_txns_bounds_the_slots_kept_between_transactions(tmp_path):
    with kvmm.open(str(tmp_path / "db"), max_spare_txns=1) as env:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        t1, t2 = env.begin(), env.begin()
        assert len(_reader_lines(env)) == 2
        t1.abort()
        assert sorted(line.split()[2] for line in _reader_lines(env)) == ["-", "1"]
        t2.abort()
        assert [line.split()[2] for line in _reader_lines(env)] == ["-"]  # the spare
        t3 = env.begin()
        assert [line.split()[2] for line in _reader_lines(env)] == ["1"]  # reused
        t3.abort()
    with kvmm.open(str(tmp_path / "db"), max_spare_txns=0) as env:
        for _ in range(3):
            env.begin().abort()
            assert env.readers() == NO_READERS


def test_reader_check_returns_how_many_stale_slots_it_cleared(tmp_path):
    path = str(tmp_path / "db")
    with kvmm.open(path, max_spare_txns=0) as env:
        mine = env.begin()
        assert env.reader_check() == 0
        code = textwrap.dedent("""
            import os, sys, kvmm
            env = kvmm.open(sys.argv[1])
            held = [env.begin(), env.begin()]  # open when the process dies
            os._exit(0)
        """)
        root = os.path.dirname(os.path.dirname(kvmm.__file__))  # the child imports this kvmm
        subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": root})
        assert len(_reader_lines(env)) == 3
        assert env.reader_check() == 2
        assert env.reader_check() == 0
        assert len(_reader_lines(env)) == 1
        mine.abort()
        assert env.readers() == NO_READERS
