"""Tests for chunk frames: round trips, raw fallback and corruption detection."""

from __future__ import annotations

import random
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunker import CorruptChunkError, chunk_id, compress_chunk, decompress_chunk, frame_info
from chunker.compress import FLAG_RAW, FLAG_ZSTD, HEADER_SIZE

TEXT = b"".join(b"PTR,%d,%d.%03d,mV,PASS\n" % (i, i % 97, i % 1000) for i in range(5000))
NOISE = random.Random(1).randbytes(50_000)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(data=st.binary(max_size=5000), level=st.integers(1, 9))
def test_round_trip(data: bytes, level: int) -> None:
    blob = compress_chunk(data, level)
    assert decompress_chunk(blob) == data
    assert decompress_chunk(memoryview(blob), expected_id=chunk_id(data)) == data
    # never larger than raw + header
    assert len(blob) <= len(data) + HEADER_SIZE


def test_compressible_is_zstd_and_smaller() -> None:
    blob = compress_chunk(TEXT)
    assert frame_info(blob) == (FLAG_ZSTD, len(TEXT))
    assert len(blob) < len(TEXT) // 3
    assert decompress_chunk(blob) == TEXT


def test_incompressible_is_stored_raw() -> None:
    blob = compress_chunk(NOISE)
    assert frame_info(blob) == (FLAG_RAW, len(NOISE))
    assert blob[HEADER_SIZE:] == NOISE
    assert decompress_chunk(blob) == NOISE


def test_empty() -> None:
    blob = compress_chunk(b"")
    assert frame_info(blob) == (FLAG_RAW, 0)
    assert decompress_chunk(blob) == b""
    assert decompress_chunk(blob, expected_id=chunk_id(b"")) == b""


def test_memoryview_input() -> None:
    view = memoryview(TEXT)[100:5000]
    assert decompress_chunk(compress_chunk(view)) == bytes(view)


def test_level_is_honoured() -> None:
    data = TEXT * 4
    assert len(compress_chunk(data, 19)) <= len(compress_chunk(data, 1))


@pytest.mark.parametrize("data", [TEXT, NOISE, b"x"], ids=["zstd", "raw", "tiny"])
def test_every_truncation_is_detected(data: bytes) -> None:
    blob = compress_chunk(data)
    step = max(1, len(blob) // 500)
    for cut in [*range(0, len(blob), step), len(blob) - 1]:
        with pytest.raises(CorruptChunkError):
            decompress_chunk(blob[:cut])


@pytest.mark.parametrize("data", [TEXT, NOISE], ids=["zstd", "raw"])
def test_trailing_bytes_are_detected(data: bytes) -> None:
    with pytest.raises(CorruptChunkError):
        decompress_chunk(compress_chunk(data) + b"\0")


@pytest.mark.parametrize("flag", [0x02, 0x7F, 0xFF])
def test_unknown_flag(flag: int) -> None:
    blob = bytearray(compress_chunk(TEXT))
    blob[0] = flag
    with pytest.raises(CorruptChunkError, match="flag"):
        decompress_chunk(bytes(blob))


@pytest.mark.parametrize("delta", [-1, 1, 1 << 30])
@pytest.mark.parametrize("data", [TEXT, NOISE], ids=["zstd", "raw"])
def test_wrong_declared_size(data: bytes, delta: int) -> None:
    blob = compress_chunk(data)
    flag, size = frame_info(blob)
    bad = struct.pack("<BI", flag, size + delta) + blob[HEADER_SIZE:]
    with pytest.raises(CorruptChunkError):
        decompress_chunk(bad)


def test_bit_flips_in_zstd_payload_are_detected() -> None:
    """zstd's content checksum catches flips that still decode."""
    blob = compress_chunk(TEXT)
    rng = random.Random(3)
    for _ in range(300):
        i = rng.randrange(HEADER_SIZE, len(blob))
        bad = bytearray(blob)
        bad[i] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptChunkError):
            decompress_chunk(bytes(bad))


def test_raw_payload_corruption_needs_expected_id() -> None:
    blob = bytearray(compress_chunk(NOISE))
    blob[HEADER_SIZE + 10] ^= 0x40
    decompress_chunk(bytes(blob))  # undetectable without the id ...
    with pytest.raises(CorruptChunkError, match="id"):
        decompress_chunk(bytes(blob), expected_id=chunk_id(NOISE))  # ... caught with it


def test_wrong_expected_id() -> None:
    with pytest.raises(CorruptChunkError):
        decompress_chunk(compress_chunk(TEXT), expected_id=chunk_id(b"other"))


def test_corrupt_chunk_error_is_value_error() -> None:
    assert issubclass(CorruptChunkError, ValueError)


def test_threads_use_their_own_zstd_objects() -> None:
    """Correctness only: concurrent compress/decompress in threads round-trips."""
    inputs = [TEXT[i * 1000 :] + NOISE[: i * 100] for i in range(6)]
    errors: list[BaseException] = []

    def work(data: bytes) -> None:
        try:
            for level in (1, 3, 1, 3):
                assert decompress_chunk(compress_chunk(data, level)) == data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
