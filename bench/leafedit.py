#!/usr/bin/env python3
"""One insert into a leaf page, two ways: decode-edit-encode (what kvmm's write path
does: decode the page into lists, insert, encode the page) against editing a copy of
the page's bytes in place (bytearray splices of the key, the value and their lengths,
then the header and the checksum). Both give the same page; the script checks that.

    python bench/leafedit.py

prints the best of 5 runs of 20,000 inserts each, in µs per insert, and a CRC-32 of a
4 KiB page alone for scale. A transaction that edits a leaf k times pays one decode
and one encode against k splices.
"""

import random
import struct
import time
from bisect import bisect_left

from kvmm import format as fmt

rng = random.Random(3)
K = struct.Struct(">QQ")
keys = sorted(K.pack(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(24))
vals = [b"v" * 100 for _ in keys]
page = fmt.encode_leaf(5, 7, keys, vals, None, 4096)
newk = K.pack(rng.getrandbits(64), rng.getrandbits(64)); newv = b"w" * 100
def T(f, N=20000):
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(N): f()
        best = min(best, (time.perf_counter() - t) / N * 1e6)
    return best
n = len(keys)
def decode_edit_encode():
    ks, vs, _, _ = fmt.decode_leaf(page, 5, n)
    ks = list(ks); vs = list(vs)
    i = bisect_left(ks, newk); ks.insert(i, newk); vs.insert(i, newv)
    return fmt.encode_leaf(5, 8, ks, vs, None, 4096)
H = fmt.HEADER_SIZE
def splice():
    p = bytearray(page)
    lens = fmt._leaf_head(n).unpack_from(p, H)
    kat = H + 6 * n
    # find position: keys in place
    offs = [kat]
    for l in lens[:n]: offs.append(offs[-1] + l)
    lo, hi = 0, n
    while lo < hi:
        m = (lo + hi) // 2
        if p[offs[m]:offs[m+1]] < newk: lo = m + 1
        else: hi = m
    i = lo
    vat = offs[n] + sum(lens[n:n+i])
    p[vat:vat] = newv
    p[offs[i]:offs[i]] = newk
    p[H + 2*n + 4*i : H + 2*n + 4*i] = struct.pack("<I", len(newv))
    p[H + 2*i : H + 2*i] = struct.pack("<H", len(newk))
    del p[4096:]
    struct.pack_into("<H", p, 6, n + 1)
    struct.pack_into("<Q", p, 16, 8)
    struct.pack_into("<I", p, 0, fmt._crc32(memoryview(p)[4:]))
    return bytes(p)
a = decode_edit_encode(); b = splice()
assert a == b, (len(a), len(b))
print("decode-edit-encode us", round(T(decode_edit_encode), 2))
print("splice us", round(T(splice), 2))
def crc(): fmt._crc32(page)
print("crc alone", round(T(crc), 2))
