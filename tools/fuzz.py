#!/usr/bin/env python3
"""Fuzz the reader with damaged data files: hypothesis over the file's bytes.

Two small valid databases are built first (a few hundred keys in a two-level tree,
overflow values, named databases; one with its free pages listed in the meta, one with
a free tree). Each case takes one of them and applies 1 to 4 mutations drawn by
hypothesis: bit flips, random bytes (biased towards page headers and metas), pages
zeroed or copied over others, integer fields of a page set to awkward values (0, its own
number, the last page, 2**63 ...), a branch pointed back at itself, the file cut short
or extended. Page checksums are usually recomputed after the damage, so the damage gets
past the checksum into the decoders and the tree walks behind it.

A worker process opens each damaged file and does everything a user might: reads every
key forwards and backwards, ``get()`` of each, opens and reads the named databases, runs
the checker, and commits a write. Each step may end in a ``kvmm.Error`` (any subclass);
anything else is a finding: another exception (IndexError, struct.error,
RecursionError...), a signal (SIGBUS, SIGSEGV), or a hang (``--timeout``). The worker is
restarted after a crash or hang. Hypothesis shrinks the first finding of each kind
(exception and place, or the function a hang loops in) to a small case; the damaged
file is saved in ``--out`` and the run goes on with a new seed, only counting that kind
from then on.

    python tools/fuzz.py --seconds 300 --out /tmp/kvmm-fuzz
    python tools/fuzz.py --replay /tmp/kvmm-fuzz/finding-*.kvmm

Prints the number of cases, how they ended (clean read, kvmm.Error by class), the
findings, and each kind of bad outcome met (with its first, unshrunk file); exits 1
when there are findings.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib

import kvmm
from kvmm import format as fmt
from kvmm.check import check

PS = 4096
NAMES = (b"db1", b"db2")


# --- the seed databases ----------------------------------------------------------------


def build_seed(path: str, spill: bool) -> bytes:
    """A small valid data file; ``spill``: enough free pages for a free tree."""
    with kvmm.open(path, subdir=False, max_dbs=4, lock=False) as env:
        with env.begin(write=True) as txn:
            for i in range(300 if not spill else 2500):
                txn.put(b"key%05d" % i, b"v%d" % i * (i % 7 + 1))
            txn.put(b"big1", bytes(range(256)) * 20)
            txn.put(b"big2", b"x" * 9000)
            db1 = env.open_db(b"db1", txn=txn)
            for i in range(60):
                txn.put(b"n%03d" % i, b"w" * (i * 3), db=db1)
            txn.put(b"nbig", b"y" * 6000, db=db1)
            env.open_db(b"db2", txn=txn)
        with env.begin(write=True) as txn:
            for i in range(0, 300 if not spill else 2500, 3 if not spill else 2):
                txn.delete(b"key%05d" % i)
            txn.delete(b"big2")
        with env.begin(write=True) as txn:
            txn.put(b"after", b"the frees")
        end = env.info()["last_pgno"] + 1
    with open(path, "r+b") as f:
        f.truncate(end * PS)  # the growth slack holds nothing: keep the file small
        f.seek(0)
        data = f.read()
    if check(path, subdir=False, lock=False):
        raise SystemExit("the seed database does not pass its own check")
    return data


# --- mutations ---------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 62, 1 << 63, (1 << 64) - 1)


def cases(seeds: list):
    """The hypothesis strategy of a case: (seed index, mutations, fix checksums)."""
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        which = draw(st.integers(0, len(seeds) - 1))
        size = len(seeds[which])
        pages = size // PS
        page = st.integers(0, pages - 1)
        mutation = st.one_of(
            st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(0, 7)),
            st.tuples(st.just("bytes"), st.one_of(
                st.integers(0, size - 1),
                st.builds(lambda p, o: p * PS + o, page, st.integers(0, 95))),
                st.binary(min_size=1, max_size=16)),
            st.tuples(st.just("int"), page, st.integers(0, 160),
                      st.sampled_from((2, 4, 8)),
                      st.one_of(st.sampled_from(INTERESTING), st.integers(0, pages + 2),
                                st.integers(0, 2**64 - 1))),
            st.tuples(st.just("zero"), page),
            st.tuples(st.just("copy"), page, page),
            st.tuples(st.just("loop"), page, st.integers(0, 40)),
            st.tuples(st.just("cut"), st.one_of(
                st.builds(lambda p: p * PS, st.integers(0, pages)),
                st.integers(0, size))),
            st.tuples(st.just("grow"), st.integers(1, 3 * PS)),
        )
        muts = draw(st.lists(mutation, min_size=1, max_size=4))
        fix = draw(st.booleans()) or draw(st.booleans())  # three times in four
        return which, tuple(muts), fix

    return case()


def apply(data: bytes, muts, fix: bool) -> bytes:
    buf = bytearray(data)
    touched = set()
    for m in muts:
        kind = m[0]
        if kind == "flip" and m[1] < len(buf):
            buf[m[1]] ^= 1 << m[2]
            touched.add(m[1] // PS)
        elif kind == "bytes" and m[1] < len(buf):
            chunk = m[2][: len(buf) - m[1]]
            buf[m[1] : m[1] + len(chunk)] = chunk
            touched.add(m[1] // PS)
        elif kind == "int":
            at = m[1] * PS + m[2]
            if at + m[3] <= len(buf):
                buf[at : at + m[3]] = (m[4] % (1 << (8 * m[3]))).to_bytes(m[3], "little")
                touched.add(m[1])
        elif kind == "zero" and (m[1] + 1) * PS <= len(buf):
            buf[m[1] * PS : (m[1] + 1) * PS] = bytes(PS)
        elif kind == "copy" and max(m[1], m[2]) * PS + PS <= len(buf):
            buf[m[2] * PS : (m[2] + 1) * PS] = buf[m[1] * PS : (m[1] + 1) * PS]
        elif kind == "loop":
            _loop(buf, m[1], m[2])
            touched.add(m[1])
        elif kind == "cut":
            del buf[m[1] :]
        elif kind == "grow":
            buf.extend(bytes(m[1]))
    if fix:
        for pgno in touched:
            _fix_checksum(buf, pgno)
    return bytes(buf)


def _loop(buf: bytearray, pgno: int, child: int) -> None:
    """Point child ``child`` of branch page ``pgno`` back at the page itself."""
    page = buf[pgno * PS : (pgno + 1) * PS]
    if len(page) < PS or pgno < fmt.NUM_METAS:
        return
    _, kind, count, _, txnid, _ = fmt.PAGE_HEADER.unpack_from(page, 0)
    if kind != fmt.BRANCH or not count:
        return
    i = child % count
    base = pgno * PS + fmt.HEADER_SIZE
    struct.pack_into("<Q", buf, base + 8 * i, pgno)
    struct.pack_into("<Q", buf, base + 8 * count + 8 * i, txnid)


def _fix_checksum(buf: bytearray, pgno: int) -> None:
    """Recompute the checksum of page ``pgno`` (or of meta ``pgno``) as kvmm would."""
    start = pgno * PS
    if start + PS > len(buf):
        return
    if pgno < fmt.NUM_METAS:
        (count,) = fmt.META_COUNT.unpack_from(buf, start + fmt.META.size)
        end = fmt.META.size + fmt.META_COUNT.size + 16 * count
        if end + 4 <= PS:
            crc = zlib.crc32(bytes(buf[start : start + end]))
            fmt.META_CRC.pack_into(buf, start + end, crc)
        return
    kind = struct.unpack_from("<H", buf, start + 4)[0]
    if kind in (fmt.BRANCH, fmt.LEAF):
        struct.pack_into("<I", buf, start, zlib.crc32(bytes(buf[start + 4 : start + PS])))
    elif kind == fmt.OVERFLOW:
        length = struct.unpack_from("<Q", buf, start + 24)[0]
        end = start + fmt.HEADER_SIZE + length
        if end <= len(buf):
            head = bytes(buf[start + 4 : start + fmt.HEADER_SIZE])
            crc = zlib.crc32(bytes(buf[start + fmt.HEADER_SIZE : end]), zlib.crc32(head))
            struct.pack_into("<I", buf, start, crc)


# --- the worker (a child process) --------------------------------------------------------


def exercise(path: str) -> list[str]:
    """Everything a user might do with the file; returns the kvmm.Error classes met.
    Any other exception propagates."""
    from kvmm.check import check_env

    met = []

    def step(fn):
        try:
            fn()
        except kvmm.Error as e:
            met.append(type(e).__name__)

    try:
        env = kvmm.open(path, subdir=False, lock=False, max_dbs=8)
    except kvmm.Error as e:
        return [type(e).__name__]
    try:
        def read():
            with env.begin() as txn:
                for key, value in txn.cursor().iternext():
                    txn.get(key)
                cur = txn.cursor()
                if cur.last():
                    list(cur.iterprev())
                cur.set_range(b"key00150")
                for name in NAMES:
                    try:
                        db = env.open_db(name, txn=txn, create=False)
                    except kvmm.Error as e:
                        met.append(type(e).__name__)
                        continue
                    for key, _ in txn.cursor(db=db).iternext():
                        txn.get(key, db=db)

        def write():
            with env.begin(write=True) as txn:
                txn.put(b"fuzz", b"z" * 5000)
                txn.delete(b"key00001")
                txn.put(b"key00002", b"changed")
                txn.put(b"n001", b"w", db=env.open_db(b"db1", txn=txn))

        step(read)
        step(lambda: met.extend("check" for _ in check_env(env)[:1]))
        step(write)
        step(read)
    finally:
        env.close()
    return met


def worker(hang_log: str, timeout: float) -> None:
    """Exercise each file named on stdin; answer one line per file on stdout. A case
    that runs past ``timeout`` dumps its stack into ``hang_log`` and ends the worker."""
    sys.setrecursionlimit(1000)
    log = open(hang_log, "w")  # noqa: SIM115 - faulthandler writes to it at any time
    for line in sys.stdin:
        path = line.strip()
        log.seek(0)
        log.truncate()
        faulthandler.dump_traceback_later(timeout, exit=True, file=log)
        try:
            met = exercise(path)
            reply = "ok " + (",".join(sorted(set(met))) or "clean")
        except BaseException as e:  # noqa: BLE001 - the finding itself
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{os.path.basename(tb.filename)}:{tb.lineno} {tb.name}"
            reply = f"bad {type(e).__name__}: {str(e)[:120]!r} at {where}"
        faulthandler.cancel_dump_traceback_later()
        sys.stdout.write(reply.replace("\n", " ") + "\n")
        sys.stdout.flush()


class Worker:
    """The child that exercises files; restarted after it dies or hangs."""

    def __init__(self, timeout: float, hang_log: str):
        self.timeout = timeout
        self.hang_log = hang_log
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--timeout",
             str(self.timeout), "--out", self.hang_log],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, KVMM_STRICT="0", PYTHONHASHSEED="0"), text=True, bufsize=1)

    def run(self, path: str) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout + 5)
        if not ready:  # not even faulthandler's timer fired
            self.stop()
            return f"bad hang (no answer in {self.timeout + 5:g} s)"
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            if code < 0:
                return f"bad crash (signal {-code})"
            return f"bad hang (over {self.timeout:g} s) at {self.hang_where()}"
        return line.strip()

    def hang_where(self) -> str:
        """The kvmm functions on the stack faulthandler dumped, innermost first (the
        loop that never ends is among them): "load<-first_path<-first"."""
        with open(self.hang_log) as f:
            frames = [ln.split()[-1] for ln in f if "/kvmm/" in ln and "File " in ln]
        names = [n for i, n in enumerate(frames) if i == 0 or frames[i - 1] != n]
        return "<-".join(names[:4]) or "?"

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --- the driver ----------------------------------------------------------------------

_PLUMBING = {"load", "_read_node", "check_header", "_fail", "read", "descend"}


def bad_kind(outcome: str) -> str:
    """What sorts findings: the exception and where it was raised, or for a hang the
    innermost kvmm function on the stack that is not page-loading plumbing."""
    if " at " not in outcome:
        return outcome
    where = outcome.rsplit(" at ", 1)[1]
    if not outcome.startswith("bad hang"):
        return outcome.split(": ")[0] + " at " + where
    chain = where.split("<-")
    return "hang in " + next((n for n in chain if n not in _PLUMBING), chain[0])



def fuzz(seconds: float, seed: int, out: str, timeout: float, per_run: int) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    os.makedirs(out, exist_ok=True)
    seeds = [build_seed(os.path.join(out, "seed-inline.kvmm"), False),
             build_seed(os.path.join(out, "seed-freetree.kvmm"), True)]
    target = os.path.join(out, "case.kvmm")
    work = Worker(timeout, os.path.join(out, "hang-stack.txt"))
    stats = {"cases": 0, "outcomes": {}, "findings": [], "kinds": {}, "shrunk": set()}
    deadline = time.monotonic() + seconds

    class Finding(Exception):
        """A case ended badly; the file is in ``stats["bad"]``."""

    def one(case):
        if time.monotonic() > deadline:
            return
        which, muts, fix = case
        data = apply(seeds[which], muts, fix)
        with open(target, "wb") as f:
            f.write(data)
        outcome = work.run(target)
        stats["cases"] += 1
        stats["outcomes"][outcome] = stats["outcomes"].get(outcome, 0) + 1
        if outcome.startswith("bad"):
            kind = bad_kind(outcome)
            if kind not in stats["kinds"]:  # the first file of each kind, unshrunk
                saved = os.path.join(out, f"kind-{len(stats['kinds'])}.kvmm")
                stats["kinds"][kind] = saved
                with open(saved, "wb") as fh:
                    fh.write(data)
            if kind in stats["shrunk"]:
                return  # known: counted, and hypothesis goes on looking for others
            stats["bad"] = (outcome, data, case)
            raise Finding(outcome)

    run = 0
    try:
        while time.monotonic() < deadline:
            run += 1
            test = settings(max_examples=per_run, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck),
                            phases=[Phase.generate, Phase.shrink])(
                given(cases(seeds))(one))
            stats.pop("bad", None)
            try:
                hseed(seed * 1_000_003 + run)(test)()
            except Exception:  # noqa: BLE001 - a Finding, or hypothesis' Flaky about one
                outcome, data, case = stats["bad"]
                saved = os.path.join(out, f"finding-{len(stats['findings'])}.kvmm")
                with open(saved, "wb") as fh:
                    fh.write(data)
                which = ("seed-inline", "seed-freetree")[case[0]]
                stats["findings"].append(f"{outcome} (file: {saved}; {which} with "
                                         f"{list(case[1])}, checksums fixed: {case[2]})")
                stats["shrunk"].add(bad_kind(outcome))
                print(f"finding: {stats['findings'][-1]}", flush=True)
    finally:
        work.stop()
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60, help="how long to fuzz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where seeds and findings go")
    p.add_argument("--timeout", type=float, default=3, help="seconds before a hang")
    p.add_argument("--per-run", type=int, default=500, help="cases per hypothesis run")
    p.add_argument("--replay", nargs="+", metavar="FILE",
                   help="run saved files (findings) through the worker and print how each "
                        "ends, instead of fuzzing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.out, args.timeout)
        return 0
    if args.replay:
        out = args.out or tempfile.mkdtemp(prefix="kvmm-fuzz-")
        work = Worker(args.timeout, os.path.join(out, "hang-stack.txt"))
        bad = 0
        try:
            for path in args.replay:
                case = os.path.join(out, "case.kvmm")  # the worker writes: keep the file
                shutil.copyfile(path, case)
                outcome = work.run(case)
                bad += outcome.startswith("bad")
                print(f"{path}: {outcome}")
        finally:
            work.stop()
        return 1 if bad else 0
    out = args.out or tempfile.mkdtemp(prefix="kvmm-fuzz-")
    stats = fuzz(args.seconds, args.seed, out, args.timeout, args.per_run)
    print(f"fuzz: {stats['cases']} cases in {args.seconds:g} s, files in {out}")
    for outcome, n in sorted(stats["outcomes"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:7d}  {outcome}")
    print(f"findings (one per kind, shrunk by hypothesis): {len(stats['findings'])}")
    for text in stats["findings"]:
        print(f"  {text}")
    print(f"kinds of bad outcome (first file of each): {len(stats['kinds'])}")
    for kind, saved in stats["kinds"].items():
        print(f"  {kind} (file: {saved})")
    return 1 if stats["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
