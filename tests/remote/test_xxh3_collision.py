"""Two tools upload different chunks with the same xxh3-128 id: each restores its own bytes.

XXH3 (128-bit, default secret) mixes each 8-byte lane of a 64-byte stripe as
`acc[i ^ 1] += lane` and `acc[i] += lo32(lane ^ key) * hi32(lane ^ key)`, where `key` is the
secret's word for that lane. When a lane's low 32 bits equal the key's low 32 bits, the
product is zero whatever the lane's high half, so the lane enters the hash only through the
plain sum. Bytes 0-7 (stripe 0, secret word 0) and 64-71 (stripe 1, secret word 1) are both
lane 0 and feed the same accumulator within the first block; two chunks whose high halves
there add up to the same sum therefore hash alike. This is why the server keys shared
content by SHA-256 it computes itself, never by the xxh3 id a tool announces.
"""

from __future__ import annotations

import hashlib
import random
import struct

import xxhash

from chunker import compress_chunk
from remote.backend import Backend
from remote.http_backend import HttpBackend
from remote.memory_backend import MemoryBackend, MemoryServer
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, ServerProcess

# The first 16 bytes of XXH3's public default secret (kSecret), read as two LE words.
SECRET_WORD_0, SECRET_WORD_1 = struct.unpack(
    "<QQ", bytes.fromhex("b8fe6c3923a44bbe7c01812cf721ad1c")
)
SIZE = 4 << 20


def colliding_pair() -> tuple[bytes, bytes]:
    """Two 4 MiB chunks differing only in bytes 0-7 and 64-71, with equal xxh3-128."""
    base = bytearray(random.Random(10).randbytes(SIZE))

    def variant(high_0: int, high_1: int) -> bytes:
        out = bytearray(base)
        out[0:8] = struct.pack("<Q", (high_0 << 32) | (SECRET_WORD_0 & 0xFFFFFFFF))
        out[64:72] = struct.pack("<Q", (high_1 << 32) | (SECRET_WORD_1 & 0xFFFFFFFF))
        return bytes(out)

    return variant(0x1234, 0x5678), variant(0x1235, 0x5677)  # same sum of high halves


def test_the_pair_collides_and_differs() -> None:
    a, b = colliding_pair()
    assert a != b and len(a) == len(b) == SIZE
    assert [i for i in range(SIZE) if a[i] != b[i]] == [4, 68]  # within bytes 0-7 and 64-71
    assert xxhash.xxh3_128_hexdigest(a) == xxhash.xxh3_128_hexdigest(b)
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()


def record(plain: bytes) -> tuple[str, str, bytes]:
    return (
        xxhash.xxh3_128_hexdigest(plain),
        hashlib.sha256(plain).hexdigest(),
        compress_chunk(plain),
    )


def check_tools(tool_a: Backend, tool_b: Backend, tool_c: Backend) -> None:
    plain_a, plain_b = colliding_pair()
    rec_a, rec_b = record(plain_a), record(plain_b)
    id = rec_a[0]
    assert rec_b[0] == id and rec_a[1] != rec_b[1]

    assert tool_a.missing([(id, rec_a[1])]) == [id]
    assert tool_a.upload([rec_a]) == {id: "created"}
    # Tool B's content is not claimable under A's blob: its digest differs.
    assert tool_b.missing([(id, rec_b[1])]) == [id]
    assert tool_b.upload([rec_b]) == {id: "created"}

    assert tool_a.load(id) == rec_a[2]
    assert tool_b.load(id) == rec_b[2]
    assert [f for _, f in tool_a.load_many([id])] == [rec_a[2]]
    assert [f for _, f in tool_b.load_many([id])] == [rec_b[2]]

    # A third tool claiming by digest gets exactly what its digest says.
    assert tool_c.missing([(id, rec_b[1])]) == []
    assert tool_c.load(id) == rec_b[2]
    # Uploading A's content under the id it already maps changes nothing for tool C.
    assert tool_c.upload([rec_a]) == {id: "exists"}
    assert tool_c.load(id) == rec_b[2]


def test_collision_against_a_real_server(fresh_server: ServerProcess) -> None:
    made = [
        HttpBackend([fresh_server.url], ns, ADMIN, retrier=Retrier(NO_RETRY))
        for ns in ("tool-a", "tool-b", "tool-c")
    ]
    try:
        check_tools(*made)
        stats = [b.stats() for b in made]
        assert [s["objects"] for s in stats] == [1, 1, 1]
    finally:
        for b in made:
            b.close()
    blobs = [p for p in (fresh_server.data / "pool").rglob("*") if p.is_file()]
    assert len(blobs) == 2  # one per distinct content


def test_collision_against_memory_backend() -> None:
    server = MemoryServer()
    check_tools(
        MemoryBackend(server=server, namespace="tool-a"),
        MemoryBackend(server=server, namespace="tool-b"),
        MemoryBackend(server=server, namespace="tool-c"),
    )
    assert len(server.pool) == 2
