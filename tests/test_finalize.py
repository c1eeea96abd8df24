"""Environments dropped without close(): their finalizers never wait for a lock that
the thread they interrupt may hold (kvmm/lock.py's module docstring).

The cyclic GC runs ``Environment.__del__`` of unreachable environments wherever the
thread happens to be, possibly inside ``LockFile.close`` or ``_open_shared`` while
they hold ``kvmm.lock._registry_lock``. Each case forces a collection at such a
point, in a child interpreter, so that a finalizer that waits for the lock shows as
a child that never finishes (killed after TIMEOUT seconds), not as a hung test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import kvmm

KVMM_ROOT = os.path.dirname(os.path.dirname(kvmm.__file__))  # the child imports this kvmm
TIMEOUT = 60  # the child takes well under a second unless it deadlocks

PRELUDE = """
import gc, os, sys, threading
import kvmm
from kvmm import lock

gc.disable()  # collections happen only where the case forces them

def orphan(path):
    \"\"\"Open an environment and leave it unreachable, in a reference cycle.\"\"\"
    env = kvmm.open(path)
    env.cycle = env

root = sys.argv[1]
"""


def run_child(tmp_path, body: str) -> str:
    """Run PRELUDE + ``body`` in a fresh interpreter; its stdout. Fails when the
    child deadlocks (TIMEOUT) or fails."""
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                              capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "PYTHONPATH": KVMM_ROOT})
    except subprocess.TimeoutExpired:
        raise AssertionError("the child deadlocked: a finalizer waited for a lock its "
                             "own thread held") from None
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_collection_inside_a_close_that_holds_the_registry_lock_does_not_hang(tmp_path):
    out = run_child(tmp_path, """
        original = lock._Shared.close
        def close_collecting(self):
            gc.collect()  # runs the orphan's Environment.__del__ right here
            original(self)
        lock._Shared.close = close_collecting
        orphan(os.path.join(root, "a"))
        kvmm.open(os.path.join(root, "b")).close()
        gc.collect()
        print(len(lock._registry), len(lock._deferred))
    """)
    assert out.split() == ["0", "0"]  # both lock files closed, nothing left owed


def test_collection_inside_an_open_that_holds_the_registry_lock_does_not_hang(tmp_path):
    out = run_child(tmp_path, """
        original = lock._Shared.__init__
        def init_collecting(self, *args):
            gc.collect()
            original(self, *args)
        lock._Shared.__init__ = init_collecting
        orphan(os.path.join(root, "a"))
        env = kvmm.open(os.path.join(root, "b"))
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        print(len(lock._registry), len(lock._deferred))
        env.close()
        print(len(lock._registry), len(lock._deferred))
    """)
    assert out.split() == ["1", "0", "0", "0"]


def test_collection_of_an_environment_on_a_file_still_open_keeps_the_file_open(tmp_path):
    # The orphan shares its lock file state with a live environment: its close,
    # deferred, only drops its reference.
    out = run_child(tmp_path, """
        path = os.path.join(root, "a")
        live = kvmm.open(path)
        original = lock._Shared.close
        def close_collecting(self):
            gc.collect()
            original(self)
        lock._Shared.close = close_collecting
        orphan(path)
        kvmm.open(os.path.join(root, "b")).close()
        (sh,) = lock._registry.values()
        print(sh.refs)
        with live.begin(write=True) as txn:
            txn.put(b"k", b"v")
        with live.begin() as txn:
            print(txn.get(b"k").decode())
        live.close()
        print(len(lock._registry))
    """)
    assert out.split() == ["1", "v", "0"]


def test_a_finalizer_in_another_thread_leaves_its_close_to_the_registry_lock_holder(tmp_path):
    out = run_child(tmp_path, """
        orphan(os.path.join(root, "a"))
        lock._registry_lock.acquire()  # as an open or close in this thread does
        t = threading.Thread(target=gc.collect)  # the orphan's __del__ runs there
        t.start()
        t.join(30)
        print(t.is_alive(), len(lock._registry), len(lock._deferred))
        lock._release_registry()  # what the holder does when it is done
        print(len(lock._registry), len(lock._deferred))
    """)
    assert out.split() == ["False", "1", "1", "0", "0"]
