"""The on-disk format (kvmm/format.py): metas and pages encode and decode back to what
was encoded, and every kind of damage is refused with kvmm's own errors — never
``struct.error`` or ``IndexError`` (docs/reference.md sections 2 and 8)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmm
from kvmm import format as fmt

PAGE_SIZES = [4096, 16384, 65536]

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
db_records = st.tuples(u64, u64, u32, u32, u64, u64, u64, u64)


def _meta(page_size=4096, inline_free=(), **changes) -> fmt.Meta:
    fields = {
        "page_size": page_size,
        "txnid": 7,
        "next_pgno": 40,
        "flags": fmt.META_STEADY,
        "boot_id": bytes(range(16)),
        "main": (12, 7, 2, 0, 300, 1, 20, 4),
        "free": (30, 6, 1, 0, 9, 0, 1, 0),
        "inline_free": tuple(inline_free),
    }
    fields.update(changes)
    return fmt.Meta(**fields)


def _fields(meta: fmt.Meta) -> dict:
    return {
        name: tuple(value) if isinstance(value, (tuple, list)) else value
        for name in fmt.Meta.__slots__
        for value in [getattr(meta, name)]
    }


# --- metas ------------------------------------------------------------------------------


@given(
    page_size=st.sampled_from(PAGE_SIZES),
    txnid=u64,
    next_pgno=st.integers(fmt.NUM_METAS, fmt.MAX_FILE_SIZE // 65536),
    flags=u32,
    boot_id=st.binary(min_size=16, max_size=16),
    main=db_records,
    free=db_records,
    data=st.data(),
)
def test_meta_encode_decode_round_trips_every_field_and_the_inline_free_list(
    page_size, txnid, next_pgno, flags, boot_id, main, free, data
):
    n = data.draw(st.integers(0, fmt.inline_free_max(page_size)), label="inline pairs")
    inline = tuple(data.draw(st.lists(u64, min_size=2 * n, max_size=2 * n), label="pairs"))
    written = ()
    if flags & fmt.META_WRITTEN:  # a one-flush meta: the pages it wrote, with checksums
        w = data.draw(st.integers(0, fmt.written_room(page_size, n)), label="written pages")
        written = tuple(x for _ in range(w) for x in (data.draw(u64), data.draw(u32)))
    meta = fmt.Meta(page_size, txnid, next_pgno, flags, boot_id, main, free, inline,
                    written)
    encoded = fmt.encode_meta(meta)
    assert len(encoded) <= page_size
    # Decoded from a whole meta page, as the environment reads it.
    assert _fields(fmt.decode_meta(encoded.ljust(page_size, b"\0"))) == _fields(meta)


@pytest.mark.parametrize("next_pgno", [0, 1, fmt.MAX_FILE_SIZE // 4096 + 1, 1 << 63])
def test_a_meta_naming_a_page_count_no_file_holds_is_corrupted(next_pgno):
    encoded = fmt.encode_meta(_meta(next_pgno=next_pgno))
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_meta(encoded.ljust(4096, b"\0"))


def test_inline_free_list_longer_than_inline_free_max_is_refused_by_encode_meta():
    n = fmt.inline_free_max(4096) + 1
    with pytest.raises(AssertionError):
        fmt.encode_meta(_meta(inline_free=(1, 2) * n))


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_a_written_list_as_long_as_written_room_fits_in_one_meta_page(page_size):
    for n in (0, 1, fmt.inline_free_max(page_size) // 2, fmt.inline_free_max(page_size)):
        w = fmt.written_room(page_size, n)
        meta = _meta(page_size, inline_free=(3, 9) * n,
                     flags=fmt.META_STEADY | fmt.META_WRITTEN, written=(5, 0xFFFFFFFF) * w)
        encoded = fmt.encode_meta(meta)
        assert len(encoded) <= page_size
        assert fmt.decode_meta(encoded.ljust(page_size, b"\0")).written == meta.written
        if w < fmt.WRITTEN_MAX:  # the room is what is left of the page, no less
            assert len(encoded) + fmt.WRITTEN_ENTRY_SIZE > page_size
            with pytest.raises(AssertionError):
                fmt.encode_meta(_meta(page_size, inline_free=(3, 9) * n,
                                      flags=fmt.META_WRITTEN, written=(5, 1) * (w + 1)))


def test_a_written_list_longer_than_written_max_is_refused_both_ways():
    meta = _meta(flags=fmt.META_WRITTEN, written=(5, 1) * (fmt.WRITTEN_MAX + 1))
    with pytest.raises(AssertionError):
        fmt.encode_meta(meta)
    # A count past the maximum in a meta (with a valid CRC) is damage, not a long read.
    ok = fmt.encode_meta(_meta(flags=fmt.META_WRITTEN, written=(5, 1)))
    at = fmt.META_SIZE - fmt.META_CRC.size  # the count, after an empty inline list
    body = ok[:at] + fmt.WRITTEN_COUNT.pack(fmt.WRITTEN_MAX + 1) + ok[at + 4 : -4]
    page = body + fmt.META_CRC.pack(zlib.crc32(body))
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_meta(page.ljust(4096, b"\0"))


@pytest.mark.parametrize("pairs, written", [(0, 0), (1, 0), (5, 0), (0, 1), (3, 4)])
def test_a_flipped_byte_anywhere_after_the_version_fails_the_meta_checksum(pairs, written):
    """Every byte from the page size to the CRC itself is covered: damage to any of them
    is a CorruptedError (the meta is ignored), never a wrong decode or a struct.error."""
    flags = fmt.META_STEADY | (fmt.META_WRITTEN if written else 0)
    encoded = fmt.encode_meta(_meta(inline_free=tuple(range(1, 2 * pairs + 1)), flags=flags,
                                    written=tuple(range(10, 10 + 2 * written))))
    page = encoded.ljust(4096, b"\0")
    assert fmt.decode_meta(page).txnid == 7
    after_version = len(fmt.MAGIC) + 4
    for offset in range(after_version, len(encoded)):
        damaged = bytearray(page)
        damaged[offset] ^= 0x5A
        with pytest.raises(kvmm.CorruptedError):
            fmt.decode_meta(bytes(damaged))


def test_bad_magic_is_an_invalid_error():
    page = bytearray(fmt.encode_meta(_meta()).ljust(4096, b"\0"))
    page[0:8] = b"SQLite f"
    with pytest.raises(kvmm.InvalidError):
        fmt.decode_meta(bytes(page))


def test_bytes_too_short_for_a_meta_are_an_invalid_error():
    with pytest.raises(kvmm.InvalidError):
        fmt.decode_meta(fmt.MAGIC + bytes(20))


def _meta_of_version(version: int) -> bytes:
    """A meta of another format version, with a valid checksum of its own."""
    good = fmt.encode_meta(_meta())
    body = bytearray(good[: -fmt.META_CRC.size])
    struct.pack_into("<I", body, len(fmt.MAGIC), version)
    return bytes(body) + fmt.META_CRC.pack(zlib.crc32(body))


@pytest.mark.parametrize("version", [0, fmt.VERSION + 1, 2**32 - 1])
def test_another_format_version_is_a_version_mismatch_error(version):
    with pytest.raises(kvmm.VersionMismatchError):
        fmt.decode_meta(_meta_of_version(version).ljust(4096, b"\0"))


def test_a_meta_cut_short_inside_its_inline_free_list_is_a_corrupted_error():
    encoded = fmt.encode_meta(_meta(inline_free=tuple(range(40))))
    for end in (fmt.META_SIZE, len(encoded) - 20, len(encoded) - 1):
        with pytest.raises(kvmm.CorruptedError):
            fmt.decode_meta(encoded[:end])


def test_an_inline_free_count_past_what_a_page_holds_is_a_corrupted_error():
    page = bytearray(fmt.encode_meta(_meta()).ljust(4096, b"\0"))
    fmt.META_COUNT.pack_into(page, fmt.META.size, fmt.inline_free_max(4096) + 1)
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_meta(bytes(page))


def test_steady_is_the_meta_steady_flag():
    assert _meta(flags=fmt.META_STEADY).steady
    assert not _meta(flags=0).steady
    assert _meta(flags=fmt.META_STEADY | 0x100).steady


# --- pages ------------------------------------------------------------------------------

keys_strategy = st.lists(
    st.binary(min_size=1, max_size=40), min_size=1, max_size=30, unique=True
).map(sorted)


@given(
    page_size=st.sampled_from(PAGE_SIZES),
    pgno=st.integers(2, 2**40),
    txnid=st.integers(1, 2**63),
    keys=keys_strategy,
    data=st.data(),
)
def test_leaf_encode_check_header_decode_round_trips_with_flags_and_overflow_refs(
    page_size, pgno, txnid, keys, data
):
    n = len(keys)
    kinds = data.draw(
        st.lists(st.sampled_from([0, fmt.F_OVERFLOW, fmt.F_SUBDB]), min_size=n, max_size=n),
        label="flags",
    )
    vals = []
    for flag in kinds:
        if flag == fmt.F_OVERFLOW:
            vals.append(fmt.OVERFLOW_REF.pack(data.draw(u64), data.draw(u64), data.draw(u64)))
        elif flag == fmt.F_SUBDB:
            vals.append(fmt.encode_db_record(data.draw(db_records)))
        else:
            vals.append(data.draw(st.binary(max_size=60)))
    flags = kinds if any(kinds) else None
    page = fmt.encode_leaf(pgno, txnid, keys, vals, flags, page_size)
    assert len(page) == page_size
    kind, count, extra = fmt.check_header(page, pgno, txnid, fmt.LEAF)
    assert (kind, count, extra) == (fmt.LEAF, n, 0)
    got_keys, got_vals, got_flags, used = fmt.decode_leaf(page, pgno, count)
    assert got_keys == tuple(keys)
    assert got_vals == tuple(vals)
    assert got_flags == (None if flags is None else tuple(flags))
    assert used == 6 * n + sum(map(len, keys)) + sum(map(len, vals))
    for v, f in zip(got_vals, kinds):
        if f == fmt.F_OVERFLOW:
            assert fmt.decode_overflow_ref(v) == fmt.OVERFLOW_REF.unpack(v)
        elif f == fmt.F_SUBDB:
            assert fmt.encode_db_record(fmt.decode_db_record(v)) == v


def test_a_leaf_of_plain_values_decodes_with_flags_none():
    page = fmt.encode_leaf(9, 3, [b"a", b"b"], [b"1", b""], [0, 0], 4096)
    assert fmt.decode_leaf(page, 9, 2) == ((b"a", b"b"), (b"1", b""), None, 12 + 2 + 1)


@given(
    page_size=st.sampled_from(PAGE_SIZES),
    pgno=st.integers(2, 2**40),
    txnid=st.integers(1, 2**63),
    keys=keys_strategy,
    data=st.data(),
)
def test_branch_encode_check_header_decode_round_trips_with_key_0_stored_empty(
    page_size, pgno, txnid, keys, data
):
    n = len(keys)
    kids = data.draw(st.lists(st.integers(2, 2**48), min_size=n, max_size=n), label="kids")
    ktxn = data.draw(st.lists(st.integers(1, 2**63), min_size=n, max_size=n), label="ktxn")
    page = fmt.encode_branch(pgno, txnid, keys, kids, ktxn, page_size)
    assert fmt.check_header(page, pgno, txnid, fmt.BRANCH) == (fmt.BRANCH, n, 0)
    got_keys, got_kids, got_ktxn, used = fmt.decode_branch(page, pgno, n)
    assert got_keys == (b"", *keys[1:])
    assert got_kids == fmt.u64_array(kids) and got_kids.typecode == "Q"
    assert got_ktxn == fmt.u64_array(ktxn) and got_ktxn.typecode == "Q"
    assert used == 18 * n + sum(map(len, keys[1:]))


def test_overflow_header_and_value_check_and_a_changed_value_fails_the_crc():
    value = bytes(range(256)) * 40
    head, body = fmt.encode_overflow(17, 5, value)
    assert len(head) == fmt.HEADER_SIZE and body == value
    assert fmt.check_header(head, 17, 5, fmt.OVERFLOW) == (fmt.OVERFLOW, 0, len(value))
    assert fmt.overflow_crc_ok(head, value)
    damaged = bytearray(value)
    damaged[5000] ^= 1
    assert not fmt.overflow_crc_ok(head, bytes(damaged))
    assert fmt.overflow_pages(len(value), 4096) == (32 + len(value) + 4095) // 4096 == 3


def test_overflow_pages_count_the_header_in_the_first_page():
    assert fmt.overflow_pages(4096 - 32, 4096) == 1
    assert fmt.overflow_pages(4096 - 31, 4096) == 2
    assert fmt.overflow_pages(0, 4096) == 1


def test_a_node_that_does_not_fit_its_page_is_refused_at_encode():
    with pytest.raises(AssertionError):
        fmt.encode_leaf(2, 1, [b"k"], [b"v" * 4096], None, 4096)


def _leaf(pgno=11, txnid=4) -> bytes:
    return fmt.encode_leaf(pgno, txnid, [b"apple", b"pear"], [b"red", b"green"], None, 4096)


def test_a_page_whose_pgno_disagrees_with_the_reference_is_a_corrupted_error():
    with pytest.raises(kvmm.CorruptedError, match="page 12"):
        fmt.check_header(_leaf(pgno=11), 12, 4)


def test_a_page_whose_txnid_disagrees_with_the_reference_is_a_corrupted_error():
    with pytest.raises(kvmm.CorruptedError, match="page 11"):
        fmt.check_header(_leaf(txnid=4), 11, 5)
    # txnid 0 in the reference skips that check (and only that one).
    assert fmt.check_header(_leaf(txnid=4), 11, 0)[0] == fmt.LEAF


def test_a_page_of_another_kind_than_expected_is_a_corrupted_error():
    with pytest.raises(kvmm.CorruptedError):
        fmt.check_header(_leaf(), 11, 4, fmt.BRANCH)


def test_a_flipped_byte_anywhere_in_a_leaf_page_is_a_corrupted_error():
    page = _leaf()
    for offset in list(range(64)) + [1000, 4095]:
        damaged = bytearray(page)
        damaged[offset] ^= 0x01
        with pytest.raises(kvmm.CorruptedError):
            fmt.check_header(bytes(damaged), 11, 4)


@pytest.mark.parametrize("length", [0, 3, 20, 31, 32, 40, 200, 4095])
def test_a_truncated_page_is_a_corrupted_error_from_check_header(length):
    with pytest.raises(kvmm.CorruptedError):
        fmt.check_header(_leaf()[:length], 11, 4)


@pytest.mark.parametrize("length", [32, 40, 60])
def test_decode_leaf_of_a_truncated_page_is_a_corrupted_error(length):
    """decode_leaf promises CorruptedError when the entries run past the page."""
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_leaf(_leaf()[:length], 11, 2)


@pytest.mark.parametrize("length", [32, 40, 60])
def test_decode_branch_of_a_truncated_page_is_a_corrupted_error(length):
    page = fmt.encode_branch(11, 4, [b"", b"m"], [3, 4], [1, 2], 4096)
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_branch(page[:length], 11, 2)


def test_decode_leaf_with_lengths_running_past_the_page_is_a_corrupted_error():
    # Two entries whose stored key length claims 5000 bytes of a 4096-byte page.
    page = bytearray(_leaf())
    struct.pack_into("<H", page, fmt.HEADER_SIZE, 5000)
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_leaf(bytes(page), 11, 2)


def test_decode_leaf_with_a_count_past_what_the_page_holds_is_a_corrupted_error():
    """A count whose length table alone is larger than the page (a header that passes
    its checks only by a CRC collision or a bad writer) must still be a CorruptedError."""
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_leaf(_leaf(), 11, 1000)


def test_bad_overflow_ref_db_record_and_free_record_lengths_are_corrupted_errors():
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_overflow_ref(b"\0" * 23)
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_db_record(b"\0" * (fmt.DB_RECORD_SIZE + 1))
    with pytest.raises(kvmm.CorruptedError):
        fmt.decode_pgnos(b"\0" * 12)
    assert fmt.decode_pgnos(fmt.encode_pgnos([3, 2**40, 9])) == (3, 2**40, 9)


@pytest.mark.parametrize("page_size", [0, 2048, 4095, 4096 + 512, 131072])
def test_page_sizes_outside_powers_of_two_4096_to_65536_are_not_valid(page_size):
    assert not fmt.valid_page_size(page_size)


@pytest.mark.parametrize("page_size", PAGE_SIZES + [8192, 32768])
def test_max_entry_size_is_half_a_pages_capacity(page_size):
    assert fmt.valid_page_size(page_size)
    assert fmt.max_entry_size(page_size) == (page_size - fmt.HEADER_SIZE) // 2
    # Two maximal entries always fit in one page, so a split of an overfull page works.
    assert 2 * fmt.max_entry_size(page_size) <= fmt.page_capacity(page_size)


def test_a_layout_decoded_again_takes_the_compiled_path_and_gives_the_same_entries():
    """decode_leaf compiles one Struct per layout of lengths seen twice: the first,
    second and later decodes of a layout must agree, and a page cut short must be a
    CorruptedError on the compiled path too."""
    keys = [b"k%03d" % i for i in range(40)]
    vals = [bytes([i]) * (i % 7) for i in range(40)]
    page = fmt.encode_leaf(21, 3, keys, vals, None, 4096)
    decoded = [fmt.decode_leaf(page, 21, 40) for _ in range(3)]
    assert decoded[0] == decoded[1] == decoded[2]
    assert decoded[2][:2] == (tuple(keys), tuple(vals))
    used = decoded[0][3]
    with pytest.raises(kvmm.CorruptedError, match="page 21"):
        fmt.decode_leaf(page[: fmt.HEADER_SIZE + used - 1], 21, 40)
    branch = fmt.encode_branch(22, 3, [b""] + keys[1:], list(range(2, 42)), [1] * 40, 4096)
    branches = [fmt.decode_branch(branch, 22, 40) for _ in range(3)]
    assert branches[0] == branches[1] == branches[2]
    assert list(branches[0][1]) == list(range(2, 42))


def test_pages_sharing_a_cached_layout_decode_to_their_own_entries_and_flags():
    """decode_leaf and decode_branch find a compiled layout by the bytes of a page's
    lengths (and value words): pages alike in those but not in their entries, their
    flags, or their count must each decode to what was encoded."""
    def leaf(tag, flags=None, n=12):
        keys = [b"%c%02d" % (tag, i) for i in range(n)]
        vals = [bytes([tag]) * 9 for _ in range(n)]
        return keys, vals, fmt.encode_leaf(30, 2, keys, vals, flags, 4096)

    for tag in b"abc":
        keys, vals, page = leaf(tag)
        assert fmt.decode_leaf(page, 30, 12)[:3] == (tuple(keys), tuple(vals), None)
    flags = [fmt.F_SUBDB if i % 3 == 0 else 0 for i in range(12)]
    keys, vals, page = leaf(ord("d"), flags)
    for _ in range(3):
        assert fmt.decode_leaf(page, 30, 12)[:3] == (tuple(keys), tuple(vals), tuple(flags))
    keys, vals, page = leaf(ord("e"))
    assert fmt.decode_leaf(page, 30, 12)[:3] == (tuple(keys), tuple(vals), None)
    # Fewer entries, lengths alike: the count picks the layout, not a prefix of it.
    keys, vals, page = leaf(ord("f"), n=6)
    assert fmt.decode_leaf(page, 30, 6)[:2] == (tuple(keys), tuple(vals))
    # A page cut inside its entries fails on the cached layout too.
    with pytest.raises(kvmm.CorruptedError, match="page 30"):
        fmt.decode_leaf(leaf(ord("g"))[2][:fmt.HEADER_SIZE + 6 * 12 + 20], 30, 12)
    for tag in b"xyz":
        keys = [b""] + [b"%c%03d" % (tag, i) for i in range(1, 30)]
        page = fmt.encode_branch(31, 2, keys, list(range(40, 70)), [tag] * 30, 4096)
        got = fmt.decode_branch(page, 31, 30)
        assert got[0] == tuple(keys) and list(got[2]) == [tag] * 30
    with pytest.raises(kvmm.CorruptedError, match="page 31"):
        fmt.decode_branch(page[: fmt.HEADER_SIZE + 18 * 30 + 10], 31, 30)


def test_compiled_layouts_stay_within_their_field_budget_and_still_decode(monkeypatch):
    """Each compiled layout costs memory per field: the caches are emptied before the
    fields compiled since pass _BODY_FIELDS, and decoding goes on right."""
    monkeypatch.setattr(fmt, "_BODY_FIELDS", 500)
    fmt._forget_layouts()
    for n in range(20, 80):
        keys = [b"%03d" % i for i in range(n)]
        vals = [b"v" * (n % 9)] * n
        page = fmt.encode_leaf(40, 5, keys, vals, None, 4096)
        for _ in range(3):
            assert fmt.decode_leaf(page, 40, n)[:2] == (tuple(keys), tuple(vals))
        assert 0 < fmt._body_fields <= 500
    assert len(fmt._bodies) < 20  # emptied on the way


def test_free_records_sort_normal_ones_by_txnid_then_weak_ones_by_txnid():
    """freelist._load relies on it: the reusable records of each kind are a prefix."""
    keys = [fmt.FREE_KEY.pack(tag, seq) for tag, seq in
            [(7 | fmt.WEAK_BORN, 0), (9, 1), (3 | fmt.WEAK_BORN, 2), (9, 0), (12, 0)]]
    tags = [fmt.FREE_KEY.unpack(k)[0] for k in sorted(keys)]
    assert [(t >= fmt.WEAK_BORN, t & ~fmt.WEAK_BORN) for t in tags] == [
        (False, 9), (False, 9), (False, 12), (True, 3), (True, 7)]


@pytest.mark.parametrize("flagged", [False, True])
def test_patch_leaf_equals_encoding_the_leaf_with_the_changed_values(flagged):
    """Values replaced in place with values of the same length, among entries with
    flags or without (an overflow reference replaced by another one)."""
    n = 12
    keys = [b"key%03d" % i for i in range(n)]
    vals = [bytes([i]) * (5 + 3 * i) for i in range(n)]
    flags = [fmt.F_OVERFLOW if i % 4 == 1 else 0 for i in range(n)] if flagged else None
    src = fmt.encode_leaf(40, 7, keys, vals, flags, 4096)
    changed = {1, 6, 11}
    new = list(vals)
    for i in changed:
        new[i] = bytes([200 + i]) * len(vals[i])
    page = fmt.patch_leaf(src, 41, 8, keys, new, changed)
    assert bytes(page) == fmt.encode_leaf(41, 8, keys, new, flags, 4096)
    assert fmt.check_header(bytes(page), 41, 8, fmt.LEAF) == (fmt.LEAF, n, 0)
