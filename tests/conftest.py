"""Shared fixtures and settings for kvmm's tests.

``KVMM_STRICT=1`` makes kvmm run its consistency checker after every commit, so any
test that commits also checks the file's invariants. It is set here, at import time,
before any test module imports kvmm.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("KVMM_STRICT", "1")

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: py-lmdb needs a fixed map size; 256 MiB is far more than any test writes.
LMDB_MAP_SIZE = 256 * 1024 * 1024


@pytest.fixture
def env(tmp_path):
    """A fresh kvmm environment with room for 8 named databases, closed afterwards."""
    import kvmm

    environment = kvmm.open(str(tmp_path / "db"), max_dbs=8)
    yield environment
    environment.close()


@pytest.fixture
def lmdb_env(tmp_path):
    """A fresh py-lmdb environment (256 MiB map, 8 named databases), closed afterwards."""
    import lmdb

    environment = lmdb.open(str(tmp_path / "lmdb"), map_size=LMDB_MAP_SIZE, max_dbs=8)
    yield environment
    environment.close()
