#!/usr/bin/env python3
"""Kill a writer with SIGKILL at random instants, and check the database after each kill.

The writer is a child process (this script with ``--child``) that makes write
transactions forever: puts of small, large (overflow) and very large values, deletes,
named databases created, written and dropped, now and then ``env.sync()``, and a read
transaction held open across commits. Transaction ``t``'s operations depend only on the
seed and ``t`` (:func:`txn_ops`), so the parent can replay them to know what the database
holds after any ``t``. The child writes ``t`` into the database with the transaction
itself (key ``__txn__``), so after a restart it continues where the database stands, and
it acknowledges each commit on stdout once ``commit()`` returned.

After each kill the parent opens the database (as the next writer would), runs the
checker, reads every database, and compares with the replay: it must equal the last
acknowledged transaction or the one in flight. Anything else counts as lost; a check
problem or an error counts as corrupt (that database is kept aside, and the next kills
start a new one). The child alternates between ``sync=True`` and
``sync=False`` (a process kill loses nothing either way).

    python tools/torture.py --kills 2000 --seed 1 --dir /tmp/torture

Prints one line per 100 kills and a summary ``kills N, survived S, lost L, corrupt C``;
exits 1 when anything was lost or corrupt. The database is left in ``--dir`` for
inspection.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

import kvmm
from kvmm.check import check_env

NAMES = (b"alpha", b"beta", b"gamma")
MARK = b"__txn__"
MAX_DBS = 8


# --- the workload (the child runs it, the parent replays it) ---------------------------


def txn_ops(seed: int, t: int, max_ops: int) -> list:
    """The operations of transaction ``t``: ("put", db, key, value), ("del", db, key)
    or ("drop", db); db None is the main database."""
    rng = random.Random(f"{seed}:{t}")
    ops = []
    for _ in range(rng.randint(1, max_ops)):
        r = rng.random()
        name = rng.choice(NAMES) if rng.random() < 0.3 else None
        if r < 0.01 and name is not None:
            ops.append(("drop", name))
        elif r < 0.3:
            base = rng.randrange(2000)
            for k in range(base, base + rng.choice((1, 1, 5, 40))):
                ops.append(("del", name, b"k%05d" % k))
        else:
            size = rng.random()
            if size < 0.003:
                n = rng.randint(100_000, 600_000)  # grows the file by itself
            elif size < 0.05:
                n = rng.randint(2_000, 40_000)  # overflow pages
            elif size < 0.3:
                n = rng.randint(100, 1_500)
            else:
                n = rng.randint(0, 50)
            ops.append(("put", name, b"k%05d" % rng.randrange(2000), rng.randbytes(n)))
    return ops


def apply_model(state: dict, ops: list, t: int) -> None:
    """What ``ops`` of transaction ``t`` do to ``state`` ({db name or None: {k: v}})."""
    for op in ops:
        if op[0] == "drop":
            state.pop(op[1], None)
            continue
        data = state.setdefault(op[1], {})
        if op[0] == "put":
            data[op[2]] = op[3]
        else:
            data.pop(op[2], None)
    state[None][MARK] = b"%d" % t


def read_state(env) -> dict:
    with env.begin() as txn:
        main = dict(txn.cursor().iternext())
        state = {None: {k: v for k, v in main.items() if k not in NAMES}}
        for name in NAMES:
            if name in main:
                db = env.open_db(name, txn=txn, create=False)
                state[name] = dict(txn.cursor(db=db).iternext())
    return state


# --- the child -------------------------------------------------------------------------


def child(path: str, seed: int, max_ops: int, sync: bool) -> None:
    """Commit transactions until killed; write ``t\\n`` to stdout after each commit."""
    env = kvmm.open(path, max_dbs=MAX_DBS, sync=sync)
    with env.begin() as txn:
        t = int(txn.get(MARK, b"0"))
    rng = random.Random(f"{seed}:child:{t}")  # when to sync and to hold a reader
    os.write(1, b"ready %d\n" % t)
    reader = None
    while True:
        t += 1
        with env.begin(write=True) as txn:
            for op in txn_ops(seed, t, max_ops):
                db = env.open_db(op[1], txn=txn) if op[1] is not None else None
                if op[0] == "put":
                    txn.put(op[2], op[3], db=db)
                elif op[0] == "del":
                    txn.delete(op[2], db=db)
                else:
                    txn.drop(db, delete=True)
            txn.put(MARK, b"%d" % t)
        os.write(1, b"%d\n" % t)
        r = rng.random()
        if r < 0.05:
            env.sync()
        elif r < 0.1:  # a reader that lives across commits, killed with the writer
            if reader is not None:
                reader.abort()
            reader = env.begin()
            reader.get(b"k00001")


# --- the parent ------------------------------------------------------------------------


class Replay:
    """The contents after transaction ``t``, computed forward from the seed."""

    def __init__(self, seed: int, max_ops: int):
        self.seed = seed
        self.max_ops = max_ops
        self.t = 0
        self.state: dict = {None: {}}

    def at(self, t: int) -> dict:
        if t < self.t:
            raise ValueError(f"database went back to txn {t} from {self.t}")
        while self.t < t:
            self.t += 1
            apply_model(self.state, txn_ops(self.seed, self.t, self.max_ops), self.t)
        return self.state

    def peek(self, t: int) -> dict:
        """The contents after ``t`` without moving (``t`` is at most ``self.t + 1``)."""
        if t == self.t:
            return self.state
        state = {name: dict(data) for name, data in self.state.items()}
        apply_model(state, txn_ops(self.seed, t, self.max_ops), t)
        return state


def run_child(path: str, seed: int, max_ops: int, sync: bool, wait: float,
              strict: bool = False) -> tuple:
    """Start the writer, let it run ``wait`` seconds after it is ready, SIGKILL it.
    Returns (txn it started from, last acknowledged txn, stderr text)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", "--dir", os.path.dirname(path),
         "--seed", str(seed), "--ops", str(max_ops), "--sync", str(int(sync))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, KVMM_STRICT="1" if strict else "0"))
    out = b""
    deadline = None
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if deadline is None and b"\n" in out:
            deadline = now + wait
        if deadline is not None and now >= deadline:
            break
        if now - start > 60 or proc.poll() is not None:
            break
        ready, _, _ = select.select([proc.stdout], [], [], 0.005)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate()
    lines = (out + rest).split(b"\n")
    if not lines[0].startswith(b"ready "):
        return None, None, err.decode(errors="replace")
    first = int(lines[0].split()[1])
    acks = [int(x) for x in lines[1:] if x.strip()]
    return first, (acks[-1] if acks else first), err.decode(errors="replace")


def torture(kills: int, seed: int, directory: str, max_ops: int, max_wait: float,
            strict: bool = False, out=sys.stdout) -> dict:
    path = os.path.join(directory, "db")
    rng = random.Random(seed)
    replay = Replay(seed, max_ops)
    figures = {"kills": 0, "survived": 0, "lost": 0, "corrupt": 0, "commits acknowledged": 0,
               "at last ack": 0, "at the one in flight": 0, "child errors": 0}
    started = time.monotonic()
    for k in range(kills):
        sync = rng.random() < 0.5
        first, acked, err = run_child(path, seed, max_ops, sync, rng.uniform(0, max_wait),
                                      strict)
        figures["kills"] += 1
        if first is None:
            figures["child errors"] += 1
            print(f"kill {k}: the child never got ready:\n{err}", file=out)
            continue
        if "Traceback" in err:
            figures["child errors"] += 1
            print(f"kill {k}: the child failed:\n{err}", file=out)
        figures["commits acknowledged"] += acked - first
        verdict = check_after_kill(path, replay, acked)
        if verdict in ("at last ack", "at the one in flight"):
            figures["survived"] += 1
            figures[verdict] += 1
        else:
            kind = "lost" if verdict.startswith("lost") else "corrupt"
            figures[kind] += 1
            kept = os.path.join(directory, f"failed-{k}")
            print(f"kill {k} (sync={sync}, acknowledged txn {acked}): {verdict}; the "
                  f"database is kept in {kept}, the next kills start a new one", file=out)
            os.rename(path, kept)
            replay = Replay(seed, max_ops)
        if (k + 1) % 100 == 0:
            print(f"{k + 1} kills, {time.monotonic() - started:.0f} s: " + summary(figures),
                  file=out, flush=True)
    return figures


def check_after_kill(path: str, replay: Replay, acked: int) -> str:
    try:
        env = kvmm.open(path, max_dbs=MAX_DBS)
    except kvmm.Error as e:
        return f"corrupt: does not open: {e!r}"
    try:
        problems = check_env(env)
        if problems:
            return f"corrupt: check: {problems[:5]}"
        got = read_state(env)
    except kvmm.Error as e:
        return f"corrupt: reading: {e!r}"
    finally:
        env.close()
    if got == replay.at(acked):
        return "at last ack"
    if got == replay.peek(acked + 1):
        replay.at(acked + 1)
        return "at the one in flight"
    mark = got[None].get(MARK)
    return f"lost: contents are not txn {acked} or {acked + 1} (the database says {mark})"


def summary(figures: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in figures.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50, help="how many kills (default 50)")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload and the kills")
    p.add_argument("--dir", help="where the database goes (default: a new temp dir)")
    p.add_argument("--ops", type=int, default=20, help="most operations per transaction")
    p.add_argument("--max-wait", type=float, default=0.2,
                   help="longest run of the writer before its kill, in seconds")
    p.add_argument("--strict", action="store_true",
                   help="the writer checks the whole file after each commit (slow)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(os.path.join(args.dir, "db"), args.seed, args.ops, bool(args.sync))
        return 0
    directory = args.dir or tempfile.mkdtemp(prefix="kvmm-torture-")
    os.makedirs(directory, exist_ok=True)
    print(f"torture: {args.kills} kills, seed {args.seed}, database in {directory}", flush=True)
    figures = torture(args.kills, args.seed, directory, args.ops, args.max_wait, args.strict)
    print(summary(figures))
    return 0 if figures["lost"] == figures["corrupt"] == figures["child errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
