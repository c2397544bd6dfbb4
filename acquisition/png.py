"""Greyscale PNG for raw frames: the encoder settings chdl writes with, and a decoder that reads those
files about twice as fast as libpng (everything else goes to OpenCV's libpng decoder).

Why a decoder of our own: decoding the raw PNGs is the largest single cost of ``chdl curate``
(docs/curation.md). A PNG is zlib-deflated rows, each row prefixed by a filter byte. libpng inflates
with the system zlib and then undoes the filter row by row. Here the IDAT stream is inflated with
ISA-L (Intel's Intelligent Storage Acceleration library, through python-isal: a zlib-compatible
inflate in hand-tuned assembly, 2.2x zlib-ng's speed and 2.9x zlib's on these files) and the "Up"
filter, which is what :data:`PNG_PARAMS` writes, is undone for the whole image at once: an "Up" row
is the byte-wise sum (mod 256) of all rows above it since the last unfiltered row, i.e. a prefix sum
down the columns, computed block-wise in about 2 sqrt(H) vectorised additions (:func:`_undo_up`).
Inflate is lossless: every implementation gives the same bytes, and a damaged stream is an error in each.

:func:`decode` takes the fast path only for what it fully understands (8/16-bit greyscale,
non-interlaced, every row filtered "None" or "Up") and hands any other PNG to OpenCV, so every valid
greyscale PNG reads. Both paths return identical pixels (tests/acquisition/test_png.py). Chunk CRCs
of IHDR and IDAT are checked, and the inflated size must match the header exactly, so a truncated or
corrupt file is an error, never a silently wrong frame.
"""

from __future__ import annotations

import math
import struct

import cv2
import numpy as np
from isal import isal_zlib

# Encoder settings: every row filtered with "Up" (difference to the row above), deflate with zlib's
# run-length strategy (LZ77 matches at distance 1 only, then Huffman coding). Sensor noise leaves
# general LZ77 almost nothing to match, while flat regions (a saturated area, a dark frame, a test
# pattern) are runs. "Up" is also the cheapest filter to undo (no dependency along a row, unlike
# Sub/Average/Paeth). Measured by tools/bench_png.py (2026-11-24, this 2-core machine), 800x600
# frames, encode / decode with :func:`decode` / size as a fraction of the raw pixels:
#
#   frames                 cv2 default (adaptive, level 1)   Up + Huffman only     Up + RLE (chosen)
#   simulator, Mono8       11.3 / 6.5 ms / 0.529             6.3 / 2.8 ms / 0.523  6.2 / 2.1 ms / 0.521
#   simulator, Mono16      37.3 / 15.5 ms / 0.849            14.1 / 4.7 ms / 0.854 14.3 / 4.7 ms / 0.854
#   viky test pattern      3.4 / 0.7 ms / 0.0082             4.7 / 1.9 ms / 0.127  1.0 / 0.4 ms / 0.0030
#
# (decode with zlib-ng's inflate. With ISA-L's, 2026-11-30 under load 6.4, Up + RLE: Mono8 2.75 -> 1.26 ms,
# Mono16 6.07 -> 4.32 ms, docs/raw-format.md.)
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE, _FILTER_UP = 0, 2


class PNGError(ValueError):
    """The bytes are not a readable PNG (the message says what is wrong)."""


def encode(pixels: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 or uint16 frame, with :data:`PNG_PARAMS`."""
    ok, buf = cv2.imencode(".png", pixels, PNG_PARAMS)
    if not ok:
        raise PNGError("PNG encoding failed")
    return buf.tobytes()


def decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Pixels of a PNG: (H, W) uint8/uint16 for greyscale; other colour types as OpenCV reads them
    with IMREAD_UNCHANGED (callers check the shape). Raises PNGError for a truncated or corrupt file."""
    buf = memoryview(np.ascontiguousarray(data, np.uint8) if isinstance(data, np.ndarray) else data).cast("B")
    header, idat = _chunks(buf)
    width, height, depth, colour, _, _, interlace = header
    if colour != 0 or depth not in (8, 16) or interlace != 0:
        return _decode_general(buf)
    bpp = depth // 8
    stride = 1 + width * bpp
    try:  # inflate at most one byte more than the header promises: a deflate bomb cannot exhaust memory
        raw = isal_zlib.decompressobj().decompress(idat, height * stride + 1)
    except isal_zlib.error as e:
        raise PNGError(f"corrupt image data ({e})") from None
    if len(raw) != height * stride:
        raise PNGError(f"image data is {len(raw)} bytes, the header says {height * stride}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    filters = rows[:, 0]
    if np.any((filters != _FILTER_NONE) & (filters != _FILTER_UP)):
        return _decode_general(buf)  # Sub/Average/Paeth rows: libpng
    pixels = _undo_up(rows[:, 1:], filters)
    if bpp == 1:
        return pixels
    return pixels.view(">u2").astype(np.uint16)


HEADER_BYTES = 33  # signature + the IHDR chunk, which a PNG must start with


def header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the first :data:`HEADER_BYTES` bytes of a PNG:
    what a file holds, read without decoding it. PNGError if they are not a PNG's start."""
    if len(data) < HEADER_BYTES or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        raise PNGError("not a PNG (bad signature or no IHDR chunk first)")
    if isal_zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise PNGError("CRC mismatch in the IHDR chunk")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    return width, height, depth, colour


def _chunks(buf: memoryview) -> tuple[tuple, bytes]:
    """(IHDR fields, concatenated IDAT data); checks the signature, IHDR/IDAT CRCs and that IEND is there."""
    if len(buf) < 8 or bytes(buf[:8]) != _SIGNATURE:
        raise PNGError("not a PNG (bad signature)")
    pos, header, idat = 8, None, []
    while True:
        if pos + 8 > len(buf):
            raise PNGError("truncated (no IEND chunk)")
        length, kind = struct.unpack_from(">I4s", buf, pos)
        end = pos + 8 + length
        if end + 4 > len(buf):
            raise PNGError(f"truncated inside the {kind.decode('latin-1')} chunk")
        if kind in (b"IHDR", b"IDAT"):
            (crc,) = struct.unpack_from(">I", buf, end)
            if isal_zlib.crc32(buf[pos + 4:end]) != crc:
                raise PNGError(f"CRC mismatch in the {kind.decode()} chunk")
            if kind == b"IHDR":
                if length != 13:
                    raise PNGError("malformed IHDR chunk")
                header = struct.unpack_from(">IIBBBBB", buf, pos + 8)
            else:
                idat.append(buf[pos + 8:end])
        elif kind == b"IEND":
            break
        pos = end + 4
    if header is None or not idat:
        raise PNGError("no IHDR or no image data")
    return header, b"".join(idat)


def _undo_up(px: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Undo the "Up" filter: each Up row plus the reconstructed row above (mod 256); a "None" row (and
    the first row) starts afresh. A prefix sum down the columns within each run of rows
    (:func:`_column_prefix_sum`), into a new contiguous (H, row bytes) array."""
    out = np.empty(px.shape, px.dtype)
    starts = np.flatnonzero(filters == _FILTER_NONE).tolist()
    for s, e in zip([0] + starts, starts + [len(out)]):
        if e > s:
            _column_prefix_sum(px[s:e], out[s:e])
    return out


def _column_prefix_sum(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[i] = src[0] + ... + src[i] (uint8, mod 256) for the (n, w) rows of ``src``, blocked: the rows
    are cut into about sqrt(n) blocks of b rows, the prefix sums within every block are taken at once (b
    additions, each over a row of every block), the block totals are summed up (n / b additions of one
    row) and each block's carry is added to its rows (one addition). About 2 sqrt(n) NumPy calls over
    ~3 passes of the image, against log2(n) passes plus copies for a Hillis-Steele scan (0.23 vs 0.37 ms
    on 800x600) and n calls for a row loop (0.66 ms)."""
    n = len(src)
    b = max(1, math.isqrt(n))
    nb = n // b
    body, body_src = dst[:nb * b].reshape(nb, b, -1), src[:nb * b].reshape(nb, b, -1)
    body[:, 0] = body_src[:, 0]
    for i in range(1, b):
        np.add(body_src[:, i], body[:, i - 1], out=body[:, i])
    last = body[:, -1]  # each block's total, then (summed up) the prefix sum at each block's end
    for j in range(1, nb):
        last[j] += last[j - 1]
    body[1:, :-1] += last[:-1, None, :]
    for i in range(nb * b, n):  # the n - nb * b rows after the last whole block
        np.add(src[i], dst[i - 1], out=dst[i])


def _decode_general(buf: memoryview) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise PNGError("OpenCV could not decode it")
    return pixels
