"""kvmm.aio: py-lmdb's asyncio interface (``lmdb.aio``) over kvmm (docs/reference.md section 3)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import kvmm
import kvmm.aio
from kvmm.dupsort import DupCursor


def test_transactions_and_cursors_run_as_coroutines(env):
    async def main():
        aenv = kvmm.aio.wrap(env)
        async with aenv.begin(write=True) as txn:
            assert await txn.put(b"b", b"2")
            async with txn.cursor() as cur:
                await cur.put(b"a", b"1")
                assert cur.key() == b"a"  # a plain call, not a coroutine
        txn = await aenv.begin()  # awaited rather than entered
        assert await txn.get(b"b") == b"2"
        cur = await txn.cursor()
        assert await cur.first()
        assert await cur.iternext() == [(b"a", b"1"), (b"b", b"2")]
        await txn.abort()
        assert (await aenv.stat())["entries"] == 2
        assert aenv.path() == env.path()
        with pytest.raises(TypeError):
            async with aenv.begin() as txn:
                await txn.get("a str key")

    asyncio.run(main())


def test_an_exception_in_the_block_aborts(env):
    async def main():
        aenv = kvmm.aio.wrap(env)
        with pytest.raises(ValueError):
            async with aenv.begin(write=True) as txn:
                await txn.put(b"k", b"v")
                raise ValueError("boom")
        async with aenv.begin() as txn:
            return await txn.get(b"k")

    assert asyncio.run(main()) is None


def test_write_transactions_of_concurrent_tasks_take_turns(env):
    """Each write transaction has a thread of its own: on a shared executor two tasks
    could begin theirs on one thread, where the second would be refused."""
    pool = ThreadPoolExecutor(1)  # one thread: a shared one would be reused
    threads = []

    async def writer(i):
        async with kvmm.aio.wrap(env, executor=pool).begin(write=True) as txn:
            await txn.put(b"k%d" % i, b"v")
            threads.append(await asyncio.get_running_loop().run_in_executor(
                txn._executor, threading.get_ident))
            await asyncio.sleep(0)  # the other task begins meanwhile

    async def main():
        await asyncio.gather(*(writer(i) for i in range(4)))

    asyncio.run(main())
    pool.shutdown()
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [b"k0", b"k1", b"k2", b"k3"]


def test_a_dupsort_cursor_calls_its_own_methods(env):
    db = env.open_db(b"dups", dupsort=True)

    async def main():
        aenv = kvmm.aio.wrap(env)
        async with aenv.begin(write=True, db=db) as txn:
            for v in (b"1", b"2", b"3"):
                await txn.put(b"k", v)
            await txn.put(b"m", b"1")
        async with aenv.begin(db=db) as txn, txn.cursor() as cur:
            assert await cur.set_key(b"k")
            assert await cur.count() == 3
            assert await cur.iternext_dup() == [b"1", b"2", b"3"]
            assert await cur.next_nodup()
            return cur.item()

    assert asyncio.run(main()) == (b"m", b"1")


@pytest.mark.parametrize("wrapper, classes, plain", [
    (kvmm.aio.AsyncEnvironment, (kvmm.Environment,),
     {"path", "max_key_size", "max_readers", "flags", "begin"}),
    (kvmm.aio.AsyncTransaction, (kvmm.Transaction,), {"id", "cursor"}),
    (kvmm.aio.AsyncCursor, (kvmm.Cursor, DupCursor), {"key", "value", "item"}),
])
def test_every_public_method_has_a_wrapper(wrapper, classes, plain):
    for cls in classes:
        for name in dir(cls):
            if name.startswith("_") or not inspect.isfunction(getattr(cls, name)):
                continue
            method = vars(wrapper)[name]
            assert method.__doc__ in {getattr(c, name, None).__doc__ for c in classes}
            assert inspect.iscoroutinefunction(method) == (name not in plain), name
