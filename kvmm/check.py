"""The consistency checker: walk every page of a snapshot and report every broken
invariant (used by ``kvmm check``, and after every commit in strict mode).

It checks, against the snapshot of the newest usable meta:
- both metas (checksum, format, which one is current);
- every page below ``next_pgno`` is reachable exactly once (from the main tree, a
  named tree, the free tree or an overflow run) or listed exactly once as free, and
  nothing points past ``next_pgno``;
- page headers: kind, own pgno, the writer txnid named by the parent, checksum;
- keys strictly increasing inside a page and within the bounds set by the parent's
  separators; all leaves at the same depth; no page overfull;
- each database record's depth and page and entry counts;
- the entries of dupsort databases: well-formed (key, value) pairs (kvmm.dupsort);
- the orders of kvmm.orders: a database record's flags are known and consistent,
  integerkey keys and integerdup values are 4 or 8 bytes, the values of one key of a
  dupfixed database all have one size (key order itself is byte order of the stored
  forms, checked with every page's keys);
- overflow runs: header, length, checksum;
- the free records: well formed, written by a txnid not newer than the meta;
- the reader table: no snapshot newer than the newest commit (which may be newer than
  the snapshot checked: readers begin while a live database is checked).

It never writes to the data file.
"""

from __future__ import annotations

import os
from typing import Any

from . import format as fmt
from .dupsort import check_pair, split
from .errors import CorruptedError, Error
from .orders import entry_problem, flags_problem


class Checker:
    """Walks one read transaction's snapshot and collects problems."""

    def __init__(self, env, txn, progress=None):
        self.env = env
        self.txn = txn
        self.meta = txn.meta
        self.ps = env._page_size
        self.pages = env._store.pages
        self.problems: list[str] = []
        self.notes: list[str] = []  # findings that lose nothing (a torn spare meta)
        self.seen: dict[int, str] = {}  # pgno -> what uses it
        self.progress = progress

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def use(self, pgno: int, n: int, what: str) -> bool:
        """Mark pages pgno..pgno+n-1 as used by ``what``; report double use."""
        ok = True
        limit = self.meta.next_pgno
        if not fmt.NUM_METAS <= pgno or pgno + n > limit:
            pages = f"page {pgno}" if n == 1 else f"pages {pgno}..{pgno + n - 1}"
            self.problem(f"{pages}: used by {what} but outside pages 2..{limit - 1}")
            return False
        for p in range(pgno, pgno + n):
            if p in self.seen:
                self.problem(f"page {p}: used twice, by {self.seen[p]} and by {what}")
                ok = False
            else:
                self.seen[p] = what
        if self.progress is not None:
            self.progress(n)
        return ok

    def read(self, pgno: int, txnid: int):
        try:
            return self.pages.read_node(self.txn._mm, self.meta.next_pgno, pgno, txnid,
                                        verify=True)
        except Error as e:
            self.problem(str(e))
            return None

    # --- trees ----------------------------------------------------------------------

    def tree(self, name: str, record: tuple, is_free: bool = False, keep=None) -> list:
        """Check one tree; return the leaf entries (key, stored, flag) whose flag has
        a bit of ``keep`` (all of them when ``keep`` is None), for callers that look
        inside values: the main tree's named-db records, the free tree's records."""
        root, root_txnid, depth, flags, entries, branches, leaves, overflows = record
        counts = {"entries": 0, "branch_pages": 0, "leaf_pages": 0, "overflow_pages": 0,
                  "flags": flags, "fixed": (None, 0)}
        problem = flags_problem(flags)
        if problem is not None:
            self.problem(f"{name}: {problem}")
        out: list = []
        depths: set = set()
        if root:
            self.walk(name, root, root_txnid, None, None, 1, counts, out, depths, True, keep)
        elif depth or entries or branches or leaves or overflows:
            self.problem(f"{name}: empty tree with non-zero figures in its record")
        if len(depths) > 1:
            self.problem(f"{name}: leaves at different depths {sorted(depths)}")
        if root and depths and depth != max(depths):
            self.problem(f"{name}: record says depth {depth}, tree has {max(depths)}")
        want = {"branch_pages": branches, "leaf_pages": leaves, "overflow_pages": overflows}
        if not is_free:
            want["entries"] = entries
        for k, v in want.items():
            if counts[k] != v:
                self.problem(f"{name}: record says {k}={v}, tree has {counts[k]}")
        if is_free:
            listed = sum(len(stored) // 8 for _, stored, _ in out)
            if listed != entries:
                self.problem(f"{name}: record says {entries} free pages, records list {listed}")
        return out

    def walk(self, name, pgno, txnid, low, high, level, counts, out, depths, is_root,
             keep):
        if not self.use(pgno, 1, f"{name} page"):
            return
        node = self.read(pgno, txnid)
        if node is None:
            return
        keys = node.keys
        where = f"{name} page {pgno}"
        size = node.measure()
        if size > fmt.page_capacity(self.ps):
            self.problem(f"{where}: overfull ({size} bytes)")
        first = 1 if node.kids is not None else 0
        for i in range(first, len(keys) - 1):
            if not keys[i] < keys[i + 1]:
                self.problem(f"{where}: keys out of order at entry {i + 1}")
                break
        body = keys[first:]
        if body:
            if low is not None and body[0] < low:
                self.problem(f"{where}: key below its parent's separator")
            if high is not None and body[-1] >= high:
                self.problem(f"{where}: key not below the next separator")
        if node.kids is None:
            if counts["flags"]:
                self.entries(where, keys, node.vals, counts)
            counts["leaf_pages"] += 1
            counts["entries"] += len(keys)
            depths.add(level)
            if not keys and not is_root:
                self.problem(f"{where}: empty non-root leaf")
            flags = node.flags or [0] * len(keys)
            for k, stored, flag in zip(keys, node.vals, flags):
                if flag & fmt.F_OVERFLOW:
                    self.overflow(name, pgno, stored, counts)
                if keep is None or flag & keep:
                    out.append((k, stored, flag))
            return
        counts["branch_pages"] += 1
        if len(keys) < 2:
            self.problem(f"{where}: branch with a single child")
        for i, (kid, ktxn) in enumerate(zip(node.kids, node.ktxn)):
            lo = low if i == 0 else keys[i]
            hi = keys[i + 1] if i + 1 < len(keys) else high
            self.walk(name, kid, ktxn, lo, hi, level + 1, counts, out, depths, False, keep)

    def entries(self, where: str, keys, vals, counts: dict) -> None:
        """Check a leaf's entries against its database's flags (the first problem)."""
        flags = counts["flags"]
        dupsort = flags & fmt.DB_DUPSORT
        fixed_key, fixed_size = counts["fixed"]  # dupfixed: the last key and its size
        for k, stored in zip(keys, vals):
            value = None
            if dupsort:
                why = check_pair(k) or (stored and "dupsort entry with a stored value")
                if why:
                    self.problem(f"{where}: {why}")
                    return
                k, value = split(k)
                if flags & fmt.DB_DUPFIXED:
                    if k == fixed_key and len(value) != fixed_size:
                        self.problem(f"{where}: dupfixed key with values of {fixed_size} "
                                     f"and {len(value)} bytes")
                        return
                    fixed_key, fixed_size = k, len(value)
            why = entry_problem(flags, k, value)
            if why:
                self.problem(f"{where}: {why}")
                return
        counts["fixed"] = (fixed_key, fixed_size)

    def overflow(self, name, leaf_pgno, stored, counts) -> None:
        try:
            pgno, txnid, length = fmt.decode_overflow_ref(stored)
        except Error as e:
            self.problem(f"{name} page {leaf_pgno}: {e}")
            return
        n = fmt.overflow_pages(length, self.ps)
        counts["overflow_pages"] += n
        if not self.use(pgno, n, f"{name} overflow run of page {leaf_pgno}"):
            return
        try:
            self.pages.read_overflow(self.txn._mm, self.meta.next_pgno, pgno, txnid,
                                     length, False, verify=True)
        except Error as e:
            self.problem(str(e))

    # --- the whole file -------------------------------------------------------------

    def run(self) -> list[str]:
        env, meta = self.env, self.meta
        mm = self.txn._mm
        metas = env._metas.read(mm)
        for slot, m in enumerate(metas):
            if m is None:
                what = f"meta {slot}: unreadable (bad checksum, magic or version)"
                if metas[1 - slot] is not None and metas[1 - slot].steady:
                    # A crash tears only the meta a commit was writing, which the other,
                    # steady one outlives: nothing is lost, and the next read-write
                    # open (or commit) writes the slot anew.
                    self.notes.append(what + "; the other meta is used (a torn write "
                                      "or damage: the next read-write open mends it)")
                else:
                    self.problem(what)
        main = self.tree("main", meta.main, keep=fmt.F_SUBDB)
        for key, stored, flag in main:
            if flag & fmt.F_SUBDB:
                try:
                    record = fmt.decode_db_record(stored)
                except Error as e:
                    self.problem(f"database {key!r}: {e}")
                    continue
                self.tree(f"database {key!r}", record, keep=0)
        for key, stored, _ in self.tree("free", meta.free, is_free=True):
            if len(key) != fmt.FREE_KEY.size or len(stored) % 8:
                self.problem(f"free record {key.hex()}: malformed")
                continue
            tag = fmt.FREE_KEY.unpack(key)[0]
            if tag & ~fmt.WEAK_BORN > meta.txnid:
                self.problem(f"free record {key.hex()}: from txn newer than {meta.txnid}")
            for p in fmt.decode_pgnos(stored):
                self.use(p, 1, f"free record {tag:#x}")
        inline = meta.inline_free
        if list(inline[::2]) != sorted(inline[::2]):
            self.problem("inline free list: not sorted by tag")
        for i in range(0, len(inline), 2):
            if inline[i] & ~fmt.WEAK_BORN > meta.txnid:
                self.problem(f"inline free page {inline[i + 1]}: from txn newer than "
                             f"{meta.txnid}")
            self.use(inline[i + 1], 1, f"inline free list ({inline[i]})")
        # Pages past the file's end are free ones given back (a reader's or the
        # steady snapshot's ``next_pgno`` may reach past it); a used one fails its read.
        in_file = min(meta.next_pgno, env._datafile.size() // self.ps)
        missing = [p for p in range(fmt.NUM_METAS, in_file) if p not in self.seen]
        if missing:
            shown = ", ".join(map(str, missing[:10]))
            more = "" if len(missing) <= 10 else f" and {len(missing) - 10} more"
            self.problem(f"pages neither used nor free (lost): {shown}{more}")
        if env._lock is not None:
            self.reader_table(mm)
        return self.problems

    def reader_table(self, mm) -> None:
        """Report reader slots that name a snapshot newer than every commit. On a live
        database readers begin while the check runs, on snapshots newer than the one
        checked: so the slots are read first and the newest commit after them. A
        reader publishes a snapshot that was committed before it set its slot, so
        every sound slot read here is at most the newest commit read afterwards."""
        slots = self.env._lock.readers()
        newest = self.env._metas.current(mm)[1]
        for slot, pid, txnid, _alive in slots:
            if txnid > newest:
                self.problem(f"reader slot {slot} (pid {pid}): snapshot {txnid} "
                             f"newer than the last commit {newest}")


def check_env(env, progress=None, notes: list | None = None) -> list[str]:
    """Check the newest snapshot of an open environment; return the problems found.
    Findings that lose nothing (a torn spare meta) go to ``notes`` when given."""
    try:
        txn = env.begin()
    except Error as e:
        return [str(e)]
    try:
        checker = Checker(env, txn, progress)
        problems = checker.run()
        if notes is not None:
            notes.extend(checker.notes)
        return problems
    finally:
        txn.abort()


def check(path: str | os.PathLike[str], progress: Any = None, notes: list[str] | None = None,
          **open_options: Any) -> list[str]:
    """Open ``path`` read-only and check it; return the problems (empty when clean)."""
    from .env import open as open_env

    try:
        env = open_env(path, readonly=True, create=False, **open_options)
    except Error as e:
        return [str(e)]
    try:
        return check_env(env, progress, notes)
    finally:
        env.close()


def strict_check(env) -> None:
    """What strict mode (KVMM_STRICT=1) runs after every commit: CorruptedError
    naming the first problems ``check_env`` finds."""
    problems = check_env(env)
    if problems:
        raise CorruptedError("strict mode: " + "; ".join(problems[:5]))
