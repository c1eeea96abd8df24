"""The two meta slots of the data file: which meta is current, and writing one.

A commit ends by writing its meta into the slot that does not hold the newest steady
meta (see ``Store.write_meta``), so the other slot always names a whole commit.
:class:`Metas` decodes both slots, picks the meta a transaction starts from, caches
that choice until a slot's txnid changes, and writes a commit's meta (writing the
old bytes back when that fails).

Invariants:
- A meta that fails its checks, a weak meta of an earlier boot, and a one-flush meta
  of an earlier boot whose pages did not all arrive are never picked.
- A meta whose write failed never shows: its slot's old bytes count (``undo``) until
  they are written back.
"""

from __future__ import annotations

import time
from typing import Any

from . import format as fmt
from .errors import CorruptedError, DiskError, Error

# How long a look at the metas waits for a newer meta that fails its checks to become
# whole: another process is writing it (a commit's meta is one write of a page), or a
# crash tore it, which the wait cannot tell apart from a writer that was descheduled.
META_WAIT = 0.05


class Metas:
    """The meta slots of one data file, as this process last saw them.

    ``picked`` is the last choice of ``current`` or ``wrote``: (meta to use, newest
    txnid seen, newest steady txnid, slot to write next). ``undo`` is (slot, bytes)
    a failed commit left to write back, or None.
    """

    def __init__(self, datafile, page_size: int, boot_id: bytes, path: str) -> None:
        self.datafile = datafile
        self.page_size = page_size
        self.boot_id = boot_id
        self.path = path
        self.key: Any = None  # the raw txnids ``picked`` was decoded at; None: decode again
        self.undo: Any = None  # (slot, bytes) a failed commit left to write back
        self.seen: Any = None  # both metas as last decoded (None for a failed one)
        self.picked: Any = None
        self._intact_seen: dict = {}  # (txnid, written) of a one-flush meta -> intact
        self._torn_seen: Any = None  # bytes of a newer meta slot that stayed torn (a crash)

    def forget(self) -> None:
        """Decode both metas again at the next look."""
        self.key = None

    def read(self, mm) -> tuple:
        """Decode both metas from the map (None for one that fails its checks)."""
        out = []
        for slot in range(fmt.NUM_METAS):
            off = slot * self.page_size
            try:
                meta = fmt.decode_meta(mm[off : off + self.page_size])
            except Error:
                meta = None
            if meta is not None and not self._intact(meta):
                meta = None  # a one-flush commit a power loss tore: as if never written
            out.append(meta)
        return tuple(out)

    def _intact(self, meta) -> bool:
        """Whether a meta's commit reached the disk whole. Only a one-flush meta
        (META_WRITTEN) from an earlier boot can be in doubt: within one boot the page
        cache holds every page written before it. Answers are kept per commit."""
        if not meta.flags & fmt.META_WRITTEN or meta.boot_id == self.boot_id:
            return True
        key = (meta.txnid, meta.written)
        known = self._intact_seen.get(key)
        if known is None:
            known = fmt.written_intact(meta, self.datafile.pread)
            self._intact_seen[key] = known
        return known

    def _pick(self, metas) -> tuple:
        """(meta to use, newest txnid seen, newest steady txnid, slot to write next).

        A weak (not synced) meta from an earlier boot may reach pages that never made
        it to disk, so it is passed over for the steady one.
        """
        boot = self.boot_id
        usable = [(m.txnid, -s, m) for s, m in enumerate(metas)
                  if m is not None and (m.steady or m.boot_id == boot)]
        if not usable:
            raise CorruptedError(f"{self.path}: no valid meta page")
        meta = max(usable)[2]
        newest = max(m.txnid for m in metas if m is not None)
        steadies = [(m.txnid, s) for s, m in enumerate(metas) if m is not None and m.steady]
        if steadies:
            steady_txnid, steady_slot = max(steadies)
            target = 1 - steady_slot
        else:
            steady_txnid = meta.txnid
            target = 1 - metas.index(meta)
        return meta, newest, steady_txnid, target

    def current(self, mm) -> tuple:
        """The cached result of ``_pick``, decoded again only when a meta changed.

        A meta slot that fails its checks yet names a newer txnid than the meta
        picked is, most likely, a commit's meta being written by another process
        right now: with ``sync=False`` every commit rewrites the same slot, and the
        other one holds the last steady commit, which may be far older (at first the
        empty database). A transaction begun then must see the newest commit (docs/reference.md:
        "a snapshot of the last commit at begin()"), so the look waits, up to
        META_WAIT, for the slot to become whole. A slot still torn after that was
        torn by a crash: the steady meta is what the file holds, and the same torn
        bytes are not waited for again.
        """
        key = self._txnids(mm)
        if key != self.key:
            metas = self.read(mm)
            torn = self._newer_torn(mm, metas)
            if torn is not None and torn != self._torn_seen:
                deadline = time.monotonic() + META_WAIT
                while torn is not None and time.monotonic() < deadline:
                    time.sleep(0)  # let the writer finish its write
                    key = self._txnids(mm)
                    metas = self.read(mm)
                    torn = self._newer_torn(mm, metas)
                self._torn_seen = torn
            if self.undo is not None:
                # A failed commit's meta is in the slot: what counts is what it held.
                slot, old = self.undo
                patched = list(metas)
                try:
                    patched[slot] = fmt.decode_meta(old)
                except Error:
                    patched[slot] = None
                metas = tuple(patched)
            self.seen = metas
            self.picked = self._pick(metas)
            # A torn slot may become whole without its txnid changing: look again.
            self.key = None if self.undo is not None or torn else key
        return self.picked

    def _txnids(self, mm) -> tuple:
        """The raw txnid field of each meta slot: what ``current`` keys its cache on."""
        at = fmt.META_TXNID_OFFSET
        bt = self.page_size + at
        return mm[at : at + 8], mm[bt : bt + 8]  # the fmt.NUM_METAS (2) slots

    def _newer_torn(self, mm, metas) -> bytes | None:
        """The bytes of a meta slot that fails its checks but names a txnid above
        every valid meta's, or None."""
        valid = [m.txnid for m in metas if m is not None]
        newest = max(valid, default=-1)
        ps = self.page_size
        for slot, meta in enumerate(metas):
            if meta is None:
                (txnid,) = fmt.META_TXNID.unpack_from(mm, slot * ps + fmt.META_TXNID_OFFSET)
                if txnid > newest:
                    return mm[slot * ps : (slot + 1) * ps]
        return None

    def put(self, mm, slot: int, meta, sync: bool) -> None:
        """Write ``meta`` into ``slot`` (and sync). If that fails, the caller hears
        that its commit failed, so the meta must not show: the slot's old bytes are
        written back. On a disk that still fails, this environment ignores the slot
        and the next writer writes them back first."""
        ps = self.page_size
        old = mm[slot * ps : (slot + 1) * ps]
        try:
            self.datafile.write(slot * ps, [fmt.encode_meta(meta)])
            if sync:
                self.datafile.sync()
        except BaseException:
            self.key = None
            self.undo = (slot, old)
            self.write_back()
            raise

    def write_back(self) -> None:
        """Write back the meta slot a failed commit wrote (see ``put``); on a disk that
        still fails, ``undo`` stays set."""
        slot, old = self.undo
        try:
            self.datafile.write(slot * self.page_size, [old])
            self.datafile.sync()
        except DiskError:
            return
        self.undo = None
        self.key = None

    def mend(self, map, writer) -> None:
        """Rewrite a meta slot that a crash tore, from the other, steady, meta.

        A commit writes its meta into the slot that does not hold the newest steady
        meta, so an interrupted meta write can only tear that slot; the database
        already opens at the other. Copying it back makes the file whole again (and
        ``kvmm check`` clean) before any writer relies on having two metas.
        """
        ps = self.page_size
        if None not in self.read(map.cover(fmt.NUM_METAS * ps)):
            return
        writer.lock_writer()
        try:
            metas = self.read(map.cover(fmt.NUM_METAS * ps))
            good = [m for m in metas if m is not None]
            if len(good) == 1 and good[0].steady:
                slot = metas.index(None)
                self.datafile.write(slot * ps, [fmt.encode_meta(good[0])])
                self.datafile.sync()
                self.key = None
        finally:
            writer.unlock_writer()

    def wrote(self, slot: int, meta) -> None:
        """Update the cached metas after this process wrote ``meta`` into ``slot``:
        the newest meta now, the newest steady one if it is steady (else the steady
        one stays where it was, and so does the slot the next commit writes)."""
        key = self.key
        if key is None or None in self.seen:
            self.key = None  # decode both again at the next look
            return
        metas = list(self.seen)
        metas[slot] = meta
        _, _, steady_txnid, target = self.picked
        if meta.steady:
            steady_txnid, target = meta.txnid, 1 - slot
        self.seen = tuple(metas)
        self.picked = (meta, meta.txnid, steady_txnid, target)
        key = list(key)
        key[slot] = fmt.META_TXNID.pack(meta.txnid)
        self.key = tuple(key)
