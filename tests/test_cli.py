"""The ``kvmm`` command line (docs/reference.md section 12): dump/restore in LMDB's format both ways
with LMDB's own tools, check on clean and damaged files, copy under concurrent writes,
readers, the small edit commands, and the error paths.

Most commands run in-process through ``kvmm.cli.main`` (fast); a few run as
``python -m kvmm`` to prove the entry point. The interoperability tests need Debian's
``lmdb-utils`` (``mdb_dump``, ``mdb_load``) and py-lmdb: they are skipped without them,
and fail instead when ``KVMM_REQUIRE_LMDB_TOOLS=1`` (as ``.ci/run`` sets).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kvmm
from kvmm import format as fmt
from kvmm.cli import main
from kvmm.cli import restore as restore_cmd
from kvmm.cli.progress import Progress

REQUIRE_TOOLS = os.environ.get("KVMM_REQUIRE_LMDB_TOOLS") == "1"
LMDB_MAP_SIZE = 64 << 20

# Every byte value as a key and in values; a backslash is always followed by a byte
# that is neither a backslash nor a hex digit, so LMDB 0.9.24's `mdb_dump -p`, which
# writes backslashes bare, still writes this data unambiguously.
MAIN = {bytes([b]): bytes([b]) + b"." for b in range(256)}
MAIN[bytes(range(1, 256))] = bytes(range(256))
MAIN[b"empty value"] = b""
MAIN[b"large value"] = bytes(range(256)) * 400  # 100 KiB: overflow pages
MAIN[b"back\\slash"] = b"\\"
NAMED = {
    b"sub": {b"k%03d" % i: b"v" * i for i in range(300)},
    b"two words": {b"\xff\x00": b"", b"\\": b"\x00" * 5000, b"z": b"large" * 3000},
}


# --- helpers ------------------------------------------------------------------------


def need(what: str, present) -> None:
    if not present:
        if REQUIRE_TOOLS:
            pytest.fail(f"{what}: not found, and KVMM_REQUIRE_LMDB_TOOLS=1")
        pytest.skip(f"{what}: not found")


@pytest.fixture
def lmdb_tools():
    need(
        "LMDB's mdb_dump and mdb_load (Debian's lmdb-utils)",
        shutil.which("mdb_dump") and shutil.which("mdb_load"),
    )


@pytest.fixture
def py_lmdb():
    try:
        import lmdb
    except ImportError:
        lmdb = None
    need("py-lmdb", lmdb is not None)
    return lmdb


def make_kvmm(path, main_records=(), named=None) -> str:
    env = kvmm.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        for key, value in dict(main_records).items():
            txn.put(key, value)
    for name, records in (named or {}).items():
        db = env.open_db(name)
        with env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key, value, db=db)
    env.close()
    return str(path)


def kvmm_contents(path, names=()) -> tuple[dict, dict]:
    """(main database without the named-db records, {name: contents})."""
    env = kvmm.open(str(path), max_dbs=8)
    with env.begin() as txn:
        main_db = {k: v for k, v in txn.cursor() if k not in names}
        named = {n: dict(txn.cursor(env.open_db(n, txn=txn, create=False))) for n in names}
    env.close()
    return main_db, named


def make_lmdb(lmdb, path, main_records=(), named=None) -> str:
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=8)
    with env.begin(write=True) as txn:
        for key, value in dict(main_records).items():
            txn.put(key, value)
        for name, records in (named or {}).items():
            db = env.open_db(name, txn=txn)
            for key, value in records.items():
                txn.put(key, value, db=db)
    env.close()
    return str(path)


def lmdb_contents(lmdb, path, names=()) -> tuple[dict, dict]:
    env = lmdb.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=8)
    with env.begin() as txn:
        main_db = {k: v for k, v in txn.cursor() if k not in names}
        named = {n: dict(txn.cursor(env.open_db(n, txn=txn, create=False))) for n in names}
    env.close()
    return main_db, named


def lmdb_tools_version() -> tuple:
    """(0, 9, 24) for Debian's lmdb-utils: `mdb_load -V` prints "LMDB 0.9.24: (...)"."""
    text = tool("mdb_load", "-V").decode()
    return tuple(int(p) for p in text.split()[1].rstrip(":").split("."))


def without_backslashes(records: dict) -> dict:
    return {k: v for k, v in records.items() if b"\\" not in k + v}


def tool(*args, stdin=None) -> bytes:
    done = subprocess.run(args, input=stdin, capture_output=True, check=True)
    return done.stdout


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvmm: ") and "Traceback" not in err
    return lines[0]


DUMP_HEAD = b"VERSION=3\nformat=%s\ntype=btree\nmapsize=1048576\nHEADER=END\n"


def write_dump(path, body: bytes, printable: bool = False) -> str:
    head = DUMP_HEAD % (b"print" if printable else b"bytevalue")
    path.write_bytes(head + body)
    return str(path)


# --- dump and restore with LMDB's tools -----------------------------------------------


@pytest.mark.parametrize("printable", [False, True], ids=["bytevalue", "print"])
def test_kvmm_dump_loads_with_mdb_load_without_loss(
    tmp_path, capsys, lmdb_tools, py_lmdb, printable
):
    records, named = MAIN, NAMED
    if printable and lmdb_tools_version() < (0, 9, 25):
        # mdb_load before 0.9.25 reads `\\` after another escape on the same line as
        # a stale byte: its bug, so backslashes stay out of the data it is given here.
        records = without_backslashes(MAIN)
        named = {name: without_backslashes(recs) for name, recs in NAMED.items()}
    src = make_kvmm(tmp_path / "src", records, named)
    dump = tmp_path / "dump.txt"
    code, out, err = run(capsys, "dump", "-a", *(["-p"] if printable else []), "-f", dump, src)
    assert (code, out, err) == (0, "", "")
    dst = tmp_path / "lmdb"
    dst.mkdir()
    tool("mdb_load", "-f", str(dump), str(dst))
    assert lmdb_contents(py_lmdb, dst, named) == (records, named)


@pytest.mark.parametrize("printable", [False, True], ids=["bytevalue", "print"])
def test_mdb_dump_output_restores_into_kvmm_without_loss(
    tmp_path, capsys, lmdb_tools, py_lmdb, printable
):
    # LMDB's -a leaves the main database's own data out, so it is dumped apart.
    flag = ["-p"] if printable else []
    records, named = MAIN, NAMED
    if printable and lmdb_tools_version() < (0, 9, 25):
        # mdb_dump -p before 0.9.25 writes backslashes bare, which restore refuses
        # (see test_restore_refuses_bad_escapes_naming_the_line).
        records = without_backslashes(MAIN)
        named = {name: without_backslashes(recs) for name, recs in NAMED.items()}
    main_dump = tool("mdb_dump", *flag, make_lmdb(py_lmdb, tmp_path / "a", records))
    named_dump = tool("mdb_dump", "-a", *flag, make_lmdb(py_lmdb, tmp_path / "b", {}, named))
    (tmp_path / "main.txt").write_bytes(main_dump)
    (tmp_path / "named.txt").write_bytes(named_dump)
    dst = tmp_path / "kvmm"
    assert run(capsys, "restore", "-f", tmp_path / "main.txt", dst) == (0, "", "")
    assert run(capsys, "load", "-f", tmp_path / "named.txt", dst) == (0, "", "")
    assert kvmm_contents(dst, named) == (records, named)
    assert run(capsys, "check", dst)[0] == 0


@pytest.mark.parametrize("printable", [False, True], ids=["bytevalue", "print"])
@pytest.mark.parametrize("name", [None, b"sub"], ids=["main", "named"])
def test_dump_text_is_mdb_dumps_text(tmp_path, capsys, lmdb_tools, py_lmdb, printable, name):
    # Byte for byte what mdb_dump writes for the same data, but for mapsize (kvmm's map
    # is not fixed). Backslashes are left out: LMDB 0.9.24's -p writes them bare.
    records = without_backslashes(MAIN)
    named = {b"sub": NAMED[b"sub"]}
    src = make_kvmm(tmp_path / "kvmm", {} if name else records, named if name else None)
    ref = make_lmdb(py_lmdb, tmp_path / "lmdb", {} if name else records, named if name else None)
    args = (["-p"] if printable else []) + (["-s", name.decode()] if name else [])
    want = tool("mdb_dump", *args, ref).splitlines()
    code = main(["dump", *args, "-f", str(tmp_path / "out"), src])
    got = (tmp_path / "out").read_bytes().splitlines()
    assert code == 0
    assert [ln for ln in got if not ln.startswith(b"mapsize=")] == [
        ln for ln in want if not ln.startswith(b"mapsize=")
    ]
    assert any(ln.startswith(b"mapsize=") for ln in got)


def test_dump_pipes_into_restore_through_python_m_kvmm(tmp_path):
    src = make_kvmm(tmp_path / "src", MAIN, NAMED)
    dump = subprocess.run(
        [sys.executable, "-m", "kvmm", "dump", "-a", src], capture_output=True, check=True
    )
    load = subprocess.run(
        [sys.executable, "-m", "kvmm", "restore", str(tmp_path / "dst")],
        input=dump.stdout,
        capture_output=True,
        check=False,
    )
    assert (load.returncode, load.stderr) == (0, b"")
    assert kvmm_contents(tmp_path / "dst", NAMED) == (MAIN, NAMED)


# --- restore: reading the format as mdb_load does -------------------------------------


def test_restore_reads_escaped_backslashes_and_hex_escapes(tmp_path, capsys):
    body = b" a\\\\b\n \\\\\n x\\5cy\\00\n \\7e\\7E\nDATA=END\n"
    dump = write_dump(tmp_path / "d", body, printable=True)
    assert run(capsys, "restore", "-f", dump, tmp_path / "db") == (0, "", "")
    assert kvmm_contents(tmp_path / "db")[0] == {b"a\\b": b"\\", b"x\\y\x00": b"~~"}


@pytest.mark.parametrize(
    "body, line, shown",
    [
        (b" r\\qd\n 1\nDATA=END\n", 6, "'\\qd'"),
        (b" k\n v\\\nDATA=END\n", 7, "'\\'"),
        (b" k\\5\n v\nDATA=END\n", 6, "'\\5'"),
        (b" k\\g0\n v\nDATA=END\n", 6, "'\\g0'"),
    ],
    ids=["not-hex", "at-the-end", "one-digit", "g"],
)
def test_restore_refuses_bad_escapes_naming_the_line(tmp_path, capsys, body, line, shown):
    """As mdb_load: a backslash is followed by another or by two hex digits (LMDB
    0.9.24's mdb_dump -p wrote bare ones, which no tool reads back exactly)."""
    dump = write_dump(tmp_path / "d", body, printable=True)
    code, _, err = run(capsys, "restore", "-f", dump, tmp_path / "db")
    assert code == 1
    assert one_line_error(err).startswith(f"kvmm: line {line}: bad escape {shown}: ")
    assert "dump without -p" in err
    assert not (tmp_path / "db").exists()


def test_restore_dash_t_refuses_a_bad_escape_naming_the_line(tmp_path, capsys):
    (tmp_path / "t").write_bytes(b"k\nv\nk2\nbad\\q\n")
    code, _, err = run(capsys, "restore", "-T", "-f", tmp_path / "t", tmp_path / "db")
    assert code == 1 and one_line_error(err).startswith("kvmm: line 4: bad escape '\\q'")


def test_restore_blocks_go_to_their_database_and_dash_s(tmp_path, capsys):
    dump = tmp_path / "d"
    dump.write_bytes(
        DUMP_HEAD % b"bytevalue"
        + b" 61\n 31\nDATA=END\n"
        + b"VERSION=3\nformat=print\ndatabase=named\nHEADER=END\n b\n 2\nDATA=END\n"
    )
    db = tmp_path / "db"
    assert run(capsys, "restore", "-s", "other", "-f", dump, db)[0] == 0
    names = (b"named", b"other")
    assert kvmm_contents(db, names) == ({}, {b"named": {b"b": b"2"}, b"other": {b"a": b"1"}})


def test_restore_dash_n_keeps_existing_values(tmp_path, capsys):
    db = make_kvmm(tmp_path / "db", {b"a": b"old"})
    dump = write_dump(tmp_path / "d", b" 61\n 6e6577\n 62\n 6e6577\nDATA=END\n")
    assert run(capsys, "restore", "-N", "-f", dump, db)[0] == 0
    assert kvmm_contents(db)[0] == {b"a": b"old", b"b": b"new"}
    assert run(capsys, "restore", "-f", dump, db)[0] == 0
    assert kvmm_contents(db)[0] == {b"a": b"new", b"b": b"new"}


def test_restore_dash_t_reads_plain_text_pairs(tmp_path, capsys):
    text = tmp_path / "t"
    text.write_bytes(b"apple\nred\nb\\00c\n\\\\\n")
    assert run(capsys, "restore", "-T", "-f", text, tmp_path / "db")[0] == 0
    assert kvmm_contents(tmp_path / "db")[0] == {b"apple": b"red", b"b\x00c": b"\\"}


def test_restore_warns_of_unknown_keywords_and_empty_keys(tmp_path, capsys):
    dump = tmp_path / "d"
    dump.write_bytes(
        b"VERSION=3\nformat=bytevalue\nflavour=mint\nHEADER=END\n \n 61\n 62\n 63\nDATA=END\n"
    )
    code, _, err = run(capsys, "restore", "-f", dump, tmp_path / "db")
    assert code == 0
    assert err.splitlines() == [
        "kvmm: line 3: unrecognized keyword ignored: flavour",
        "kvmm: line 6: zero-length key ignored",
    ]
    assert kvmm_contents(tmp_path / "db")[0] == {b"b": b"c"}


def test_restore_of_a_dupsort_block_into_the_main_database_is_a_clear_error(tmp_path, capsys):
    dump = tmp_path / "d"
    dump.write_bytes(
        b"VERSION=3\nformat=bytevalue\ntype=btree\nduplicates=1\ndupsort=1\n"
        b"HEADER=END\n 61\n 62\n 61\n 63\nDATA=END\n"
    )
    code, _, err = run(capsys, "restore", "-f", dump, tmp_path / "db")
    assert code == 1
    assert "main database with flags (dupsort)" in one_line_error(err)


def _dupsort_pairs():
    """Pairs of a dupsort database: one key with many values, values of every byte."""
    pairs = {(b"many", b"%04d" % i) for i in range(300)}
    # Every byte but the backslash: LMDB 0.9.24's tools mangle it in print format next
    # to another escape (see MAIN and the print-format tests above).
    pairs |= {(b"bytes", bytes([c, c ^ 0x5A])) for c in range(256) if 0x5C not in (c, c ^ 0x5A)}
    pairs |= {(b"\x00key\xff", b"\n"), (b"\x00key\xff", b" "), (b"single", b"x" * 511)}
    return sorted(pairs)


def test_dupsort_dumps_round_trip_with_lmdbs_tools_both_ways(tmp_path, capsys, lmdb_tools,
                                                             py_lmdb):
    """LMDB dupsort data -> mdb_dump -> kvmm restore, and kvmm dump -> mdb_load -> LMDB,
    in both formats: every pair arrives, as a dupsort database."""
    pairs = _dupsort_pairs()
    src = tmp_path / "lmdb"
    src.mkdir()
    env = py_lmdb.open(str(src), map_size=LMDB_MAP_SIZE, max_dbs=2)
    db = env.open_db(b"dups", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        for k, v in pairs:
            txn.put(k, v)
    env.close()
    for flags in ([], ["-p"]):
        name = "p" if flags else "b"
        (tmp_path / name).write_bytes(tool("mdb_dump", *flags, "-s", "dups", str(src)))
        code, _, err = run(capsys, "restore", "-f", tmp_path / name, tmp_path / ("k" + name))
        assert code == 0, err
        kenv = kvmm.open(str(tmp_path / ("k" + name)), max_dbs=2)
        with kenv.begin() as txn:
            kdb = kenv.open_db(b"dups", txn=txn, create=False, dupsort=True)
            assert list(txn.cursor(kdb)) == pairs
        kenv.close()
        code, out, err = run(capsys, "dump", *flags, "-s", "dups", tmp_path / ("k" + name))
        assert code == 0, err
        assert "duplicates=1" in out and "dupsort=1" in out
        back = tmp_path / ("back" + name)
        back.mkdir()
        tool("mdb_load", "-s", "dups", str(back), stdin=out.encode("latin-1"))
        env = py_lmdb.open(str(back), max_dbs=2, readonly=True)
        bdb = env.open_db(b"dups", dupsort=True, create=False)
        with env.begin(db=bdb) as txn:
            assert list(txn.cursor()) == pairs
        env.close()


#: Databases with LMDB's orders, and their records (integers in native byte order).
FLAGGED = {
    b"ints": ({"integerkey": True}, [(struct.pack("=I", n), b"v%d" % n)
                                     for n in (1, 256, 2, 70000, 0)]),
    b"longs": ({"integerkey": True, "dupsort": True},
               [(struct.pack("=Q", n), v) for n in (5, 1 << 40) for v in (b"b", b"a")]),
    b"rev": ({"reverse_key": True}, [(k, b"x") for k in (b"ab", b"ba", b"b", b"cab")]),
    b"fixed": ({"dupfixed": True}, [(b"k", v) for v in (b"zz", b"aa", b"mm")]),
    b"idup": ({"integerdup": True}, [(b"k", struct.pack("=I", n)) for n in (3, 256, 1)]),
}


def _flagged_contents(mod, path) -> dict:
    env = mod.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=8)
    with env.begin() as txn:
        out = {}
        for name in FLAGGED:
            db = env.open_db(name, txn=txn, create=False)
            out[name] = (db.flags(), [(bytes(k), bytes(v)) for k, v in txn.cursor(db)])
    env.close()
    return out


def _make_flagged(mod, path) -> str:
    os.makedirs(path, exist_ok=True)
    env = mod.open(str(path), map_size=LMDB_MAP_SIZE, max_dbs=8)
    with env.begin(write=True) as txn:
        for name, (flags, records) in FLAGGED.items():
            db = env.open_db(name, txn=txn, **flags)
            for k, v in records:
                txn.put(k, v, db=db)
    env.close()
    return str(path)


@pytest.mark.parametrize("printable", [False, True], ids=["bytevalue", "print"])
def test_dump_of_databases_with_orders_is_mdb_dumps_text(tmp_path, lmdb_tools, py_lmdb,
                                                         printable):
    """The flag lines of the header (reversekey=1, integerkey=1, dupfixed=1, ...) and
    the records in the user's form and the database's order, as mdb_dump writes them."""
    src = _make_flagged(kvmm, tmp_path / "kvmm")
    ref = _make_flagged(py_lmdb, tmp_path / "lmdb")
    args = ["-a"] + (["-p"] if printable else [])
    want = tool("mdb_dump", *args, ref).splitlines()
    assert main(["dump", *args, "-f", str(tmp_path / "out"), src]) == 0
    got = (tmp_path / "out").read_bytes().splitlines()
    assert b"integerdup=1" in got and b"reversekey=1" in got
    assert [ln for ln in got if not ln.startswith(b"mapsize=")] == [
        ln for ln in want if not ln.startswith(b"mapsize=")
    ]


def test_databases_with_orders_round_trip_with_lmdbs_tools(tmp_path, capsys, lmdb_tools,
                                                           py_lmdb):
    """mdb_dump -> kvmm restore, and kvmm dump -> mdb_load: flags and records arrive."""
    want = _flagged_contents(py_lmdb, _make_flagged(py_lmdb, tmp_path / "lmdb"))
    (tmp_path / "dump").write_bytes(tool("mdb_dump", "-a", str(tmp_path / "lmdb")))
    assert run(capsys, "restore", "-f", tmp_path / "dump", tmp_path / "kvmm") == (0, "", "")
    assert _flagged_contents(kvmm, tmp_path / "kvmm") == want
    assert run(capsys, "check", tmp_path / "kvmm")[0] == 0
    code, out, err = run(capsys, "dump", "-a", tmp_path / "kvmm")
    assert code == 0, err
    (tmp_path / "back").mkdir()
    tool("mdb_load", str(tmp_path / "back"), stdin=out.encode("latin-1"))
    assert _flagged_contents(py_lmdb, tmp_path / "back") == want


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        # A database that exists (dupsort, see below) with other flags.
        (b"integerkey=1", b" abcd\n v\n",
         "kvmm: line 5: database sub exists with other flags (dupsort)"),
        (b"duplicates=1\nreversedup=1", b" a\n b\n",
         "kvmm: line 5: reversedup=1: reversedup databases are not supported by kvmm"),
        (b"database=new\nintegerkey=1", b" abcd\n v\n abc\n v\n",
         "kvmm: line 9: integerkey key of 3 bytes: integers are 4 or 8 bytes"),
    ],
    ids=["other-flags", "reversedup", "integer-width"],
)
def test_restore_of_databases_with_orders_stops_at_a_clear_error(tmp_path, capsys, header,
                                                                 data, message):
    env = kvmm.open(str(tmp_path / "db"), max_dbs=2)
    env.open_db(b"sub", dupsort=True)
    env.close()
    dump = tmp_path / "d"
    dump.write_bytes(b"VERSION=3\nformat=print\ndatabase=sub\n" + header + b"\nHEADER=END\n"
                     + data + b"DATA=END\n")
    code, _, err = run(capsys, "restore", "-f", dump, tmp_path / "db")
    assert (code, one_line_error(err)) == (1, message)


def test_restore_into_a_key_that_is_not_a_database_names_the_block(tmp_path, capsys):
    db = make_kvmm(tmp_path / "db", {b"plain": b"1"})
    dump = tmp_path / "d"
    dump.write_bytes(b"VERSION=3\nformat=print\ndatabase=plain\nHEADER=END\n a\n b\nDATA=END\n")
    code, _, err = run(capsys, "restore", "-f", dump, db)
    assert code == 1 and one_line_error(err).startswith("kvmm: line 4: database plain: ")


def test_restore_refuses_a_target_that_is_not_kvmm_and_leaves_it_alone(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(b"precious" * 1000)
    dump = write_dump(tmp_path / "d", b" 61\n 62\nDATA=END\n")
    code, _, err = run(capsys, "restore", "-f", dump, junk)
    assert code == 1 and "not a kvmm data file" in one_line_error(err)
    assert junk.read_bytes() == b"precious" * 1000
    assert sorted(os.listdir(tmp_path)) == ["d", "junk"]


def test_restore_stops_at_a_bad_line_keeping_earlier_batches(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(restore_cmd, "BATCH", 10)
    db = make_kvmm(tmp_path / "db", {b"existing": b"1"})
    good = b"".join(b" %s\n 76\n" % (b"%04d" % i).hex().encode() for i in range(25))
    dump = write_dump(tmp_path / "d", good + b" 7a7\n 76\nDATA=END\n")
    code, _, err = run(capsys, "restore", "-f", dump, db)
    assert code == 1
    # 5 header lines, 50 good data lines: the bad key is on line 56.
    assert one_line_error(err) == "kvmm: line 56: not an even number of hex digits"
    assert sorted(kvmm_contents(db)[0]) == [b"%04d" % i for i in range(20)] + [b"existing"]
    assert run(capsys, "check", db)[0] == 0


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty-directory"])
def test_a_failed_restore_into_a_new_path_leaves_no_database(tmp_path, capsys, monkeypatch,
                                                             made):
    monkeypatch.setattr(restore_cmd, "BATCH", 10)  # batches were committed before the error
    good = b"".join(b" %s\n 76\n" % (b"%04d" % i).hex().encode() for i in range(25))
    dump = write_dump(tmp_path / "d", good + b" ZZ\n 76\nDATA=END\n")
    target = tmp_path / "new"
    if made:
        target.mkdir()
    code, _, err = run(capsys, "restore", "-f", dump, target)
    assert code == 1 and one_line_error(err) == "kvmm: line 56: 'Z' is not a hex digit"
    assert sorted(os.listdir(tmp_path)) == (["d", "new"] if made else ["d"])
    if made:
        assert os.listdir(target) == []


@pytest.mark.parametrize(
    "body, line, what",
    [
        (b" 61\n 6g\nDATA=END\n", 7, "'g' is not a hex digit"),
        (b" 61\n 616\nDATA=END\n", 7, "not an even number of hex digits"),
        (b" 61\n 62\n", 7, "DATA=END is missing"),
        (b" 61\nDATA=END\n", 7, "expected the value"),
        (b" 61\n", 6, "a key without its value"),
        (b"61\n 62\nDATA=END\n", 6, "expected a data line"),
        (b" %s\n 62\nDATA=END\n" % (b"6b" * 600), 6, "keys are 1 to"),
    ],
    ids=["bad-hex", "odd-hex", "no-data-end", "key-then-end", "key-then-eof", "no-space",
         "long-key"],
)
def test_restore_bad_input_names_its_line(tmp_path, capsys, body, line, what):
    code, _, err = run(capsys, "restore", "-f", write_dump(tmp_path / "d", body), tmp_path / "db")
    assert code == 1
    assert one_line_error(err).startswith(f"kvmm: line {line}: ") and what in err


@pytest.mark.parametrize(
    "head, what",
    [
        (b"VERSION=3\nformat=bytevalue\n", "line 2: unexpected end of input"),
        (b"VERSION=4\nHEADER=END\n", "line 1: unsupported VERSION 4"),
        (b"format=base64\nHEADER=END\n", "line 1: unsupported format base64"),
        (b"type=hash\nHEADER=END\n", "line 1: unsupported type hash"),
        (b"VERSION=3\nno equals sign\nHEADER=END\n", "line 2: unexpected format"),
        (b"VERSION=3\nHEADER=ED\n 61\n 62\nDATA=END\n",
         "line 2: 'HEADER=ED': expected HEADER=END"),
        (b"VERSION=3\n 61\n 62\nDATA=END\n", "line 2: ' 61': expected HEADER=END"),
    ],
    ids=["no-header-end", "version", "format", "type", "no-equals", "header-ed", "no-header"],
)
def test_restore_bad_header_names_its_line(tmp_path, capsys, head, what):
    (tmp_path / "d").write_bytes(head)
    code, _, err = run(capsys, "restore", "-f", tmp_path / "d", tmp_path / "db")
    assert code == 1 and what in one_line_error(err)
    assert not (tmp_path / "db").exists()


# --- migrate from LMDB ------------------------------------------------------------------


@pytest.fixture(params=["py-lmdb", "mdb_dump"])
def migrate_reader(request, monkeypatch, py_lmdb):
    """Which way `kvmm migrate` reads LMDB: py-lmdb, or mdb_dump once ``hide()``
    (called after the test made its LMDB environment) hides py-lmdb."""
    if request.param == "mdb_dump":
        need("LMDB's mdb_dump (Debian's lmdb-utils)", shutil.which("mdb_dump"))

    def hide() -> str:
        if request.param == "mdb_dump":
            monkeypatch.setitem(sys.modules, "lmdb", None)  # as if not installed
        return request.param

    return hide


def make_lmdb_for_migrate(lmdb, path, subdir=True) -> str:
    """MAIN and NAMED as in the dump tests, plus a dupsort database and an empty one."""
    env = lmdb.open(str(path), subdir=subdir, map_size=LMDB_MAP_SIZE, max_dbs=8)
    with env.begin(write=True) as txn:
        for key, value in MAIN.items():
            txn.put(key, value)
        for name, records in NAMED.items():
            db = env.open_db(name, txn=txn)
            for key, value in records.items():
                txn.put(key, value, db=db)
        dups = env.open_db(b"dups", txn=txn, dupsort=True)
        for key, value in _dupsort_pairs():
            txn.put(key, value, db=dups)
        env.open_db(b"empty", txn=txn)
    env.close()
    return str(path)


def migrated_contents(path) -> tuple:
    """(main records, {name: records}, {name: dupsort}) of a kvmm database."""
    env = kvmm.open(str(path), max_dbs=8, readonly=True)
    names = [*NAMED, b"dups", b"empty"]
    with env.begin() as txn:
        main_db = {k: v for k, v in txn.cursor() if k not in names}
        named, dupsort = {}, {}
        for name in names:
            dupsort[name] = bool(txn._find_db_record(name)[3] & fmt.DB_DUPSORT)
            db = env.open_db(name, txn=txn, create=False, dupsort=dupsort[name])
            named[name] = list(txn.cursor(db))
    env.close()
    return main_db, named, dupsort


@pytest.mark.parametrize("subdir", [True, False], ids=["directory", "data-file"])
def test_migrate_copies_every_database_of_an_lmdb_environment(
        tmp_path, capsys, monkeypatch, py_lmdb, migrate_reader, subdir):
    """Every named database, dupsort ones as dupsort, with a progress bar on a
    terminal; through py-lmdb or mdb_dump alike; LMDB's data file is only read."""
    src = make_lmdb_for_migrate(py_lmdb, tmp_path / ("lmdb" if subdir else "lmdb.file"), subdir)
    reader = migrate_reader()
    data = os.path.join(src, "data.mdb") if subdir else src
    before = sha(data)  # the lock file changes: migrate reads under LMDB's locking
    dst = tmp_path / "kvmm"
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    code, out, _ = run(capsys, "migrate", src, dst)
    assert code == 0
    assert out == f"{dst}: {len(MAIN)} records in the main database and 4 named databases, " \
                  f"from {src}\n"
    assert "migrate" in tty.getvalue() and "Traceback" not in tty.getvalue()
    if reader == "py-lmdb":  # the total is known up front
        assert "100%" in tty.getvalue()
    main_db, named, dupsort = migrated_contents(dst)
    assert main_db == MAIN
    assert named == {**{n: sorted(r.items()) for n, r in NAMED.items()},
                     b"dups": _dupsort_pairs(), b"empty": []}
    assert dupsort == {b"sub": False, b"two words": False, b"dups": True, b"empty": False}
    assert run(capsys, "check", dst)[0] == 0
    assert sha(data) == before


def test_migrate_without_py_lmdb_or_mdb_dump_says_what_to_install(tmp_path, capsys,
                                                                   monkeypatch, py_lmdb):
    src = make_lmdb(py_lmdb, tmp_path / "lmdb", {b"a": b"1"})
    monkeypatch.setitem(sys.modules, "lmdb", None)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    code, _, err = run(capsys, "migrate", src, tmp_path / "kvmm")
    assert code == 1
    assert one_line_error(err) == (
        "kvmm: reading LMDB needs py-lmdb (pip install lmdb) or LMDB's mdb_dump on PATH "
        "(Debian and Ubuntu: apt install lmdb-utils)")
    assert not (tmp_path / "kvmm").exists()


def test_migrate_carries_each_databases_flags(tmp_path, capsys, py_lmdb, migrate_reader):
    """integerkey, reverse_key, dupsort, dupfixed and integerdup databases arrive with
    their flags, so their keys keep LMDB's order (a main database with flags, which
    kvmm lacks, is refused: see _unsupported)."""
    env = py_lmdb.open(str(tmp_path / "lmdb"), map_size=LMDB_MAP_SIZE, max_dbs=4)
    numbers = [(n).to_bytes(8, sys.byteorder) for n in (7, 300, 2**40)]
    with env.begin(write=True) as txn:
        txn.put(b"main", b"1")
        for n in numbers:
            txn.put(n, b"v", db=env.open_db(b"numbers", txn=txn, integerkey=True))
        for k in (b"ab", b"ba", b"ca"):
            txn.put(k, b"v", db=env.open_db(b"reversed", txn=txn, reverse_key=True))
        dups = env.open_db(b"dups", txn=txn, dupsort=True, integerdup=True)
        for n in numbers:
            txn.put(b"k", n, db=dups)
    env.close()
    migrate_reader()
    code, _, err = run(capsys, "migrate", tmp_path / "lmdb", tmp_path / "kvmm")
    assert code == 0, err
    with kvmm.open(str(tmp_path / "kvmm"), max_dbs=4, readonly=True) as new, new.begin() as txn:
        db = new.open_db(b"numbers", txn=txn, create=False)
        assert db.flags(txn)["integerkey"]
        assert [k for k, _ in txn.cursor(db=db)] == numbers
        db = new.open_db(b"reversed", txn=txn, create=False)
        assert [k for k, _ in txn.cursor(db=db)] == [b"ba", b"ca", b"ab"]
        db = new.open_db(b"dups", txn=txn, create=False)
        assert db.flags(txn)["integerdup"] and db.flags(txn)["dupsort"]
        assert [v for _, v in txn.cursor(db=db)] == numbers


def test_migrate_refuses_reversedup_and_leaves_nothing(tmp_path, capsys, lmdb_tools,
                                                      migrate_reader):
    """LMDB's reversedup, which kvmm lacks and py-lmdb's flags() leave out (py-lmdb
    cannot make one: mdb_load does), named with its database by either reader."""
    src = tmp_path / "lmdb"
    src.mkdir()
    dump = b"".join(
        b"VERSION=3\nformat=print\ndatabase=%s\ntype=btree\n%sHEADER=END\n k\n v1\n k\n v2\n"
        b"DATA=END\n" % (name, head)
        for name, head in ((b"a plain one", b""), (b"backwards", b"dupsort=1\nreversedup=1\n")))
    tool("mdb_load", str(src), stdin=dump)
    migrate_reader()
    code, _, err = run(capsys, "migrate", src, tmp_path / "kvmm")
    assert code == 1
    assert one_line_error(err).startswith(f"kvmm: {src}: database backwards: ")
    assert "reversedup databases are not supported by kvmm" in err
    assert not (tmp_path / "kvmm").exists()


@pytest.mark.parametrize("target", ["kvmm", "file", "nonempty"])
def test_migrate_needs_an_lmdb_source_and_a_new_target(tmp_path, capsys, py_lmdb, target):
    src = make_lmdb(py_lmdb, tmp_path / "lmdb", {b"a": b"1"})
    make_kvmm(tmp_path / "kvmm", {b"b": b"2"})
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "f").write_bytes(b"x")
    before = _files_and_bytes(tmp_path)
    code, _, err = run(capsys, "migrate", src, tmp_path / target)
    assert code == 1 and "exists" in one_line_error(err)
    code, _, err = run(capsys, "migrate", tmp_path / "kvmm", tmp_path / "new")
    assert code == 1 and "not an LMDB environment" in one_line_error(err)
    assert _files_and_bytes(tmp_path) == before


def _files_and_bytes(root) -> dict:
    return {str(p): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.parametrize("args", [["get", "k"], ["scan"], ["stat"], ["dump", "-a"], ["check"],
                                  ["put", "k", "v"], ["restore", "-f", "DUMP"]],
                         ids=lambda args: args[0])
def test_commands_on_an_lmdb_environment_name_kvmm_migrate_and_touch_nothing(
        tmp_path, capsys, py_lmdb, args):
    src = make_lmdb(py_lmdb, tmp_path / "lmdb", {b"k": b"1"})
    dump = write_dump(tmp_path / "d", b" 6b\n 32\nDATA=END\n")
    args = [dump if a == "DUMP" else a for a in args]
    before = _files_and_bytes(tmp_path)
    code, out, err = run(capsys, args[0], src, *args[1:]) if args[0] != "restore" else \
        run(capsys, *args, src)
    assert code == 1
    assert f"kvmm migrate {src} NEW_PATH" in out + err
    assert _files_and_bytes(tmp_path) == before


# --- check ----------------------------------------------------------------------------


def build_for_damage(path) -> dict:
    """A database with branch, leaf and overflow pages, a named database and free pages;
    returns where things are."""
    env = kvmm.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        for i in range(600):
            txn.put(b"key%05d" % i, b"v" * 50)
        txn.put(b"big", b"x" * 20000)
    db = env.open_db(b"sub")
    with env.begin(write=True) as txn:
        for i in range(0, 600, 3):
            txn.delete(b"key%05d" % i)
        txn.put(b"a", b"b", db=db)
    with env.begin() as txn:
        meta = txn.meta
        root = txn.load(meta.main[0], meta.main[1])
        assert root.kids is not None, "the main tree should have a branch root"
        leaf = txn.load(root.kids[1], root.ktxn[1])
        cur = txn.cursor()
        cur.set_key(b"big")
        big_leaf, i = cur._path[-1]
        overflow = fmt.decode_overflow_ref(big_leaf.vals[i])[0]
        where = {
            "ps": txn.page_size,
            "meta": meta,
            "root": root,
            "leaf": leaf,
            "overflow": overflow,
        }
    env.close()
    data = str(path / "data.kvmm")
    with open(data, "rb") as f:
        head = f.read(2 * where["ps"])
    where["slot"] = [fmt.decode_meta(head[s * where["ps"] :]).txnid for s in range(2)].index(
        meta.txnid
    )
    return where


def write_at(path, offset: int, data: bytes) -> None:
    with open(path / "data.kvmm", "r+b") as f:
        f.seek(offset)
        f.write(data)


def rewrite_meta(path, w, **changes) -> None:
    m = w["meta"]
    fields = {
        "page_size": m.page_size,
        "txnid": m.txnid,
        "next_pgno": m.next_pgno,
        "flags": m.flags,
        "boot_id": m.boot_id,
        "main": m.main,
        "free": m.free,
        "inline_free": m.inline_free,
    }
    fields.update(changes)
    write_at(path, w["slot"] * w["ps"], fmt.encode_meta(fmt.Meta(**fields)))


def lose_a_page(path, w) -> str:
    rewrite_meta(path, w, next_pgno=w["meta"].next_pgno + 1)
    return f"lost): {w['meta'].next_pgno}"


def use_a_page_twice(path, w) -> str:
    root = w["root"]
    kids, ktxn = list(root.kids), list(root.ktxn)
    kids[1], ktxn[1] = kids[0], ktxn[0]
    write_at(
        path,
        root.pgno * w["ps"],
        fmt.encode_branch(root.pgno, root.txnid, root.keys, kids, ktxn, w["ps"]),
    )
    return f"page {kids[0]}: used twice"


def put_keys_out_of_order(path, w) -> str:
    leaf = w["leaf"]
    keys, vals = list(leaf.keys), list(leaf.vals)
    keys[0], keys[1] = keys[1], keys[0]
    vals[0], vals[1] = vals[1], vals[0]
    write_at(
        path,
        leaf.pgno * w["ps"],
        fmt.encode_leaf(leaf.pgno, leaf.txnid, keys, vals, leaf.flags, w["ps"]),
    )
    return f"page {leaf.pgno}: keys out of order"


def break_a_meta_checksum(path, w) -> str:
    other = 1 - w["slot"]
    write_at(path, other * w["ps"] + 30, b"\xa5")
    return f"meta {other}: unreadable"


def break_the_overflow_run(path, w) -> str:
    write_at(path, w["overflow"] * w["ps"] + 8, (w["overflow"] + 1).to_bytes(8, "little"))
    return f"page {w['overflow']}: header names page {w['overflow'] + 1}"


def free_a_reachable_page(path, w) -> str:
    m, leaf = w["meta"], w["leaf"]
    rewrite_meta(path, w, inline_free=tuple(m.inline_free) + (m.txnid, leaf.pgno))
    return f"page {leaf.pgno}: used twice"


def flip_a_byte_in_a_leaf(path, w) -> str:
    write_at(path, w["leaf"].pgno * w["ps"] + 100, b"\xff\x00\xff")
    return f"page {w['leaf'].pgno}: checksum mismatch"


def test_check_reports_a_clean_file_as_clean(tmp_path, capsys):
    db = make_kvmm(tmp_path / "db", MAIN, NAMED)
    before = sha(tmp_path / "db" / "data.kvmm")
    code, out, err = run(capsys, "check", db)
    assert (code, err) == (0, "") and out.startswith(f"{db}: clean")
    assert sha(tmp_path / "db" / "data.kvmm") == before


@pytest.mark.parametrize(
    "damage",
    [
        lose_a_page,
        use_a_page_twice,
        put_keys_out_of_order,
        break_the_overflow_run,
        free_a_reachable_page,
        flip_a_byte_in_a_leaf,
    ],
    ids=lambda f: f.__name__,
)
def test_check_finds_each_damage_and_changes_nothing(tmp_path, capsys, damage):
    path = tmp_path / "db"
    expected = damage(path, build_for_damage(path))
    before = sha(path / "data.kvmm")
    code, out, err = run(capsys, "check", path)
    assert code == 1
    assert any(expected in line for line in out.splitlines()), out
    assert one_line_error(err).endswith("found")
    assert sha(path / "data.kvmm") == before


def test_check_notes_a_spare_meta_with_a_bad_checksum_which_loses_nothing(tmp_path, capsys):
    """A crash can tear the meta being written; the other, steady one is used, so
    check says so on a note line and passes. A read-write open then mends it."""
    path = tmp_path / "db"
    expected = break_a_meta_checksum(path, build_for_damage(path))
    before = sha(path / "data.kvmm")
    code, out, err = run(capsys, "check", path)
    assert code == 0 and err == ""
    assert any(line.startswith("note: " + expected) for line in out.splitlines()), out
    assert sha(path / "data.kvmm") == before
    kvmm.open(str(path), max_dbs=4).close()
    code, out, err = run(capsys, "check", path)
    assert code == 0 and "note:" not in out


def test_check_of_a_file_that_is_not_kvmm_reports_it(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database" * 1000)
    code, out, err = run(capsys, "check", junk)
    assert code == 1 and "not a kvmm data file" in out
    one_line_error(err)


# --- copy -----------------------------------------------------------------------------


@pytest.mark.parametrize("compact", [False, True], ids=["plain", "compact"])
def test_copy_during_concurrent_writes_is_a_committed_state(tmp_path, capsys, monkeypatch, compact):
    import kvmm.cli.copy as copy_cmd
    import kvmm.copy as core_copy

    # Small steps, so the copy reports progress often; it waits there for commits.
    monkeypatch.setattr(core_copy, "COPY_CHUNK_PAGES", 8)
    monkeypatch.setattr(core_copy, "COMPACT_BATCH", 200)
    src = tmp_path / "src"
    env = kvmm.open(str(src))
    with env.begin(write=True) as txn:
        for i in range(1500):
            txn.put(b"base%05d" % i, b"x" * 100)
        txn.put(b"gen", b"0")
    committed = [0]
    stop = threading.Event()

    def writer():
        gen = 0
        while not stop.is_set():
            gen += 1
            with env.begin(write=True) as txn:
                for j in range(20):
                    txn.put(b"g%06d-%02d" % (gen, j), b"%d" % gen * 30)
                for j in range(20):
                    txn.delete(b"g%06d-%02d" % (gen - 3, j))
                txn.put(b"gen", b"%d" % gen)
            committed[0] = gen

    waited = []  # (commits when the copy first reported progress, commits after waiting)

    class WaitForCommits:
        def __init__(self, *args, **kwargs):
            self.enabled = False

        def __call__(self, n=1):
            if not waited:
                start = committed[0]
                while committed[0] < start + 3:
                    time.sleep(0.001)
                waited.append((start, committed[0]))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(copy_cmd, "Progress", WaitForCommits)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while committed[0] < 2:
            time.sleep(0.001)
        dst = tmp_path / "dst"
        code = main(["copy", *(["-c"] if compact else []), str(src), str(dst)])
    finally:
        stop.set()
        thread.join()
        env.close()
    assert code == 0
    [(before, after)] = waited
    assert after >= before + 3  # commits made while the copy was under way
    assert run(capsys, "check", dst)[0] == 0
    copied = kvmm_contents(dst)[0]
    gen = int(copied[b"gen"])
    # The snapshot the copy began with, not a later state (the writer counts a commit
    # just after making it, so the copy may hold one more than it had counted).
    assert 2 <= gen <= before + 1
    state = {b"base%05d" % i: b"x" * 100 for i in range(1500)}
    state[b"gen"] = b"%d" % gen
    for g in range(max(1, gen - 2), gen + 1):
        state.update({b"g%06d-%02d" % (g, j): b"%d" % g * 30 for j in range(20)})
    assert copied == state


def test_copy_refuses_a_target_holding_a_database(tmp_path, capsys):
    src = make_kvmm(tmp_path / "src", {b"a": b"1"})
    dst = make_kvmm(tmp_path / "dst", {b"b": b"2"})
    code, _, err = run(capsys, "copy", src, dst)
    assert code == 1 and "already holds a database" in one_line_error(err)
    assert kvmm_contents(dst)[0] == {b"b": b"2"}


@pytest.mark.parametrize("compact", [False, True], ids=["plain", "compact"])
def test_copy_of_a_data_file_database_is_a_data_file(tmp_path, capsys, compact):
    src = str(tmp_path / "src.db")
    with kvmm.open(src, subdir=False) as env, env.begin(write=True) as txn:
        txn.put(b"a", b"1")
    dst = tmp_path / "copy.db"
    assert run(capsys, "copy", *(["-c"] if compact else []), src, dst) == (0, "", "")
    assert dst.is_file()
    assert sorted(os.listdir(tmp_path)) == ["copy.db", "src.db", "src.db-lock"]
    with kvmm.open(str(dst), subdir=False, readonly=True) as env, env.begin() as txn:
        assert list(txn.cursor()) == [(b"a", b"1")]
    code, _, err = run(capsys, "copy", src, dst)
    assert code == 1 and "already exists" in one_line_error(err)


# --- readers, stat, the edit commands, tour -------------------------------------------


def test_readers_lists_live_and_dead_readers_and_clears_stale_ones(tmp_path, capsys):
    db = make_kvmm(tmp_path / "db", {b"a": b"1"})
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import sys, time, kvmm
            env = kvmm.open(sys.argv[1])
            txn = env.begin()
            print(txn.id(), flush=True)
            time.sleep(60)
        """),
            db,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        txnid = int(child.stdout.readline())
        code, out, _ = run(capsys, "readers", db)
        assert code == 0
        assert [ln.split()[1:] for ln in out.splitlines()[1:]] == [
            [str(child.pid), str(txnid), "alive"]
        ]
        code, out, _ = run(capsys, "stat", "-r", db)
        assert out.splitlines()[2].split() == [str(child.pid), "0", str(txnid)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert run(capsys, "readers", db)[1].splitlines()[1].split()[-1] == "dead"
    code, out, _ = run(capsys, "readers", "-c", db)
    assert out.splitlines() == ["cleared 1 stale reader slot", "(no reader slots in use)"]


def test_stat_shows_every_section(tmp_path, capsys):
    db = make_kvmm(tmp_path / "db", MAIN, NAMED)
    code, out, err = run(capsys, "stat", "-a", "-e", "-f", "-r", db)
    assert (code, err) == (0, "")
    titles = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert titles == [
        "Environment Info",
        "Reader Table Status",
        "(no active readers)",
        "Freelist Status",
        "Status of Main DB",
        "Status of sub",
        "Status of two words",
    ]
    sections = out.split("Status of ")
    assert f"Entries: {len(MAIN) + len(NAMED)}" in sections[1]
    assert f"Entries: {len(NAMED[b'sub'])}" in sections[2]


def test_scan_with_a_prefix_of_a_reverse_key_database_finds_every_match(tmp_path,
                                                                         capsysbinary):
    """Keys with a prefix are apart in reverse_key order: the scan looks at them all,
    in the database's order, up to --limit matches."""
    env = kvmm.open(str(tmp_path / "db"), max_dbs=2)
    db = env.open_db(b"rev", reverse_key=True)
    with env.begin(write=True, db=db) as txn:
        for key in (b"ab", b"b", b"ac", b"xa", b"a"):
            txn.put(key, b"1")
    env.close()
    assert main(["scan", "-s", "rev", "--keys", str(tmp_path / "db"), "--prefix", "a"]) == 0
    assert capsysbinary.readouterr().out == b"a\nab\nac\n"
    assert main(["scan", "-s", "rev", "--keys", "--limit", "2", str(tmp_path / "db"),
                 "--prefix", "a"]) == 0
    assert capsysbinary.readouterr().out == b"a\nab\n"


def test_get_put_del_scan_in_text_and_hex(tmp_path, capsysbinary, monkeypatch):
    db = str(tmp_path / "db")
    assert main(["put", "--create", db, "apple", "red"]) == 0
    assert main(["put", db, "apricot", "orange"]) == 0
    assert main(["put", "-x", db, "62ff", "00ff"]) == 0
    assert main(["put", "-s", "prices", db, "apple", "0.40"]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x00from stdin\n")))
    assert main(["put", db, "cherry"]) == 0
    capsysbinary.readouterr()
    assert main(["get", db, "cherry"]) == 0
    assert capsysbinary.readouterr().out == b"\x00from stdin\n"
    assert main(["get", "-x", db, "62ff"]) == 0
    assert capsysbinary.readouterr().out == b"00ff\n"
    assert main(["get", "-s", "prices", db, "apple"]) == 0
    assert capsysbinary.readouterr().out == b"0.40"
    assert main(["scan", db, "--prefix", "ap"]) == 0
    assert capsysbinary.readouterr().out == b"apple\tred\napricot\torange\n"
    assert main(["scan", db, "--limit", "2", "--keys"]) == 0
    assert capsysbinary.readouterr().out == b"apple\napricot\n"
    assert main(["scan", "-x", db, "--start", "62"]) == 0
    assert capsysbinary.readouterr().out == (
        b"62ff\t00ff\n636865727279\t0066726f6d20737464696e0a\n"
    )
    assert main(["del", db, "apple"]) == 0
    assert main(["put", "-N", db, "apricot", "green"]) == 1
    assert main(["del", db, "apple"]) == 1
    assert main(["get", db, "apple"]) == 1
    err = capsysbinary.readouterr().err.decode().splitlines()
    assert err == [
        "kvmm: key apricot exists (-N keeps it)",
        "kvmm: key apple not found",
        "kvmm: key apple not found",
    ]
    assert kvmm_contents(db, [b"prices"]) == (
        {b"apricot": b"orange", b"b\xff": b"\x00\xff", b"cherry": b"\x00from stdin\n"},
        {b"prices": {b"apple": b"0.40"}},
    )


def test_get_writes_a_value_byte_for_byte_through_python_m_kvmm(tmp_path):
    """`kvmm get db k > f` gives the value: nothing added, whatever the bytes."""
    value = bytes(range(256)) * 19 + b"\n\r\n"  # 4,867 bytes, line ends included
    db = make_kvmm(tmp_path / "db", {b"k": value, b"empty": b""})
    for key, want in ((b"k", value), (b"empty", b"")):
        got = subprocess.run([sys.executable, "-m", "kvmm", "get", db, key.decode()],
                             capture_output=True, check=True)
        assert (got.stdout, got.stderr) == (want, b"")


def test_put_on_a_missing_path_needs_create_and_makes_nothing(tmp_path, capsys):
    before = sorted(os.listdir(tmp_path))
    code, _, err = run(capsys, "put", tmp_path / "tpyo", "k", "v")
    assert code == 1
    assert one_line_error(err) == (f"kvmm: {tmp_path / 'tpyo'}: no such database "
                                   "(put --create makes one)")
    assert sorted(os.listdir(tmp_path)) == before
    assert run(capsys, "put", "--create", tmp_path / "db", "k", "v") == (0, "", "")
    assert kvmm_contents(tmp_path / "db")[0] == {b"k": b"v"}


@pytest.mark.parametrize(
    "args",
    [["get", "k"], ["scan"], ["stat"], ["dump"], ["check"], ["del", "k"], ["readers"]],
    ids=lambda args: args[0],
)
def test_reads_and_del_on_a_missing_path_create_nothing(tmp_path, capsys, args):
    for path in (tmp_path / "missing", tmp_path / "empty-dir"):
        (tmp_path / "empty-dir").mkdir(exist_ok=True)
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        code, _, err = run(capsys, args[0], path, *args[1:])
        assert code == 1 and "kvmm: " in err
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_tour_runs_on_a_new_path_and_leaves_a_clean_database(tmp_path, capsys):
    code, out, err = run(capsys, "tour", tmp_path / "demo")
    assert (code, err) == (0, "")
    assert "[] - clean" in out and "b'0.40', b'red'" in out and "None, b'green'" in out
    assert run(capsys, "check", tmp_path / "demo")[0] == 0
    code, _, err = run(capsys, "tour", tmp_path / "demo")
    assert code == 1 and "exists" in one_line_error(err)


def test_tour_without_a_path_works_after_install(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "kvmm", "tour"], capture_output=True, text=True, env=env, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "[] - clean" in done.stdout and str(tmp_path) in done.stdout


# --- the command line as a whole ------------------------------------------------------


def test_help_lists_every_command_with_a_line_each():
    done = subprocess.run(
        [sys.executable, "-m", "kvmm", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    listed = {
        ln.split()[0]
        for ln in done.stdout.split("commands:")[1].splitlines()[2:]
        if ln.startswith("    ") and not ln.startswith("      ")
    }
    assert listed == {
        "dump",
        "restore",
        "stat",
        "check",
        "copy",
        "migrate",
        "readers",
        "get",
        "put",
        "del",
        "scan",
        "tour",
    }


def damaged_meta_db(tmp_path):
    db = make_kvmm(tmp_path / "bad", {b"a": b"1"})
    with open(os.path.join(db, "data.kvmm"), "r+b") as f:
        for slot in range(2):
            f.seek(slot * 4096 + 40)
            f.write(b"\xa5\xa5")
    return db


def damaged_leaf_db(tmp_path):
    path = tmp_path / "bad"
    flip_a_byte_in_a_leaf(path, build_for_damage(path))
    return str(path)


def junk_file(tmp_path):
    (tmp_path / "junk").write_bytes(b"x" * 10000)
    return str(tmp_path / "junk")


@pytest.mark.parametrize(
    "args, what",
    [
        (lambda p: ["dump", str(p / "missing")], "no such database"),
        (lambda p: ["stat", str(p)], "not a kvmm database"),
        (lambda p: ["dump", junk_file(p)], "not a kvmm data file"),
        (lambda p: ["dump", damaged_meta_db(p)], "meta"),
        (lambda p: ["dump", damaged_leaf_db(p)], "checksum mismatch"),
        (
            lambda p: ["restore", "-f", str(p / "missing.txt"), str(p / "db")],
            "No such file or directory",
        ),
        (lambda p: ["restore", "-f", junk_file(p), str(p / "db")], "line 1: unexpected format"),
        (
            lambda p: ["dump", "-s", "nope", make_kvmm(p / "db", {b"a": b"1"})],
            "no database named nope",
        ),
        (lambda p: ["get", make_kvmm(p / "db", {b"a": b"1"}), "b"], "key b not found"),
        (lambda p: ["get", "-x", make_kvmm(p / "db", {b"a": b"1"}), "zz"], "not hex"),
        (lambda p: ["del", str(p / "missing"), "a"], "no such database"),
        (lambda p: ["copy", str(p / "missing"), str(p / "dst")], "no such database"),
        (lambda p: ["readers", junk_file(p)], "not a kvmm data file"),
    ],
    ids=[
        "missing-path",
        "empty-dir",
        "not-kvmm",
        "bad-metas",
        "damaged-page",
        "missing-input",
        "bad-input",
        "missing-named-db",
        "missing-key",
        "bad-hex-arg",
        "del-missing-path",
        "copy-missing-source",
        "readers-not-kvmm",
    ],
)
def test_expected_failures_print_one_line_and_exit_1(tmp_path, capsys, args, what):
    argv = args(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert what in one_line_error(err)


def test_errors_through_python_m_kvmm_have_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "kvmm", "check", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"kvmm: {tmp_path / 'none'}: no such database\n"
    done = subprocess.run(
        [sys.executable, "-m", "kvmm", "dump", "--bogus", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "usage:" in done.stderr


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_on_a_terminal():
    import tqdm  # noqa: F401  (the test extra installs it)
    tty = Terminal()
    with Progress("dump", 10, "rec", stream=tty) as bar:
        assert bar.enabled
        bar(10)
    assert "dump" in tty.getvalue() and "10/10" in tty.getvalue()


def test_progress_is_silent_off_a_terminal_or_without_tqdm(monkeypatch):
    pipe = io.StringIO()
    with Progress("dump", 10, stream=pipe) as quiet:
        quiet(10)
        assert not quiet.enabled
    assert pipe.getvalue() == ""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    tty = Terminal()
    with Progress("dump", 10, stream=tty) as no_tqdm:
        no_tqdm(5)
        assert not no_tqdm.enabled
    assert tty.getvalue() == ""
