"""acquisition/png.py: the fast decoder reads exactly what libpng reads, falls back to libpng for what
it does not handle, and refuses damaged files."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from acquisition import png


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hand_made_png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A greyscale PNG whose row r is written with PNG filter ``filters[r]`` (0 None, 1 Sub, 2 Up)."""
    h, w = pixels.shape
    bpp = pixels.dtype.itemsize
    rows = pixels.astype(">u2" if bpp == 2 else np.uint8).view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    out = []
    for r in range(h):
        if filters[r] == 0:
            f = rows[r]
        elif filters[r] == 1:
            f = rows[r] - np.concatenate([np.zeros(bpp, np.int32), rows[r, :-bpp]])
        else:
            f = rows[r] - (rows[r - 1] if r else 0)
        out.append(bytes([filters[r]]) + (f % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * bpp, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(out))) + _chunk(b"IEND", b"")


def frame(h: int, w: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    y, x = np.mgrid[:h, :w]
    img = (0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 5.0)) * top + rng.normal(0, top / 50, (h, w))
    return np.clip(img, 0, top).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(600, 800), (1, 5), (7, 1), (33, 65)])
def test_written_files_take_the_fast_path_and_match_libpng(dtype, shape, monkeypatch):
    img = frame(*shape, dtype)
    data = png.encode(img)
    monkeypatch.setattr(png, "_decode_general", lambda buf: pytest.fail("fell back to libpng"))
    out = png.decode(data)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(out, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_mixed_none_and_up_rows(dtype):
    img = frame(40, 31, dtype, seed=1)
    filters = [2, 2, 0, 2, 2, 2, 0, 0, 2] + [2, 0] * 15 + [2]
    np.testing.assert_array_equal(png.decode(hand_made_png(img, filters)), img)


@pytest.mark.parametrize("height", [1, 2, 3, 4, 5, 8, 15, 16, 17, 35, 36, 37, 99, 100, 101])
def test_up_rows_of_any_height_with_none_rows_anywhere(height):
    """The blocked prefix sum that undoes "Up": whole blocks, a remainder after the last block, runs that
    restart at "None" rows of any length (1 row, a block, less than a block)."""
    rng = np.random.default_rng(height)
    img = rng.integers(0, 256, (height, 9), dtype=np.uint8)
    for filters in ([2] * height, rng.choice([0, 2], size=height, p=[0.2, 0.8]).tolist()):
        np.testing.assert_array_equal(png.decode(hand_made_png(img, filters)), img)


def test_other_filters_go_to_libpng(monkeypatch):
    img = frame(50, 60, np.uint8, seed=2)
    calls = []
    real = png._decode_general
    monkeypatch.setattr(png, "_decode_general", lambda buf: calls.append(1) or real(buf))
    np.testing.assert_array_equal(png.decode(hand_made_png(img, [2] * 20 + [1] + [2] * 29)), img)  # one Sub row
    ok, default = cv2.imencode(".png", img)  # libpng's adaptive filters (Paeth etc.)
    np.testing.assert_array_equal(png.decode(default.tobytes()), img)
    ok, colour = cv2.imencode(".png", np.dstack([img] * 3))
    assert png.decode(colour.tobytes()).shape == (50, 60, 3)  # decoded; the caller rejects the shape
    assert len(calls) == 3


def test_damaged_files_are_errors():
    data = png.encode(frame(60, 80, np.uint8))
    i = data.index(b"IDAT")
    cases = {
        "not a PNG": b"GIF89a" + data[6:],
        "truncated": data[: len(data) // 2],
        "CRC mismatch": data[: i + 20] + bytes([data[i + 20] ^ 0xFF]) + data[i + 21:],
        "no IEND": data[: data.index(b"IEND") - 4],
    }
    for what, bad in cases.items():
        with pytest.raises(png.PNGError):
            png.decode(bad)
    # valid chunks around image data that is not a zlib stream, or holds too few rows
    rows = np.zeros((10, 9), np.uint8)  # filter byte + 8 pixels per row
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 11, 8, 0, 0, 0, 0))
    for idat, msg in ((b"not zlib at all", "corrupt image data"), (zlib.compress(rows.tobytes()), "header says")):
        bad = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
        with pytest.raises(png.PNGError, match=msg):
            png.decode(bad)


def _png(width: int, height: int, idat_payload: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(idat_payload, 9)) + chunk(b"IEND", b""))


def test_header_is_read_without_decoding_and_a_deflate_bomb_is_refused():
    bomb = _png(16, 16, b"\x00" * (200 << 20))  # 200 MiB of zeros behind a 16x16 header, ~200 KB on disk
    assert len(bomb) < 1 << 20
    assert png.header(bomb[:png.HEADER_BYTES]) == (16, 16, 8, 0)
    with pytest.raises(png.PNGError, match="image data is 273 bytes, the header says 272"):
        png.decode(bomb)  # inflates at most one byte past what the header promises
    with pytest.raises(png.PNGError, match="not a PNG"):
        png.header(b"GIF89a" + bytes(40))


def test_the_header_is_read_only_with_its_crc_intact(tmp_path):
    """png.header (what a file holds, without decoding it) checks the IHDR CRC: a flipped size byte is an error,
    not a frame of another size."""
    ok, data = cv2.imencode(".png", np.zeros((6, 9), np.uint8))
    data = bytearray(data.tobytes())
    assert png.header(bytes(data[:png.HEADER_BYTES])) == (9, 6, 8, 0)
    data[19] ^= 0x10  # the width's low byte
    with pytest.raises(png.PNGError, match="CRC mismatch in the IHDR chunk"):
        png.header(bytes(data[:png.HEADER_BYTES]))
