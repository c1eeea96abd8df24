"""asyncio use of kvmm, as py-lmdb's ``lmdb.aio``: ``import kvmm.aio`` replaces it.

``wrap(env)`` gives an :class:`AsyncEnvironment`. Its methods, and those of the
transactions and cursors it begins, are coroutines that run the blocking call in an
executor (``loop.run_in_executor``), so the event loop never waits on a page read,
a commit's sync or the writer lock::

    aenv = kvmm.aio.wrap(kvmm.open("db"))
    async with aenv.begin(write=True) as txn:     # or: txn = await aenv.begin(...)
        await txn.put(b"key", b"value")
    async with aenv.begin() as txn, txn.cursor() as cur:
        await cur.first()
        items = await cur.iternext()              # iterators come back as lists

Which call runs where:

- Accessors that cost nothing run at once, not in the executor: the environment's
  ``path``, ``max_key_size``, ``max_readers``, ``flags``; a transaction's ``id``; a
  cursor's ``key``, ``value``, ``item``.
- A read transaction's calls run in the executor given to ``wrap`` (None: the
  loop's default one); they may run on any of its threads.
- A write transaction gets an executor of its own, one thread, from ``begin`` to
  ``commit``/``abort``: kvmm refuses a second write transaction in a thread that has
  one open (it would wait for itself), so two tasks' write transactions must never
  share a thread. The second one waits for the writer lock in its own thread.
- The calls of one transaction and of its cursors take turns (an ``asyncio.Lock``):
  a transaction is used by one thread at a time, so ``asyncio.gather`` over one
  transaction is safe.

Every public method of :class:`kvmm.Environment`, :class:`kvmm.Transaction` and
:class:`kvmm.Cursor` (with the dupsort cursor's) has its wrapper, made from the class
when this module is imported; it carries the method's name and docstring and
calls the method of the wrapped object by name, so a dupsort cursor's own methods
are the ones called.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from concurrent.futures import Executor, ThreadPoolExecutor

from .cursor import Cursor
from .dupsort import DupCursor
from .env import Environment
from .txn import Transaction

__all__ = ["AsyncCursor", "AsyncEnvironment", "AsyncTransaction", "wrap"]


def wrap(env: Environment, executor: Executor | None = None) -> AsyncEnvironment:
    """``env`` for asyncio code. ``executor`` runs the environment's calls and its
    read transactions' (None: the event loop's default executor)."""
    return AsyncEnvironment(env, executor)


class _Opening:
    """What ``begin()`` and ``cursor()`` return: awaited, the wrapped object; used
    with ``async with``, the same object, ended by the block's exit."""

    __slots__ = ("_coro", "_opened")

    def __init__(self, coro):
        self._coro = coro
        self._opened = None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self):
        self._opened = await self._coro
        return self._opened

    async def __aexit__(self, exc_type, exc, tb):
        return await self._opened.__aexit__(exc_type, exc, tb)


# --- the wrappers' methods, made from the wrapped classes ---------------------------


def _public_methods(*classes) -> dict:
    """name -> function of every public method of ``classes`` (the first class that
    has it wins)."""
    out: dict = {}
    for cls in classes:
        for name in dir(cls):
            attr = inspect.getattr_static(cls, name)
            if not name.startswith("_") and name not in out and inspect.isfunction(attr):
                out[name] = attr
    return out


def _direct(name: str, func):
    """A plain method: the call, made at once."""

    @functools.wraps(func)
    def method(self, *args, **kwargs):
        return getattr(self._wrapped(), name)(*args, **kwargs)

    return method


def _in_executor(name: str, func, collect: bool = False):
    """A coroutine method: the call, made in the wrapper's executor, in turn with
    the other calls of its transaction. ``collect``: the call returns an iterator,
    consumed in the executor into a list."""

    @functools.wraps(func)
    async def method(self, *args, **kwargs):
        call = functools.partial(getattr(self._wrapped(), name), *args, **kwargs)
        if collect:
            call = functools.partial(_consume, call)
        return await self._run(call)

    return method


def _consume(call) -> list:
    return list(call())


def _add_methods(cls, wrapped: dict, direct: set, special: set) -> None:
    """Give ``cls`` a method per name in ``wrapped``: plain for ``direct`` names,
    coroutines for the rest, but ``special`` ones, which ``cls`` defines itself."""
    for name, func in wrapped.items():
        if name in special:
            continue
        if name in direct:
            setattr(cls, name, _direct(name, func))
        else:
            setattr(cls, name, _in_executor(name, func, collect=name.startswith("iter")))


class _Wrapper:
    """What the three wrappers share: an executor, and the object they wrap."""

    __slots__ = ()

    def _wrapped(self):
        raise NotImplementedError

    async def _run(self, call):
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def __getattr__(self, name: str):
        # Attributes that are not methods (a cursor's txn and db) read through.
        # A method without a wrapper is not offered: calling it here would block.
        attr = getattr(self._wrapped(), name)
        if not callable(attr):
            return attr
        raise AttributeError(f"{type(self).__name__} has no method {name!r}")


class _InTurn(_Wrapper):
    """A transaction's or cursor's wrapper: its calls take turns with the other
    calls of its transaction (``_lock``, shared by the transaction's cursors)."""

    __slots__ = ()

    async def _run(self, call):
        async with self._lock:
            return await super()._run(call)

    async def __aenter__(self):
        return self


# --- the environment ------------------------------------------------------------------


class AsyncEnvironment(_Wrapper):
    """An environment for asyncio code (py-lmdb's ``lmdb.aio.AsyncEnvironment``); made
    by :func:`wrap`. ``async with`` closes the environment at the block's end."""

    __slots__ = ("_env", "_executor")

    def __init__(self, env: Environment, executor: Executor | None = None):
        self._env = env
        self._executor = executor

    def _wrapped(self):
        return self._env

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self._run(self._env.close)

    @functools.wraps(Environment.begin)
    def begin(self, *args, **kwargs) -> _Opening:
        bound = inspect.signature(Environment.begin).bind(self._env, *args, **kwargs)
        write = bool(bound.arguments.get("write", False))
        return _Opening(self._begin(write, args, kwargs))

    async def _begin(self, write: bool, args, kwargs) -> AsyncTransaction:
        own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmm-writer") \
            if write else None
        executor = own if own is not None else self._executor
        loop = asyncio.get_running_loop()
        try:
            txn = await loop.run_in_executor(
                executor, functools.partial(self._env.begin, *args, **kwargs))
        except BaseException:
            if own is not None:
                own.shutdown(wait=False)
            raise
        return AsyncTransaction(txn, executor, owns_executor=own is not None)


_add_methods(AsyncEnvironment, _public_methods(Environment),
             direct={"path", "max_key_size", "max_readers", "flags"}, special={"begin"})


# --- transactions ---------------------------------------------------------------------


class AsyncTransaction(_InTurn):
    """A transaction for asyncio code; made by ``AsyncEnvironment.begin``. ``async
    with`` commits at the block's end, or aborts on an exception, unless
    ``commit()`` or ``abort()`` ended it already."""

    __slots__ = ("_done", "_executor", "_lock", "_owns_executor", "_txn")

    def __init__(self, txn: Transaction, executor: Executor | None = None,
                 owns_executor: bool = False):
        self._txn = txn
        self._executor = executor
        self._owns_executor = owns_executor  # a write transaction's own thread
        self._done = False
        self._lock = asyncio.Lock()  # one call of this transaction at a time

    def _wrapped(self):
        return self._txn

    async def __aexit__(self, exc_type, exc, tb):
        if not self._done:
            await self._finish(self._txn.commit if exc_type is None else self._txn.abort)

    @functools.wraps(Transaction.commit)
    async def commit(self) -> None:
        await self._finish(self._txn.commit)

    @functools.wraps(Transaction.abort)
    async def abort(self) -> None:
        await self._finish(self._txn.abort)

    async def _finish(self, end) -> None:
        """Commit or abort in the transaction's executor (a write transaction's own
        thread), then let that thread go."""
        self._done = True
        try:
            await self._run(end)
        finally:
            if self._owns_executor:
                self._owns_executor = False
                self._executor.shutdown(wait=False)  # type: ignore[union-attr]  # owned

    @functools.wraps(Transaction.cursor)
    def cursor(self, *args, **kwargs) -> _Opening:
        return _Opening(self._cursor(args, kwargs))

    async def _cursor(self, args, kwargs) -> AsyncCursor:
        cur = await self._run(functools.partial(self._txn.cursor, *args, **kwargs))
        return AsyncCursor(cur, self._executor, self._lock)


_add_methods(AsyncTransaction, _public_methods(Transaction), direct={"id"},
             special={"commit", "abort", "cursor"})


# --- cursors --------------------------------------------------------------------------


class AsyncCursor(_InTurn):
    """A cursor for asyncio code; made by ``AsyncTransaction.cursor``. Its calls run
    in its transaction's executor, in turn with the transaction's; iterators
    (``iternext()``...) come back as lists. ``async with`` closes it."""

    __slots__ = ("_cursor", "_executor", "_lock")

    def __init__(self, cursor: Cursor, executor: Executor | None = None,
                 lock: asyncio.Lock | None = None):
        self._cursor = cursor
        self._executor = executor
        self._lock = lock if lock is not None else asyncio.Lock()

    def _wrapped(self):
        return self._cursor

    async def __aexit__(self, *exc):
        await self._run(self._cursor.close)


_add_methods(AsyncCursor, _public_methods(Cursor, DupCursor),
             direct={"key", "value", "item"}, special=set())
