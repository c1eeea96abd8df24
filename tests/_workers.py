"""What the multiprocess and damage tests run in other processes.

The tests start children with multiprocessing's "spawn" context, so each child is a
fresh interpreter that imports this module by name: pytest puts ``tests/`` on
``sys.path`` (the directory has no ``__init__.py``), and spawn hands the parent's
``sys.path`` to the child. Everything a child runs is a module-level function here, and
the data the parent checks against (account keys, generations, the damage database's
contents) is computed by functions here too, so parent and child cannot disagree.

A child reports through what it is given: a queue, an event, a shared value, or a file
(the writer killed with SIGKILL appends to a file, which survives its death).
"""

from __future__ import annotations

import json
import os
import random
import time
import traceback

import kvmm

#: How long a child waits for the parent before giving up (a test failure, not a hang).
WAIT = 60

# --- bank transfers -------------------------------------------------------------------

ACCOUNTS = 40
OPENING_BALANCE = 1000
TOTAL = ACCOUNTS * OPENING_BALANCE


def account_key(i: int) -> bytes:
    return b"acct%03d" % i


def transfer_count_key(writer_id: int) -> bytes:
    return b"transfers%d" % writer_id


def open_bank(path: str) -> None:
    """Create the accounts, each with the opening balance."""
    with kvmm.open(path) as env, env.begin(write=True) as txn:
        for i in range(ACCOUNTS):
            txn.put(account_key(i), b"%d" % OPENING_BALANCE)


def bank_writer(path, writer_id, transfers, start, results) -> None:
    """Once every process has reached the ``start`` barrier, make ``transfers`` write
    transactions, each moving a random amount between two accounts (read both balances,
    write both) and counting itself under ``transfer_count_key(writer_id)``; report how
    many committed."""
    rng = random.Random(writer_id)
    count_key = transfer_count_key(writer_id)
    committed = 0
    with kvmm.open(path) as env:
        start.wait(WAIT)
        for _ in range(transfers):
            a, b = rng.sample(range(ACCOUNTS), 2)
            with env.begin(write=True) as txn:
                balance_a = int(txn.get(account_key(a)))
                balance_b = int(txn.get(account_key(b)))
                amount = rng.randint(0, balance_a)
                txn.put(account_key(a), b"%d" % (balance_a - amount))
                txn.put(account_key(b), b"%d" % (balance_b + amount))
                txn.put(count_key, b"%d" % (int(txn.get(count_key, b"0")) + 1))
            committed += 1
    results.put(("writer", writer_id, committed))


def bank_reader(path, reader_id, start, stop, results) -> None:
    """From the ``start`` barrier on, check the total of every account in one snapshot
    after another (by cursor and by get() in turn) until ``stop`` is set, then once
    more; report how many snapshots were checked, how many distinct commits they saw,
    and the first few bad ones."""
    checked = 0
    txnids = set()
    bad = []
    with kvmm.open(path) as env:
        start.wait(WAIT)
        while True:
            stopping = stop.is_set()
            with env.begin() as txn:
                if checked % 2:
                    balances = [int(txn.get(account_key(i))) for i in range(ACCOUNTS)]
                else:
                    balances = [int(v) for k, v in txn.cursor() if k.startswith(b"acct")]
                if len(balances) != ACCOUNTS or sum(balances) != TOTAL:
                    bad.append((txn.id(), len(balances), sum(balances)))
                txnids.add(txn.id())
            checked += 1
            if stopping:
                break
    results.put(("reader", reader_id, checked, len(txnids), bad[:10]))


# --- snapshots, the writer lock, growth -----------------------------------------------


def rewrite_keys(path, count, rounds) -> None:
    """Commit ``rounds`` times, each time giving every one of ``count`` keys a new value
    (``round_value(r, i)``), so that pages are freed and reused."""
    with kvmm.open(path) as env:
        for r in range(rounds):
            with env.begin(write=True) as txn:
                for i in range(count):
                    txn.put(b"key%04d" % i, round_value(r, i))


def round_value(r: int, i: int) -> bytes:
    """Value of key ``i`` after round ``r`` (round -1: the first value)."""
    return (b"round%d-key%d|" % (r, i)) * (1 + i % 20)


def hold_write_txn(path, holding, release, before_commit) -> None:
    """Open a write transaction, put b"holder", set ``holding``; once ``release`` is set,
    store the monotonic time in ``before_commit`` and commit."""
    with kvmm.open(path) as env:
        txn = env.begin(write=True)
        txn.put(b"holder", b"child")
        holding.set()
        if not release.wait(WAIT):
            txn.abort()
            return
        before_commit.value = time.monotonic()
        txn.commit()


def write_when_free(path, ready) -> None:
    """Open the environment, set ``ready``, then wait for the writer lock and commit
    b"waiter"."""
    with kvmm.open(path) as env:
        ready.set()
        with env.begin(write=True) as txn:
            txn.put(b"waiter", b"child")


def growth_key(i: int) -> bytes:
    return b"grow%06d" % i


def growth_value(i: int) -> bytes:
    """About 1.2 KB on average; every 100th is a 20 KB overflow value."""
    length = 20000 if i % 100 == 0 else 300 + i * 37 % 1800
    unit = b"%d." % i
    return (unit * (length // len(unit) + 1))[:length]


def follow_growth(path, count, ready, go, results) -> None:
    """Open the environment and read it once while it is small; with no transaction
    open, set ``ready`` and wait for ``go``; then read every one of ``count`` keys by
    cursor and by get(), and report how many were right and the first wrong ones."""
    with kvmm.open(path) as env:
        with env.begin() as txn:
            txn.get(growth_key(0))
        ready.set()
        if not go.wait(WAIT):
            results.put(("timeout",))
            return
        wrong = []
        with env.begin() as txn:
            items = list(txn.cursor())
            if [k for k, _ in items] != [growth_key(i) for i in range(count)]:
                wrong.append(("cursor keys", len(items)))
            for k, v in items:
                if v != growth_value(int(k[4:])):
                    wrong.append(("cursor", k))
            right = 0
            for i in range(count):
                if txn.get(growth_key(i)) == growth_value(i):
                    right += 1
                else:
                    wrong.append(("get", growth_key(i)))
        results.put(("done", right, wrong[:10]))


def hold_read_txn(path, ready) -> None:
    """Open a read transaction, set ``ready``, and sleep holding it (until killed)."""
    env = kvmm.open(path)
    txn = env.begin()
    txn.get(b"key0000")
    ready.set()
    time.sleep(WAIT)
    txn.abort()
    env.close()


# --- a writer killed inside commit ---------------------------------------------------

GENERATION_KEYS = 200


def generation_contents(g: int) -> dict:
    """The whole database after generation ``g`` committed (generation 0: empty).

    200 keys whose values name ``g`` (their lengths vary with ``g``, so pages split and
    merge differently), a large overflow value whose length varies too, and ``g % 50``
    extra keys, so that generations add and delete keys as well.
    """
    if g == 0:
        return {}
    out = {}
    tag = b"g%d:" % g
    for i in range(GENERATION_KEYS):
        out[b"k%03d" % i] = tag * (1 + (g + i) % 12)
    for i in range(g % 50):
        out[b"x%03d" % i] = tag
    out[b"big"] = tag * (2000 + 700 * (g % 9))
    out[b"gen"] = b"%d" % g
    return out


def write_generations(path, ack_path, sync) -> None:
    """From the generation in the database on, commit one whole generation after another
    for ever, appending ``b"<g>\\n"`` to ``ack_path`` after each commit returns."""
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with kvmm.open(path, sync=sync) as env:
        with env.begin() as txn:
            g = int(txn.get(b"gen", b"0"))
        while True:
            g += 1
            want = generation_contents(g)
            with env.begin(write=True) as txn:
                stale = [k for k in txn.cursor().iternext(values=False) if k not in want]
                for k in stale:
                    txn.delete(k)
                for k, v in want.items():
                    txn.put(k, v)
            os.write(fd, b"%d\n" % g)


# --- damaged files --------------------------------------------------------------------

DAMAGE_NAMED = b"named"
#: The keys with overflow values in the damage database.
DAMAGE_OVERFLOW_KEYS = (7, 77, 177, 250)


def _damage_value(i: int, version: int) -> bytes:
    if i in DAMAGE_OVERFLOW_KEYS:
        length = 6000 + 40 * i + 1000 * version
    else:
        length = 10 + (i * 13 + version * 7) % 230
    unit = b"v%d.%d-" % (version, i)
    return (unit * (length // len(unit) + 1))[:length]


def damage_commits() -> list:
    """The commits that build the damage database: lists of (db name, key, value or
    None to delete). Page frees and overwrites leave free pages behind."""
    first = [(None, b"key%04d" % i, _damage_value(i, 0)) for i in range(300)]
    first += [(DAMAGE_NAMED, b"n%03d" % i, b"named-%d|" % i * (1 + i % 9)) for i in range(60)]
    first.append((DAMAGE_NAMED, b"n-big", _damage_value(250, 3)))
    second = [(None, b"key%04d" % i, _damage_value(i, 1)) for i in range(0, 300, 3)]
    second += [(None, b"key%04d" % i, None) for i in range(100, 130)]
    second += [(DAMAGE_NAMED, b"n%03d" % i, None) for i in range(0, 60, 4)]
    final = [(None, b"key%04d" % i, _damage_value(i, 2)) for i in range(10)]
    final += [(None, b"key0077", None), (None, b"zz-final", b"last commit")]
    final += [(DAMAGE_NAMED, b"n999", b"named last"), (DAMAGE_NAMED, b"n001", None)]
    return [first, second, final]


def damage_states() -> tuple[dict, dict]:
    """(previous, final): the contents after the last two commits, as
    {db name: {key: value}} with None for the main database."""
    state: dict = {None: {}, DAMAGE_NAMED: {}}
    states = []
    for commit in damage_commits():
        for name, key, value in commit:
            if value is None:
                state[name].pop(key, None)
            else:
                state[name][key] = value
        states.append({name: dict(items) for name, items in state.items()})
    return states[-2], states[-1]


def build_damage_db(path: str) -> None:
    """Write the damage database (subdir=False, 4 KiB pages) at ``path``."""
    with kvmm.open(path, subdir=False, max_dbs=2) as env:
        named = env.open_db(DAMAGE_NAMED)
        for commit in damage_commits():
            with env.begin(write=True) as txn:
                for name, key, value in commit:
                    db = named if name is not None else None
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, value, db=db)


def _read_everything(path: str, options: dict) -> dict:
    """Every database's items as the cursor sees them, after checking that get() gives
    the same value for each key. Raises kvmm.Error (or worse) on damage."""
    with kvmm.open(path, subdir=False, max_dbs=2, **options) as env:
        dbs = {None: None, DAMAGE_NAMED: env.open_db(DAMAGE_NAMED, create=False)}
        out = {}
        with env.begin() as txn:
            for name, db in dbs.items():
                items = dict(txn.cursor(db=db))
                if name is None:
                    items.pop(DAMAGE_NAMED)  # the named database's record, as in LMDB
                for key, value in items.items():
                    if txn.get(key, db=db) != value:
                        raise AssertionError(f"get({key!r}) disagrees with the cursor")
                out[name] = items
        return out


def _outcome(path: str, options: dict, previous: dict, final: dict) -> str:
    """'final' or 'previous' (the data of that commit, exactly), 'wrong: ...',
    'error: <kvmm error class>: ...', or 'crash: <any other exception>'."""
    try:
        got = _read_everything(path, options)
    except kvmm.Error as e:
        return f"error: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - any other exception is what is reported
        return f"crash: {type(e).__name__}: {e}\n{traceback.format_exc()}"
    if got == final:
        return "final"
    if got == previous:
        return "previous"
    diff = [(repr(n), len(got[n]), len(final[n])) for n in final if got.get(n) != final[n]]
    return f"wrong: databases that differ from the final commit (name, got, want): {diff}"


def read_damaged(cases, out_path, progress_path) -> None:
    """Read each (path, open options) of ``cases`` and write {path: outcome} as JSON to
    ``out_path``. Before each case its path is written to ``progress_path``, so the
    parent can name the file that killed or hung this process."""
    previous, final = damage_states()
    outcomes = {}
    for path, options in cases:
        with open(progress_path, "w") as f:
            f.write(path)
        outcomes[path] = _outcome(path, options, previous, final)
    with open(out_path, "w") as f:
        json.dump(outcomes, f)
