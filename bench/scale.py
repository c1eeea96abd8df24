#!/usr/bin/env python3
"""Scale: what a get and a put cost as the data grow, kvmm beside py-lmdb and SQLite.

Two measurements. Every step runs in fresh child processes of this script, one store
after the other, never two measurements at once:

scale    For each N of --n, per store: a fresh process fills a new store with N records
         in random key order, FILL_TXN_PUTS puts per write transaction, sync off, and
         closes it; a second fresh process opens the file read-only and does READ_GETS
         random gets of existing keys in one read transaction, twice (same keys).
readers  On a store of --readers-n records (filled as above, untimed), per M of
         --readers: M reader processes each run read transactions of READER_TXN_GETS
         random gets for --seconds, while a writer process commits one put per write
         transaction (a random existing key overwritten, sync off).

Run it (up to 10^7, about 20 minutes on an idle 2-core machine; bench/README.md):

    python bench/scale.py --n 1e5,1e6,1e7 --mode scale --out bench/results/scale
    python bench/scale.py --mode readers --readers 2,4 --reps 3 --out bench/results/readers
    python bench/scale.py --n 1e5 --kvmm-src old=../other-checkout    # two kvmm side by side

Stores: kvmm with sync=False and default settings (--kvmm-opt cache_size=... overrides);
py-lmdb with sync=False and a LMDB_MAP_SIZE map (address space only); SQLite in WAL mode,
synchronous=OFF, table kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID, as bench/bench.py.
Keys are 16 bytes (bench.py's KEY, ">QQ") drawn from a seeded splitmix64 stream, values
--value-size bytes from bench.py's pool of VALUE_POOL random values (see `Records`).

Rows of the scale table, per N (each cell the median over --reps; µs lower is better):
  fill µs/put        time inside write transactions (begin, puts, commit) / N
  get µs, 1st pass   first READ_GETS gets in the fresh read-only process / READ_GETS: the
                     process's caches are cold (the OS's page cache is warm from the fill)
  get µs, 2nd pass   the same keys again, same read transaction: the process is warm
  file MiB           all the store's files after the fill process closed it
  fill peak RSS MiB  ru_maxrss of the fill process
  read peak RSS MiB  ru_maxrss of the read process (counts resident pages of a mapped file)
  read RssAnon MiB   the read process's own anonymous memory after the reads (/proc/self
                     /status): its heap, not shared with other processes
  RssAnon before open  the same before the store was opened: the interpreter and the keys
Rows of the readers table, per M:
  reader µs/get      each reader's time / its gets, averaged over the M readers
  writer commits/s   the writer's commits over the time the readers ran
  reader RssAnon MiB the largest reader's RssAnon after its reads (before open: the row below)
Columns: one per store; `X/lmdb` is store X's value over py-lmdb's (< 1: less time or
memory than py-lmdb; for commits/s, > 1 is better).

Every get is checked: a pass counts the gets that returned the key's value, and a child
fails (the cell reads ERR) unless all did. A fill is checked by its entry count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

from footprint import status_kib

import bench

FILL_TXN_PUTS = 100_000  # puts per write transaction of a fill
READ_GETS = 200_000  # random gets per pass of the read process
READER_TXN_GETS = 100  # gets per read transaction of a reader beside the writer
READER_KEYS = 100_000  # random keys a reader cycles through (its heap holds them)
WRITER_KEYS = 100_000  # random overwrites the writer cycles through
STORE_KINDS = ("kvmm", "lmdb", "sqlite3")
MIB = 1 << 20

# splitmix64 (Steele, Lea, Flood 2014): a counter-based generator, so record i's key is
# made from i alone and no process holds a list of N keys (at 10^7, ~700 MiB of RSS).
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> int:
    """splitmix64's output for a state: a bijection of 64-bit integers."""
    z = state & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class Records:
    """Record i of every store, made from --seed alone, the same in every process.

    Key i packs outputs 2i and 2i+1 of a splitmix64 stream seeded with the seed: random
    16-byte keys, all distinct (the first half alone is a bijection of i), so filling in
    order of i fills in random key order. Values are bench.py's: a pool of VALUE_POOL
    random values; record i holds the pool's value i, an overwrite its value i + 1
    (indices modulo VALUE_POOL).
    """

    def __init__(self, seed: int, value_size: int) -> None:
        self.seed = seed
        rng = random.Random(seed)
        self.pool = [rng.randbytes(value_size) for _ in range(bench.VALUE_POOL)]

    def key(self, i: int) -> bytes:
        state = self.seed + (2 * i + 1) * GOLDEN
        return bench.KEY.pack(splitmix64(state), splitmix64(state + GOLDEN))

    def value(self, i: int) -> bytes:
        return self.pool[i % bench.VALUE_POOL]

    def new_value(self, i: int) -> bytes:
        return self.pool[(i + 1) % bench.VALUE_POOL]

    def draw(self, count: int, n: int, purpose: str) -> tuple[list[bytes], ...]:
        """Keys, values and overwrite values of `count` random records below n (with
        repeats): the same in every process for the same purpose."""
        rng = random.Random(f"{self.seed}:{purpose}")
        keys, values, new_values = [], [], []
        for _ in range(count):
            i = rng.randrange(n)
            keys.append(self.key(i))
            values.append(self.value(i))
            new_values.append(self.new_value(i))
        return keys, values, new_values


# --------------------------------------------------------------------------- child side


class Sqlite:
    """SQLite behind py-lmdb's begin()/stat()/close(): bench.py's SqliteStore set-up, or
    the same file opened read-only."""

    def __init__(self, path: str, readonly: bool) -> None:
        if readonly:
            uri = Path(path, "kv.sqlite").as_uri() + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.conn = bench.SqliteStore(path, sync=False).conn

    def begin(self, write: bool = False) -> bench.SqliteTxn:
        return bench.SqliteTxn(self.conn, "BEGIN IMMEDIATE" if write else "BEGIN")

    def stat(self) -> dict[str, int]:
        return {"entries": self.conn.execute("SELECT count(*) FROM kv").fetchone()[0]}

    def close(self) -> None:
        self.conn.close()


def open_store(cfg: dict[str, Any], readonly: bool) -> Any:
    """The store of cfg["path"], seen through py-lmdb's begin(write=...), stat(), close()."""
    kind, path = cfg["store"], cfg["path"]
    if kind == "sqlite3":
        return Sqlite(path, readonly)
    if kind == "lmdb":
        import lmdb

        return lmdb.open(path, sync=False, readonly=readonly, map_size=bench.LMDB_MAP_SIZE)
    import kvmm  # from KVMM_SRC_VAR's checkout: importing bench put it first on sys.path

    return kvmm.open(path, sync=False, readonly=readonly, **cfg["kvmm_opts"])


def identity(kind: str) -> dict[str, Any]:
    """Which module was measured: its version and file."""
    if kind == "sqlite3":
        return {"version": sqlite3.sqlite_version, "module_file": sqlite3.__file__}
    module = sys.modules[kind]
    return {"version": getattr(module, "__version__", "?"), "module_file": module.__file__}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # KiB on Linux


def anon_mib() -> float:
    return status_kib("RssAnon") * 1024 / MIB


def dir_mib(path: str) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / MIB


def child_fill(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill a new store with records 0..n-1, FILL_TXN_PUTS per write transaction.

    Each transaction's items are made before its clock starts: the time is the store's.
    """
    records, n = Records(cfg["seed"], cfg["value_size"]), cfg["n"]
    env = open_store(cfg, readonly=False)
    seconds = 0.0
    for start in range(0, n, FILL_TXN_PUTS):
        items = [
            (records.key(i), records.value(i)) for i in range(start, min(n, start + FILL_TXN_PUTS))
        ]
        started = time.perf_counter()
        with env.begin(write=True) as txn:
            put = txn.put
            for key, value in items:
                put(key, value)
        seconds += time.perf_counter() - started
    entries = env.stat()["entries"]
    env.close()
    bench.expect(entries, n, "entries after the fill")
    return {
        "fill_us": seconds / n * 1e6,
        "file_mib": dir_mib(cfg["path"]),
        "fill_rss_mib": max_rss_mib(),
        **identity(cfg["store"]),
    }


def child_read(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open the store read-only; READ_GETS random gets, twice, in one read transaction."""
    records = Records(cfg["seed"], cfg["value_size"])
    keys, values, _new_values = records.draw(READ_GETS, cfg["n"], "read")
    anon_before = anon_mib()
    env = open_store(cfg, readonly=True)
    times = []
    with env.begin() as txn:
        get = txn.get
        for _ in range(2):
            found = 0
            started = time.perf_counter()
            for key, value in zip(keys, values):
                if get(key) == value:
                    found += 1
            times.append(time.perf_counter() - started)
            bench.expect(found, len(keys), "gets that returned the key's value")
    anon_after = anon_mib()
    env.close()
    return {
        "get1_us": times[0] / len(keys) * 1e6,
        "get2_us": times[1] / len(keys) * 1e6,
        "read_rss_mib": max_rss_mib(),
        "read_anon_mib": anon_after,
        "read_anon_open_mib": anon_before,
        **identity(cfg["store"]),
    }


def child_reader(cfg: dict[str, Any]) -> dict[str, Any]:
    """A reader beside the writer: says "ready" once open, starts on "go", reads for
    cfg["seconds"]; a get counts as found when it returns the old or the new value."""
    records = Records(cfg["seed"], cfg["value_size"])
    drawn = records.draw(READER_KEYS, cfg["n"], f"reader {cfg['index']}")
    batches = [
        tuple(column[j : j + READER_TXN_GETS] for column in drawn)
        for j in range(0, READER_KEYS, READER_TXN_GETS)
    ]
    del drawn
    anon_before = anon_mib()
    env = open_store(cfg, readonly=False)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("reader: the writer did not say go")
    gets = found = 0
    started = time.perf_counter()
    deadline = started + cfg["seconds"]
    for keys, old, new in cycle(batches):
        with env.begin() as txn:
            get = txn.get
            for key, a, b in zip(keys, old, new):
                value = get(key)
                if value == a or value == b:
                    found += 1
        gets += len(keys)
        if time.perf_counter() >= deadline:
            break
    seconds = time.perf_counter() - started
    anon_after = anon_mib()
    env.close()
    bench.expect(found, gets, "a reader's gets that returned the key's value")
    return {"gets": gets, "seconds": seconds, "anon_mib": anon_after, "anon_open_mib": anon_before}


def child_writer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Start cfg["readers"] reader processes; commit one overwrite per write transaction
    from their "go" until the last of them is done."""
    records = Records(cfg["seed"], cfg["value_size"])
    keys, _values, new_values = records.draw(WRITER_KEYS, cfg["n"], "writer")
    items = list(zip(keys, new_values))
    env = open_store(cfg, readonly=False)
    readers = [
        subprocess.Popen(
            child_command("reader", {**cfg, "index": index}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(cfg["readers"])
    ]
    commits, seconds = 0, 0.0
    try:
        if all(proc.stdout.readline().strip() == "ready" for proc in readers):
            for proc in readers:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            started = time.perf_counter()
            while commits % 64 or any(proc.poll() is None for proc in readers):
                key, value = items[commits % WRITER_KEYS]
                with env.begin(write=True) as txn:
                    txn.put(key, value)
                commits += 1
            seconds = time.perf_counter() - started
    finally:
        for proc in readers:
            if proc.poll() is None:
                proc.kill()  # a reader waiting for "go" after another failed to start
        outputs = [proc.communicate() for proc in readers]
    failed = sorted(
        (proc.returncode < 0, proc.returncode, err)
        for proc, (_out, err) in zip(readers, outputs)
        if proc.returncode
    )
    if failed:  # the reader that failed by itself first, before those killed above
        _killed, status, err = failed[0]
        raise SystemExit(
            f"a reader exited with status {status}: {(err.strip().splitlines() or ['no message'])[-1]}"
        )
    reports = [json.loads(out.splitlines()[-1]) for out, _err in outputs]
    bench.expect(env.stat()["entries"], cfg["n"], "entries after the writer")
    env.close()
    return {
        "get_us": statistics.mean(r["seconds"] / r["gets"] * 1e6 for r in reports),
        "commits_per_s": commits / seconds,
        "anon_mib": max(r["anon_mib"] for r in reports),
        "anon_open_mib": max(r["anon_open_mib"] for r in reports),
        "readers": reports,
        **identity(cfg["store"]),
    }


CHILDREN = {"fill": child_fill, "read": child_read, "reader": child_reader, "writer": child_writer}


def child_command(role: str, cfg: dict[str, Any]) -> list[str]:
    """This script run as a child in `role` (a key of CHILDREN) on `cfg`."""
    return [sys.executable, os.path.abspath(__file__), "--child", role, "--config", json.dumps(cfg)]


# --------------------------------------------------------------------------- parent side


class ChildFailed(Exception):
    """A child process failed or measured the wrong module: its cell reads ERR."""


@dataclass(frozen=True)
class Variant:
    """A column of the tables: a store, and for kvmm the checkout its package comes from."""

    label: str
    kind: str
    src: Path | None = None


def run_child(role: str, variant: Variant, cfg: dict[str, Any], timeout: float) -> dict:
    """One fresh child process; its report (with its wall time), or ChildFailed."""
    env = dict(os.environ)
    env[bench.KVMM_SRC_VAR] = str(variant.src or bench.ROOT)
    command = child_command(role, {**cfg, "store": variant.kind})
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"{role}: timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ChildFailed(f"{role} exited with status {proc.returncode}: {last}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if variant.src and not Path(report["module_file"]).resolve().is_relative_to(variant.src):
        raise ChildFailed(f"{role} measured {report['module_file']}, not {variant.src}'s kvmm")
    report["wall_s"] = time.perf_counter() - started
    return report


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def scale_once(variant: Variant, n: int, base: dict, args: argparse.Namespace, root: str) -> dict:
    """Fill N records in one child, read them back in another; both reports merged."""
    workdir = tempfile.mkdtemp(prefix=f"{variant.label}-{n}-", dir=root)
    cfg = {**base, "n": n, "path": os.path.join(workdir, "store")}
    try:
        fill = run_child("fill", variant, cfg, args.timeout)
        progress(f"  fill {fill['fill_us']:.2f} µs/put ({fill['wall_s']:.1f} s)")
        read = run_child("read", variant, cfg, args.timeout)
        progress(f"  gets {read['get1_us']:.2f}, {read['get2_us']:.2f} µs ({read['wall_s']:.1f} s)")
        return {**fill, **read, "fill_wall_s": fill["wall_s"], "read_wall_s": read["wall_s"]}
    except ChildFailed as exc:
        progress(f"  ERROR: {exc}")
        return {"error": str(exc)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def readers_once(variant: Variant, base: dict, args: argparse.Namespace, root: str) -> dict:
    """Fill --readers-n records, then one writer child per M of --readers; {M: report}."""
    workdir = tempfile.mkdtemp(prefix=f"{variant.label}-readers-", dir=root)
    cfg = {**base, "n": args.readers_n, "path": os.path.join(workdir, "store")}
    out: dict[int, dict] = {}
    try:
        run_child("fill", variant, cfg, args.timeout)
        for m in args.readers:
            try:
                out[m] = run_child(
                    "writer", variant, {**cfg, "readers": m, "seconds": args.seconds}, args.timeout
                )
                progress(
                    f"  {m} readers: {out[m]['get_us']:.2f} µs/get, "
                    f"{out[m]['commits_per_s']:,.0f} commits/s"
                )
            except ChildFailed as exc:
                progress(f"  {m} readers: ERROR: {exc}")
                out[m] = {"error": str(exc)}
    except ChildFailed as exc:
        progress(f"  ERROR: {exc}")
        out = {m: {"error": str(exc)} for m in args.readers}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


SCALE_ROWS = (
    ("fill_us", "fill µs/put"),
    ("get1_us", "get µs, 1st pass"),
    ("get2_us", "get µs, 2nd pass"),
    ("file_mib", "file MiB"),
    ("fill_rss_mib", "fill peak RSS MiB"),
    ("read_rss_mib", "read peak RSS MiB"),
    ("read_anon_mib", "read RssAnon MiB"),
    ("read_anon_open_mib", "RssAnon before open"),
)
READER_ROWS = (
    ("get_us", "reader µs/get"),
    ("commits_per_s", "writer commits/s"),
    ("anon_mib", "reader RssAnon MiB"),
    ("anon_open_mib", "RssAnon before open"),
)


def medians(reports: list[dict], rows: tuple) -> dict[str, Any]:
    """Median of each row's value over the repetitions; "ERR" when any of them failed."""
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return {"error": errors[0], **{key: "ERR" for key, _label in rows}}
    return {key: statistics.median(r[key] for r in reports) for key, _label in rows}


def fmt_cell(key: str, value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    if key.endswith("_us"):
        return bench.fmt_us(value)
    return f"{value:,.0f}" if key == "commits_per_s" else f"{value:,.1f}"


def count_label(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n == 10**exponent else f"{n:,}"


def table(title: str, groups: dict[str, dict], rows: tuple, labels: list[str]) -> list[str]:
    """Rows of (group, measure), a column per store, then X/lmdb for each kvmm column."""
    ratios = [lab for lab in labels if lab.startswith("kvmm")] if "lmdb" in labels else []
    lines = [["", "", *labels, *(f"{lab}/lmdb" for lab in ratios)]]
    for group, cells in groups.items():
        for index, (key, label) in enumerate(rows):
            line = [group if index == 0 else "", label]
            line += [fmt_cell(key, cells[lab][key]) for lab in labels]
            line += [bench.fmt_ratio(cells[lab][key], cells["lmdb"][key]) for lab in ratios]
            lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [title]
    for line in lines:
        out.append(
            "  ".join(
                cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                for i, cell in enumerate(line)
            ).rstrip()
        )
    errors = {
        f"{lab}: {cells[lab]['error']}"
        for cells in groups.values()
        for lab in labels
        if "error" in cells[lab]
    }
    return out + [f"  ERR {e}" for e in sorted(errors)] + [""]


def reports_of(runs: dict[str, dict], label: str) -> list[dict]:
    """Every report of one column, scale and readers."""
    return [
        r for by_group in runs.values() for by_label in by_group.values() for r in by_label[label]
    ]


def git_out(src: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(src), *args], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "?"


def kvmm_sources(variants: list[Variant]) -> dict[str, dict]:
    """For each kvmm column: its checkout, commit, uncommitted changes, hash of kvmm/*.py."""
    return {
        v.label: {
            "src": str(v.src),
            "commit": git_out(v.src, "rev-parse", "HEAD"),
            "uncommitted_changes": git_out(v.src, "status", "--porcelain", "--", "kvmm")
            not in ("", "?"),
            "sha256_of_py_files": bench.kvmm_hash(v.src),
        }
        for v in variants
        if v.src is not None
    }


def header(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    lines = [
        f"{meta['date']}: python bench/scale.py {meta['command']}",
        f"machine: {m['cpu']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}",
        bench.busy_line(meta["other_cpu_share"]) + f"; the run took {meta['wall_s'] / 60:.1f} min",
        "versions: " + ", ".join(f"{lab} {ver}" for lab, ver in meta["versions"].items()),
    ]
    for label, src in meta["kvmm_sources"].items():
        lines.append(
            f"{label}: {src['src']}, commit {src['commit'][:12]}"
            + (" + uncommitted changes" if src["uncommitted_changes"] else "")
            + f", sha256 of kvmm/*.py {src['sha256_of_py_files'][:12]}"
            + (" (CHANGED during the run)" if src["changed_during_run"] else "")
        )
    lines.append(
        f"key 16 B, value {meta['value_size']} B, seed {meta['seed']}, median of "
        f"{meta['reps']}; kvmm options: {meta['kvmm_opts'] or 'defaults'}"
    )
    return lines + [""]


def plot(scale: dict[str, dict], labels: list[str], meta: dict[str, Any], path: Path) -> None:
    """µs per get against N, log-log: 2nd pass solid, 1st pass dashed, a colour per store."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        progress("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for label in labels:
        points = [(int(n), cells[label]) for n, cells in scale.items()]
        points = [(n, c) for n, c in points if isinstance(c["get2_us"], float)]
        if not points:
            continue
        xs = [n for n, _c in points]
        (line,) = ax.plot(xs, [c["get2_us"] for _n, c in points], "o-", label=f"{label}, 2nd pass")
        ax.plot(
            xs,
            [c["get1_us"] for _n, c in points],
            "o--",
            color=line.get_color(),
            label=f"{label}, 1st pass",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [count_label(int(n)) for n in scale]
    ax.set_xticks([int(n) for n in scale], [f"${t}$" if "^" in t else t for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.set_xlabel("records in the store (log)")
    ax.set_ylabel("µs per random get (log)")
    title = [
        f"{READ_GETS:,} random gets in a fresh read-only process",
        f"value {meta['value_size']} B, median of {meta['reps']}",
        *(f"{lab} {src['commit'][:7]}" for lab, src in meta["kvmm_sources"].items()),
    ]
    ax.set_title("; ".join(title), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    progress(f"plot: {path}")


def parse_counts(text: str) -> list[int]:
    """ "1e5,1e6" or "100000,1000000" -> [100000, 1000000]."""
    try:
        counts = [int(float(item)) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text}") from exc
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be >= 1: {text}")
    return counts


def parse_option(text: str) -> tuple[str, Any]:
    """A --kvmm-opt KEY=VALUE: VALUE an int (0x.. too), true/false, or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE: {text}")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    try:
        return key, int(value, 0)
    except ValueError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--mode", choices=("all", "scale", "readers"), default="all", help="what to run (all)")
    add("--n", type=parse_counts, default=[10**5, 10**6, 10**7], help="records (1e5,1e6,1e7)")
    add("--stores", default=",".join(STORE_KINDS), help="comma list of kvmm, lmdb, sqlite3")
    add(
        "--kvmm-src",
        action="append",
        default=[],
        metavar="[LABEL=]DIR",
        help="also measure the kvmm package of checkout DIR, as column kvmm-LABEL (repeatable)",
    )
    add(
        "--kvmm-opt",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="an option of kvmm.open, e.g. cache_size=33554432 (repeatable)",
    )
    add("--value-size", type=int, default=100, help="bytes per value (100)")
    add("--seed", type=int, default=1, help="seed of keys, values and samples (1)")
    add("--reps", type=int, default=1, help="repetitions; the tables show medians (1)")
    add("--readers", type=parse_counts, default=[2, 4], help="reader processes (2,4)")
    add(
        "--readers-n",
        type=lambda t: parse_counts(t)[0],
        default=10**6,
        help="records of the readers' store (1e6)",
    )
    add("--seconds", type=float, default=5.0, help="seconds each reader reads (5)")
    add("--out", type=Path, metavar="PREFIX", help="write PREFIX.json, PREFIX.txt, PREFIX.png")
    add("--dir", help="where the stores' files go (default: the temp dir)")
    add("--timeout", type=float, default=7200, help="seconds allowed to one child (7200)")
    add("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    add("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps < 1 or args.value_size < 0 or args.seconds <= 0:
        parser.error("--reps must be >= 1, --value-size >= 0, --seconds > 0")
    return args


def variants_of(args: argparse.Namespace) -> list[Variant]:
    """The columns: --stores in order, each --kvmm-src just after kvmm (or first)."""
    extra = []
    for spec in args.kvmm_src:
        label, _sep, directory = spec.rpartition("=") if "=" in spec else ("", "", spec)
        src = Path(directory).resolve()
        if not (src / "kvmm" / "__init__.py").is_file():
            raise SystemExit(f"--kvmm-src {spec}: no kvmm package in {src}")
        extra.append(Variant(f"kvmm-{label or src.name}", "kvmm", src))
    out: list[Variant] = []
    for kind in bench.parse_list(args.stores, STORE_KINDS, "stores"):
        out.append(Variant(kind, kind, bench.ROOT if kind == "kvmm" else None))
        if kind == "kvmm":
            out += extra
    if "kvmm" not in [v.label for v in out]:
        out = extra + out
    if len({v.label for v in out}) != len(out):
        raise SystemExit("two columns share a label: give --kvmm-src LABEL=DIR distinct labels")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.config))))
        return 0
    variants = variants_of(args)
    labels = [v.label for v in variants]
    base = {"seed": args.seed, "value_size": args.value_size, "kvmm_opts": dict(args.kvmm_opt)}
    started = (time.perf_counter(), bench.machine_cpu_seconds(), bench.own_cpu_seconds())
    meta: dict[str, Any] = {
        "command": shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": bench.machine(),
        "kvmm_sources": kvmm_sources(variants),
        **base,
        "reps": args.reps,
    }
    runs: dict[str, dict] = {"scale": {}, "readers": {}}
    with tempfile.TemporaryDirectory(prefix="kvmm-scale-", dir=args.dir) as root:
        if args.mode in ("all", "scale"):
            for n in args.n:
                runs["scale"][n] = {label: [] for label in labels}
                for rep in range(args.reps):
                    for v in variants:  # stores alternate within a repetition
                        progress(f"N={count_label(n)} rep {rep + 1}/{args.reps}: {v.label}")
                        runs["scale"][n][v.label].append(scale_once(v, n, base, args, root))
        if args.mode in ("all", "readers"):
            runs["readers"] = {m: {label: [] for label in labels} for m in args.readers}
            for rep in range(args.reps):
                for v in variants:
                    progress(f"readers, N={count_label(args.readers_n)} rep {rep + 1}: {v.label}")
                    for m, report in readers_once(v, base, args, root).items():
                        runs["readers"][m][v.label].append(report)
    meta["wall_s"] = time.perf_counter() - started[0]
    meta["other_cpu_share"] = bench.other_cpu_share(started)
    for src in meta["kvmm_sources"].values():
        src["changed_during_run"] = bench.kvmm_hash(Path(src["src"])) != src["sha256_of_py_files"]
    every = {label: reports_of(runs, label) for label in labels}
    meta["versions"] = {
        label: next((r["version"] for r in reports if "version" in r), "?")
        for label, reports in every.items()
    }
    summary = {
        "scale": {
            n: {lab: medians(rs, SCALE_ROWS) for lab, rs in by.items()}
            for n, by in runs["scale"].items()
        },
        "readers": {
            m: {lab: medians(rs, READER_ROWS) for lab, rs in by.items()}
            for m, by in runs["readers"].items()
        },
    }
    text = header(meta)
    if summary["scale"]:
        text += table(
            f"scale: fill, {FILL_TXN_PUTS:,} puts per write transaction; then {READ_GETS:,} "
            "random gets, twice, in a fresh read-only process",
            {count_label(n): cells for n, cells in summary["scale"].items()},
            SCALE_ROWS,
            labels,
        )
    if summary["readers"]:
        text += table(
            f"readers beside a writer: N={count_label(args.readers_n)}, {args.seconds:g} s, "
            f"{READER_TXN_GETS} gets per read transaction, one put per write transaction",
            {f"{m} readers": cells for m, cells in summary["readers"].items()},
            READER_ROWS,
            labels,
        )
    print("\n".join(text))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"meta": meta, "summary": summary, "runs": runs}
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
        Path(f"{args.out}.txt").write_text("\n".join(text) + "\n")
        if summary["scale"]:
            plot(summary["scale"], labels, meta, Path(f"{args.out}.png"))
    return 1 if any("error" in r for reports in every.values() for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
