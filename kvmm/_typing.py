"""Names the annotations of kvmm's public API use (annotations only: nothing here is
called on a hot path)."""

from __future__ import annotations

from typing import TypeVar

#: What keys and values may be passed as: any of these is read as its bytes.
BytesLike = bytes | bytearray | memoryview

#: What reads return: bytes, or memoryview in a transaction begun with buffers=True.
V_co = TypeVar("V_co", bound="bytes | memoryview", covariant=True)

#: The type of a ``default`` argument.
T = TypeVar("T")
