"""Consistent copies of a live environment: page for page, or compacted.

A copy reads one snapshot, so writers may go on while it runs. A plain copy writes the
snapshot's pages as they are (free pages included) and the snapshot's meta into both
meta slots; a compacted copy rebuilds every tree in key order into a fresh file, with
no free pages.
"""

from __future__ import annotations

import os
import tempfile

from . import format as fmt

# A compacted copy commits after this many records, so it never holds a whole
# database of dirty pages in memory.
COMPACT_BATCH = 50_000
COPY_CHUNK_PAGES = 256
COPY_CACHE = 16 << 20  # the destination's page cache: a copy reads each page once


def copy_env(env, path: str, compact: bool = False, txn=None, progress=None) -> None:
    """Copy ``env`` to ``path``, in its layout: into directory ``path`` (created when
    missing) as ``data.kvmm``, or for a ``subdir=False`` environment as the file
    ``path`` itself."""
    from .env import DATA_NAME

    if env._subdir:
        os.makedirs(path, exist_ok=True)
        target = os.path.join(path, DATA_NAME)
    else:
        target = path
    if os.path.exists(target) and os.path.getsize(target):
        raise FileExistsError(f"{target} already exists")
    if compact:
        _copy_compact(env, path, txn, progress)
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, env._mode)
    try:
        copy_to_fd(env, fd, txn=txn, progress=progress)
    finally:
        os.close(fd)


def copy_to_fd(env, fd: int, compact: bool = False, txn=None, progress=None) -> None:
    """Write the pages of one snapshot to ``fd``, with its meta in both slots; or,
    with ``compact``, a compacted copy's data file."""
    if compact:
        _copy_compact_to_fd(env, fd, txn, progress)
        return
    own = txn is None
    if own:
        txn = env.begin()
    try:
        meta = txn.meta
        ps = env._page_size
        steady = fmt.Meta(ps, meta.txnid, meta.next_pgno, fmt.META_STEADY, meta.boot_id,
                          meta.main, meta.free, meta.inline_free)
        page = fmt.encode_meta(steady).ljust(ps, b"\0")
        os.pwrite(fd, page + page, 0)
        mm = txn._mm
        for start in range(fmt.NUM_METAS, meta.next_pgno, COPY_CHUNK_PAGES):
            end = min(start + COPY_CHUNK_PAGES, meta.next_pgno)
            os.pwrite(fd, mm[start * ps : end * ps], start * ps)
            if progress is not None:
                progress(end - start)
        os.fsync(fd)
    finally:
        if own:
            txn.abort()


def _copy_compact(env, path: str, txn, progress) -> None:
    from .env import Environment

    own = txn is None
    if own:
        txn = env.begin()
    # No lock file: nothing else uses the copy while it is built.
    dst = Environment(path, subdir=env._subdir, lock=False, page_size=env._page_size,
                      max_dbs=max(env._max_dbs, 1 << 16), sync=False, cache_size=COPY_CACHE)
    try:
        names: list = []
        _copy_db(txn, None, dst, None, progress, names)
        for name in names:
            src_db = env.open_db(name, txn=txn, create=False)
            wtxn = dst.begin(write=True)
            dst_db = dst.open_db(name, txn=wtxn, **src_db.flags())
            wtxn.commit()
            _copy_db(txn, src_db, dst, dst_db, progress, [])
        dst.sync(True)
        used = (dst.info()["last_pgno"] + 1) * dst._page_size
        dst._datafile.truncate(used)  # no slack: a compact copy is as small as it gets
    finally:
        dst.close()
        if own:
            txn.abort()


def _copy_compact_to_fd(env, fd: int, txn, progress) -> None:
    """A compacted copy is built by a kvmm environment, so it is made in a temporary
    directory first; its data file is then written to ``fd``."""
    from .env import DATA_NAME

    chunk_size = COPY_CHUNK_PAGES * env._page_size
    with tempfile.TemporaryDirectory(prefix="kvmm-compact-") as tmp:
        _copy_compact(env, tmp, txn, progress)
        with open(os.path.join(tmp, DATA_NAME), "rb") as src:
            at = 0
            while chunk := src.read(chunk_size):
                done = 0
                while done < len(chunk):
                    done += os.pwrite(fd, chunk[done:], at + done)
                at += len(chunk)
    os.fsync(fd)


def _entries(txn, db, names):
    """Yield (key, value) of plain entries (pairs, of a dupsort database; in the user's
    form, of a database with stored forms); collect named-database keys in ``names``."""
    if db is not None and db._flags:
        yield from txn.cursor(db)
        return
    cur = txn.cursor(db)
    if not cur.first():
        return
    while True:
        leaf, i = cur._path[-1]
        flag = leaf.flags[i] if leaf.flags is not None else 0
        if flag & fmt.F_SUBDB:
            names.append(leaf.keys[i])
        else:
            yield leaf.keys[i], txn._value(leaf, i)
        if not cur.next():
            return


def _copy_db(txn, src_db, dst, dst_db, progress, names) -> None:
    wtxn = dst.begin(write=True)
    n = 0
    for key, value in _entries(txn, src_db, names):
        wtxn.put(key, value, append=True, db=dst_db)
        n += 1
        if n % COMPACT_BATCH == 0:
            wtxn.commit()
            if progress is not None:
                progress(COMPACT_BATCH)
            wtxn = dst.begin(write=True)
    wtxn.commit()
    if progress is not None:
        progress(n % COMPACT_BATCH)
