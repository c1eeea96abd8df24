"""Typical user code of kvmm, checked by ``mypy --strict`` (tests/test_typing.py): the
public API's annotations must let it pass without casts or ignores. It also runs."""

from __future__ import annotations

import tempfile

import kvmm


def fill(env: kvmm.Environment, db: kvmm._Database) -> int:
    with env.begin(write=True) as txn:
        txn.put(b"apple", b"red")
        txn.put(b"banana", bytearray(b"yellow"))
        txn.put(memoryview(b"cherry"), b"dark red", db=db)
        old: bytes | None = txn.replace(b"apple", b"green")
        assert old == b"red"
        gone: bytes | None = txn.pop(b"banana")
        assert gone == b"yellow"
        assert txn.delete(b"missing") is False
        return txn.id()


def read(env: kvmm.Environment, db: kvmm._Database) -> list[tuple[bytes, bytes]]:
    with env.begin() as txn:
        value: bytes | None = txn.get(b"apple")
        assert value is not None and value.decode() == "green"
        fallback: bytes | str = txn.get(b"nothing", "none")
        assert fallback == "none"
        entries: int = txn.stat(db)["entries"]
        assert entries == 1
        with txn.cursor(db) as cur:
            cur.set_range(b"c")
            pairs = [(key, val) for key, val in cur]
            keys: list[bytes] = list(cur.iternext(values=False))
            assert keys == [b"cherry"]  # past the end: from the first again
            cur.first()
            k: bytes = cur.key()
            v: bytes = cur.value()
            assert (k, v) == pairs[0]
        return pairs


def buffers(env: kvmm.Environment) -> int:
    with env.begin(buffers=True) as txn:
        view: memoryview | None = txn.get(b"apple")
        return len(view) if view is not None else 0


def main() -> None:
    with tempfile.TemporaryDirectory() as path:
        env = kvmm.open(path, max_dbs=2, map_size=1 << 24, sync=False)
        with env:
            fruit = env.open_db(b"fruit", dupsort=False)
            assert fill(env, fruit) >= 1
            assert read(env, fruit) == [(b"cherry", b"dark red")]
            assert buffers(env) == 5
            names: list[bytes] = env.dbs()
            assert names == [b"fruit"]
            assert env.stat()["entries"] >= 1
            try:
                with env.begin(write=True) as txn:
                    txn.put(b"", b"an empty key")
            except kvmm.BadValsizeError as e:
                assert isinstance(e, kvmm.Error)
        try:
            kvmm.open(path + "/none", create=False)
        except kvmm.Error as e:
            assert "none" in str(e)
        assert kvmm.check.check(path) == []
        major, minor, patch = kvmm.version()
        assert major >= 0 and minor >= 0 and patch >= 0


if __name__ == "__main__":
    main()
