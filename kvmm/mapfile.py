"""The data file: the one I/O seam for writes, and the read-only map for reads.

Every write, sync, truncate and size query of the data file goes through
:class:`DataFile`, so tests can swap in a class that injects faults or simulates a power
loss. Reads go through :class:`Map`, a read-only ``mmap`` of the file.

Python's ``mmap`` cannot be resized while memoryviews of it exist, and cannot map past
the end of the file. So growing never resizes a map: a new, larger ``mmap`` object
replaces the old one, and the old one lives on until the last transaction or
memoryview that holds it lets go.

Invariants:
- A page is read from the map only when it lies inside the map and inside the
  snapshot's ``next_pgno``; a map never extends past the file's size when it is made.
  Together these keep reads away from SIGBUS.
"""

from __future__ import annotations

import errno
import mmap
import os

from .errors import DiskError, InvalidParameterError


class DataFile:
    """The data file's descriptor: pwrite, sync, truncate, size. Nothing else writes."""

    def __init__(self, path: str, *, readonly: bool, create: bool, mode: int):
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if create and not readonly:
            flags |= os.O_CREAT
        self.path = path
        self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
        # Whether pages may be written through a writable map instead of write() (see
        # Store.write_pages): only when this class's write() is the real one,
        # so a subclass that watches or fails writes (the tests' simulated disks)
        # sees every page; and only where disk space can be reserved (allocate).
        self.map_writes = (type(self).write is DataFile.write and not readonly
                           and hasattr(os, "posix_fallocate"))

    def size(self) -> int:
        """The file's current size in bytes (one fstat)."""
        return os.fstat(self.fd).st_size

    def pread(self, n: int, offset: int) -> bytes:
        """Read without the map: used only before the map exists (opening)."""
        return os.pread(self.fd, n, offset)

    def write(self, offset: int, chunks: list) -> None:
        """Write ``chunks`` back to back at ``offset``; DiskError on failure."""
        try:
            if len(chunks) == 1:
                data = chunks[0]
                written = os.pwrite(self.fd, data, offset)
                total = len(data)
            else:
                written = os.pwritev(self.fd, chunks, offset)
                total = sum(len(c) for c in chunks)
        except OSError as e:
            raise DiskError(f"writing {self.path}: {e.strerror or e}") from e
        if written != total:
            # A short write is what a full disk looks like to pwrite: finish or fail.
            data = b"".join(chunks)
            while written < total:
                try:
                    n = os.pwrite(self.fd, data[written:], offset + written)
                except OSError as e:
                    raise DiskError(f"writing {self.path}: {e.strerror or e}") from e
                if n == 0:
                    raise DiskError(f"writing {self.path}: {os.strerror(errno.ENOSPC)}")
                written += n

    def sync(self) -> None:
        """Make everything written so far durable (fdatasync)."""
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise DiskError(f"syncing {self.path}: {e.strerror or e}") from e

    def allocate(self, offset: int, length: int) -> bool:
        """Reserve disk space for bytes ``offset .. offset+length`` of the file (inside
        it), so that writing them through a map cannot meet a full disk, which would
        be a SIGBUS instead of an error. DiskError when the disk is full; False when
        the file system cannot reserve space (then nothing is written through a map)."""
        if length <= 0:
            return True
        try:
            os.posix_fallocate(self.fd, offset, length)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise DiskError(f"reserving space in {self.path}: {e.strerror or e}") from e
        return True

    def truncate(self, size: int) -> None:
        """Set the file's size (grow sparse, or give space back)."""
        try:
            os.ftruncate(self.fd, size)
        except (OSError, OverflowError) as e:
            raise DiskError(f"resizing {self.path} to {size} bytes: "
                            f"{getattr(e, 'strerror', None) or e}") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Map:
    """A map of the data file, replaced (never resized) when the file grows. Read-only
    unless ``writable`` (the writer's pages may then be written through it)."""

    def __init__(self, datafile: DataFile, writable: bool = False):
        self.datafile = datafile
        self.mm: mmap.mmap | None = None
        self.size = 0
        self.prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)

    def cover(self, nbytes: int) -> mmap.mmap:
        """Return a map covering ``nbytes`` or, when the file is shorter, all of it;
        remap when the file grew.

        A snapshot's ``next_pgno`` may lie past the file's end: pages given back at
        the end are free in every snapshot a reader can hold. A page that is needed
        and missing reads short, which the page checks report as corruption.
        """
        if nbytes <= self.size:
            return self.mm  # type: ignore[return-value]  # size > 0: mapped
        fsize = self.datafile.size()
        if fsize <= self.size:
            return self.mm  # type: ignore[return-value]  # size > 0: mapped
        try:
            mm = mmap.mmap(self.datafile.fd, fsize, mmap.MAP_SHARED, self.prot)
        except (OSError, ValueError) as e:
            raise InvalidParameterError(f"cannot map the data file: {e}") from e
        # The old map is dropped, not closed: transactions and memoryviews may hold it.
        self.mm = mm
        self.size = fsize
        return mm

    def close(self) -> None:
        mm, self.mm, self.size = self.mm, None, 0
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a memoryview still holds it; it goes when that view does
