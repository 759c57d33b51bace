"""The HTTP front of the server: a framework-free ASGI app over the blocking `DiskStore`.

Routing, auth, limits and status codes live here; the store calls run in a thread pool so
the event loop keeps serving other connections while one request hashes or fsyncs. The ASGI
server underneath (uvicorn, see server_main and docs/design.md for the measured choice)
only parses HTTP and does TLS, so the app also runs under hypercorn or granian.

Contract: docs/remote-api.md. Every error is a JSON body `{"error": <code>, "message":
<text>}`. Names come from `raw_path` and are never percent-decoded: a valid name needs no
escapes, so an escaped one fails validation before it can reach a path. Bodies are
streamed: an upload batch (up to 256 MiB) is parsed record by record and never held
whole; at most one frame per request is in memory, because it must be decoded and hashed
before it may be stored. A refused body is drained (up to DRAIN_LIMIT) before the answer,
so the client reads our error and not a connection reset; a larger one closes the
connection after the answer.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

from remote import auth, fleet, hashing, names, objfile, prune, prune_api
from remote.frames import is_digest
from remote.metrics import ServerMetrics
from remote.store import Accepted, DiskStore

log = logging.getLogger(__name__)

API_VERSION = "v2"
SERVER_VERSION = "dpmsfs-server/0.2"
DEFAULT_MAX_OBJECT_SIZE = 64 << 20
MAX_UPLOAD_BODY = 256 << 20
MAX_REF_SIZE = 1 << 20
MAX_JSON_SIZE = 16 << 20
MAX_MISSING = 10_000
MAX_DOWNLOAD = 1_000
MAX_SUSPECT = 64  # ids per objects:suspect (each is re-hashed in full)
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1_000
DRAIN_LIMIT = 256 << 20  # refused bodies up to this size are read and dropped, not reset
RECORD = struct.Struct(">16s32sI")  # id, sha256, frame length: upload and download records
ABSENT = 0xFFFFFFFF  # download record length of an id the server lacks
_DISK_FULL_WINERRORS = (39, 112)  # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
SEND_GROUP = 8  # objects:download reads this many frames per store call

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")


class ApiError(Exception):
    """An error answer: HTTP status, short machine code, one-line message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ClientGone(Exception):
    """The client disconnected or sent fewer body bytes than it announced."""


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc)
    if not isinstance(exc, OSError):
        return False
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        getattr(exc, "winerror", None) in _DISK_FULL_WINERRORS
    )


class Body:
    """The request body as a stream of exact reads, over ASGI `http.request` messages."""

    def __init__(self, receive: Receive, length: int | None) -> None:
        self._receive = receive
        self.length = length  # declared Content-Length (None: none declared)
        self._buf = bytearray()
        self._more = True
        self.consumed = 0

    @property
    def done(self) -> bool:
        return not self._more and not self._buf

    async def _pull(self) -> None:
        msg = await self._receive()
        if msg["type"] == "http.disconnect":
            self._more = False
            raise ClientGone("client disconnected")
        self._buf += msg.get("body", b"")
        self._more = bool(msg.get("more_body", False))

    async def read(self, n: int) -> bytes:
        """Exactly `n` bytes, or ClientGone if the body ends first."""
        while len(self._buf) < n and self._more:
            await self._pull()
        if len(self._buf) < n:
            raise ClientGone(f"body ended {n - len(self._buf)} bytes early")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.consumed += n
        return out

    async def read_all(self) -> bytes:
        assert self.length is not None
        return await self.read(self.length)

    async def drain(self, limit: int) -> bool:
        """Read and drop the rest (if at most `limit` bytes are declared); True if done."""
        if self.done:
            return True
        if self.length is None or self.length - self.consumed > limit:
            return False
        try:
            while self._more:
                self._buf.clear()
                await self._pull()
        except ClientGone:
            return False
        self._buf.clear()
        return True


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Body
    close: bool = False  # answer with Connection: close (unread body, broken stream)
    scheme: str = "http"
    answered: bool = field(default=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class App:
    """The ASGI application. `replication` (optional) reports the peer section of health."""

    def __init__(
        self,
        store: DiskStore,
        tokens: auth.TokenTable,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
        *,
        workers: int = 16,
        replication: Callable[[], dict[str, Any] | None] | None = None,
        metrics: ServerMetrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.max_object_size = max_object_size
        self.replication = replication
        # Requests are observed only if `metrics` is given; `/metrics` is answered only on
        # the listener whose port is `metrics_port` (and nothing else is answered there).
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
        self.fleet = fleet.FleetState(store)
        self.sessions = fleet.Sessions()
        # online prune (admin): one at a time, in its own thread so uploads keep flowing
        self.prune_min_grace_s = 2 * store.touch_resolution_s
        self._prune_lock = threading.Lock()
        self._pruner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prune")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self._pruner.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- ASGI entry ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.metrics_port is not None and _local_port(scope) == self.metrics_port:
            await self._serve_metrics(scope, receive, send)
            return
        if self.metrics is None:
            await self._answer(scope, receive, send)
            return
        started = time.monotonic()
        status = [0]

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._answer(scope, receive, observed_send)
        finally:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8")
            endpoint = endpoint_template(raw.decode("latin-1").partition("?")[0])
            # status 0: the client went away before any answer started
            self.metrics.observe_request(
                endpoint, scope["method"], status[0], time.monotonic() - started
            )

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The metrics listener: `GET /metrics` without a token, 404 for anything else."""
        req = Request(scope["method"], scope["path"], {}, {}, Body(receive, 0))
        if self.metrics is None or scope["path"] != "/metrics":
            await self._send_json(req, send, 404, {"error": "not_found", "message": "unknown path"})
            return
        if req.method not in ("GET", "HEAD"):
            await self._send_json(
                req,
                send,
                405,
                {"error": "method_not_allowed", "message": f"{req.method} not allowed"},
            )
            return
        ctype, body = await self._run(self.metrics.render)
        await self._send_bytes(req, send, 200, body, ctype)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            headers[raw_name.decode("latin-1").lower()] = raw_value.decode("latin-1")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1").partition("?")[0]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        length = _declared_length(headers)
        req = Request(scope["method"], path, query, headers, Body(receive, length))
        req.scheme = str(scope.get("scheme", "http"))
        try:
            await self._route(req, send)
        except ApiError as exc:
            await self._fail(req, send, exc.status, exc.code, exc.message, exc.headers)
        except ClientGone as exc:
            log.info("%s %s: request aborted: %s", req.method, req.path, exc)
        except Exception as exc:
            if is_disk_full(exc):
                log.error("disk full on %s %s: %s", req.method, req.path, exc)
                await self._fail(req, send, 507, "insufficient_storage", "disk full")
            elif isinstance(exc, OSError):
                log.exception("I/O error on %s %s", req.method, req.path)
                await self._fail(req, send, 500, "io_error", str(exc.strerror or exc))
            else:
                log.exception("internal error on %s %s", req.method, req.path)
                await self._fail(req, send, 500, "internal", "internal server error")

    async def _fail(
        self,
        req: Request,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if req.answered:
            return  # a streamed answer broke off: the client sees a short body
        if not await req.body.drain(DRAIN_LIMIT):
            req.close = True
        await self._send_json(req, send, status, {"error": code, "message": message}, headers)

    # -- answers -------------------------------------------------------------------------

    async def _send_json(
        self, req: Request, send: Send, status: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode("utf-8")
        await self._send_bytes(req, send, status, body, "application/json", headers)

    async def _send_bytes(
        self,
        req: Request,
        send: Send,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not req.body.done and not req.close:
            req.close = not await req.body.drain(DRAIN_LIMIT)
        out = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER_VERSION.encode()),
        ]
        out += [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
        if req.close:
            out.append((b"connection", b"close"))
        req.answered = True
        await send({"type": "http.response.start", "status": status, "headers": out})
        payload = b"" if req.method == "HEAD" else body
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    # -- request parts -------------------------------------------------------------------

    def _grant(self, req: Request) -> auth.Grant:
        value = req.header("authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"}
            )
        grant = self.tokens.lookup(token.strip())
        if grant is None:
            raise ApiError(401, "unauthorized", "unknown token", {"WWW-Authenticate": "Bearer"})
        return grant

    def _length(self, req: Request, limit: int) -> int:
        if req.header("transfer-encoding") is not None:
            req.close = True
            raise ApiError(411, "length_required", "chunked bodies are not accepted")
        raw = req.header("content-length")
        if raw is None:
            raise ApiError(411, "length_required", "Content-Length is required")
        if req.body.length is None:
            req.close = True
            raise ApiError(400, "bad_length", "Content-Length is not a number")
        if req.body.length > limit:
            raise ApiError(413, "too_large", f"body of {req.body.length} bytes exceeds {limit}")
        return req.body.length

    async def _json_body(self, req: Request) -> Any:
        self._length(req, MAX_JSON_SIZE)
        raw = await req.body.read_all()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc

    async def _string_list(
        self,
        req: Request,
        key: str,
        limit: int,
        valid: Callable[[str], bool],
        error: str,
        what: str,
    ) -> list[str]:
        """The body ``{key: [strings]}``, at most ``limit``, each passing ``valid``."""
        doc = await self._json_body(req)
        items = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ApiError(400, "bad_json", f'body must be {{"{key}": [...]}}')
        if len(items) > limit:
            raise ApiError(413, "too_large", f"at most {limit} {key} per request")
        bad = [i for i in items if not valid(i)]
        if bad:
            raise ApiError(400, error, f"invalid {what}: {bad[:5]!r}")
        return items

    async def _id_list(self, req: Request, limit: int) -> list[str]:
        return await self._string_list(req, "ids", limit, names.is_key, "bad_id", "object ids")

    # -- routing -------------------------------------------------------------------------

    async def _route(self, req: Request, send: Send) -> None:
        parts = req.path.split("/")
        if len(parts) >= 2 and parts[0] == "" and parts[1] == "fleet":
            await self._fleet_page(req, send, parts[2:])
            return
        if len(parts) < 3 or parts[0] != "" or parts[1] != API_VERSION:
            raise ApiError(404, "not_found", "unknown path")
        rest = parts[2:]
        if rest == ["health"]:
            _only(req, "GET", "HEAD")
            peer = self.replication() if self.replication else None
            health = {
                "status": "ok",
                "server": SERVER_VERSION,
                "server_id": self.store.server_id,
                "peer": peer,
            }
            await self._send_json(req, send, 200, health)
            return
        grant = self._grant(req)
        if rest in (["namespaces"], ["replication"]):
            _only(req, "GET")
            if not (grant.is_admin or grant.may_replicate):
                raise ApiError(403, "forbidden", "needs an admin or replicate token")
            doc: dict[str, Any]
            if rest == ["namespaces"]:
                doc = {"namespaces": await self._run(self.store.namespaces)}
            else:
                doc = {"peer": self.replication() if self.replication else None}
            await self._send_json(req, send, 200, doc)
            return
        ns = rest[0]
        if not names.is_namespace(ns):
            raise ApiError(400, "bad_namespace", "namespace must match [A-Za-z0-9._-]{1,64}")
        if not grant.reaches(ns):
            raise ApiError(403, "forbidden", f"token may not use namespace {ns}")
        tail = rest[1:]
        if tail == ["objects:missing"]:
            _only(req, "POST")
            await self._missing(req, send, ns)
        elif tail == ["objects:upload"]:
            _only(req, "POST")
            await self._upload(req, send, ns)
        elif tail == ["objects:download"]:
            _only(req, "POST")
            await self._download(req, send, ns)
        elif tail == ["objects:suspect"]:
            _only(req, "POST")
            await self._suspect(req, send, ns)
        elif tail == ["objects:damaged"]:
            _only(req, "GET")
            await self._damaged(req, send, ns)
        elif tail == ["objects"]:
            _only(req, "GET")
            await self._list_objects(req, send, ns)
        elif len(tail) == 2 and tail[0] == "objects":
            if not names.is_key(tail[1]):
                raise ApiError(400, "bad_id", "object id must be 32 lower-case hex digits")
            await self._object(req, send, grant, ns, tail[1])
        elif tail == ["refs:forgotten"]:
            _only(req, "POST")
            await self._forgotten_refs(req, send, ns)
        elif tail == ["refs"]:
            _only(req, "GET")
            await self._send_json(req, send, 200, {"refs": self.store.list_refs(ns)})
        elif len(tail) == 2 and tail[0] == "refs":
            if not names.is_ref_name(tail[1]):
                raise ApiError(400, "bad_ref_name", "ref name must match [A-Za-z0-9._-]{1,100}")
            await self._ref(req, send, grant, ns, tail[1])
        elif tail == ["report"]:
            await self._report(req, send, grant, ns)
        elif tail == ["prune"]:
            _only(req, "POST")
            await self._prune(req, send, grant, ns)
        elif tail == ["stats"]:
            _only(req, "GET")
            st = await self._run(self.store.stats, ns)
            counts = {"objects": st.objects, "bytes": st.bytes, "refs": st.refs}
            await self._send_json(req, send, 200, counts)
        else:
            raise ApiError(404, "not_found", "unknown path")

    # -- objects -------------------------------------------------------------------------

    async def _missing(self, req: Request, send: Send, ns: str) -> None:
        doc = await self._json_body(req)
        entries = doc.get("objects") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ApiError(400, "bad_json", 'body must be {"objects": [{"id", "sha256"}...]}')
        if len(entries) > MAX_MISSING:
            raise ApiError(413, "too_large", f"at most {MAX_MISSING} objects per request")
        objects: list[tuple[str, str | None]] = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise ApiError(400, "bad_json", "each object must be {id, sha256}")
            id, digest = entry.get("id"), entry.get("sha256")
            if not isinstance(id, str) or not names.is_key(id):
                raise ApiError(400, "bad_id", f"invalid object id {str(id)[:40]!r}")
            if digest is not None and not (isinstance(digest, str) and is_digest(digest)):
                raise ApiError(400, "bad_digest", f"invalid sha256 {str(digest)[:70]!r}")
            objects.append((id, digest))
        missing = await self._run(self.store.missing, ns, objects)
        await self._send_json(req, send, 200, {"missing": missing})

    async def _upload(self, req: Request, send: Send, ns: str) -> None:
        length = self._length(req, MAX_UPLOAD_BODY)
        results: list[dict[str, str]] = []
        accepted: list[Accepted] = []
        try:
            await self._receive_records(req, ns, length, results, accepted)
            await self._run(self.store.commit, ns, accepted)
        except BaseException:
            await self._run(self.store.discard, accepted)
            raise
        await self._send_json(req, send, 200, {"results": results})

    async def _receive_records(
        self,
        req: Request,
        ns: str,
        length: int,
        results: list[dict[str, str]],
        accepted: list[Accepted],
    ) -> None:
        body = req.body
        while body.consumed < length:
            if length - body.consumed < RECORD.size:
                raise ApiError(400, "bad_record", "body ends inside a record header")
            raw_id, raw_sha, size = RECORD.unpack(await body.read(RECORD.size))
            if size > self.max_object_size:
                raise ApiError(
                    413, "too_large", f"frame of {size} bytes exceeds {self.max_object_size}"
                )
            if size > length - body.consumed:
                raise ApiError(400, "bad_record", "record runs past the end of the body")
            frame = await body.read(size)
            one = await self._run(self.store.accept, ns, raw_id.hex(), raw_sha.hex(), frame)
            del frame
            results.append({"id": raw_id.hex(), "status": one.status})
            accepted.append(one)

    async def _download(self, req: Request, send: Send, ns: str) -> None:
        ids = await self._id_list(req, MAX_DOWNLOAD)
        req.answered = True
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"server", SERVER_VERSION.encode()),
            ],
        }
        await send(start)
        # Groups of SEND_GROUP ids are read on a store thread while the group before is
        # sent: at most two groups of frames in memory per request (2 x 8 frames, each
        # one chunk of at most a few MiB), and the disk read overlaps the socket write.
        groups = [ids[i : i + SEND_GROUP] for i in range(0, len(ids), SEND_GROUP)]
        loop = asyncio.get_running_loop()
        ahead = (
            loop.run_in_executor(self._pool, self.store.objects_for_sending, ns, groups[0])
            if groups
            else None
        )
        for index, group in enumerate(groups):
            assert ahead is not None
            found_group = await ahead
            if index + 1 < len(groups):
                nxt = groups[index + 1]
                ahead = loop.run_in_executor(self._pool, self.store.objects_for_sending, ns, nxt)
            for id, found in zip(group, found_group, strict=True):
                if found is None:
                    piece = RECORD.pack(bytes.fromhex(id), bytes(32), ABSENT)
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    continue
                _, frame, digest = found
                # The record head and its frame in one message: one write to the socket,
                # no slicing of the frame into copies.
                head = RECORD.pack(bytes.fromhex(id), bytes.fromhex(digest), len(frame))
                await send({"type": "http.response.body", "body": head + frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _suspect(self, req: Request, send: Send, ns: str) -> None:
        """A client found downloaded frames damaged: re-check those blobs in full."""
        ids = await self._id_list(req, MAX_SUSPECT)
        damaged = await self._run(self.store.suspect, ns, ids)
        await self._send_json(req, send, 200, {"damaged": damaged})

    async def _damaged(self, req: Request, send: Send, ns: str) -> None:
        raw = req.query.get("after", ["0"])[-1]
        if not raw.isdigit() or len(raw) > 20:
            raise ApiError(400, "bad_cursor", "after must be a cursor this endpoint returned")
        ids, cursor = await self._run(self.store.damaged_since, ns, int(raw))
        await self._send_json(req, send, 200, {"ids": ids, "cursor": cursor})

    async def _list_objects(self, req: Request, send: Send, ns: str) -> None:
        after = req.query.get("after", [""])[-1]
        if after and not names.is_key(after):
            raise ApiError(400, "bad_id", "after must be an object id")
        raw_limit = req.query.get("limit", [str(DEFAULT_LIST_LIMIT)])[-1]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise ApiError(400, "bad_limit", f"limit must be 1..{MAX_LIST_LIMIT}")
        ids, more = await self._run(self.store.list_objects, ns, after, int(raw_limit))
        await self._send_json(req, send, 200, {"keys": ids, "more": more})

    async def _object(self, req: Request, send: Send, grant: auth.Grant, ns: str, id: str) -> None:
        _only(req, "GET", "DELETE")
        if req.method == "GET":
            (found,) = await self._run(self.store.objects_for_sending, ns, [id])
            if found is None:
                raise ApiError(404, "not_found", f"no object {id}")
            _, frame, digest = found
            headers = {"X-Content-SHA256": digest}
            await self._send_bytes(req, send, 200, frame, "application/octet-stream", headers)
            return
        if not grant.is_admin:
            raise ApiError(403, "forbidden", "only an admin token may delete")
        if not await self._run(self.store.delete_object, ns, id):
            raise ApiError(404, "not_found", f"no object {id}")
        await self._send_json(req, send, 200, {"id": id, "deleted": True})

    # -- refs ----------------------------------------------------------------------------

    async def _ref(self, req: Request, send: Send, grant: auth.Grant, ns: str, name: str) -> None:
        _only(req, "GET", "PUT", "DELETE")
        store = self.store
        if req.method == "GET":
            found = await self._run(store.read_ref, ns, name)
            if found is None:
                raise ApiError(404, "not_found", f"no ref {name}")
            body, digest = found
            headers = {hashing.HEADER: hashing.header_value(digest)}
            await self._send_bytes(req, send, 200, body, "application/octet-stream", headers)
        elif req.method == "PUT":
            replace = _flag(req.query, "replace")
            if replace and not grant.is_admin:
                raise ApiError(403, "forbidden", "only an admin token may replace a ref")
            claimed = hashing.parse_header(req.header(hashing.HEADER))
            if claimed is None:
                raise ApiError(
                    400, "bad_hash_header", f"{hashing.HEADER}: xxh3-128:<32 hex> needed"
                )
            self._length(req, MAX_REF_SIZE)
            data = await req.body.read_all()
            actual = hashing.hexdigest(data)
            if actual != claimed:
                raise ApiError(
                    422, "hash_mismatch", f"body hashes to {actual}, header says {claimed}"
                )
            # What a prune forgot stays forgotten: neither the HA peer's replicator nor a
            # tool re-sending from its local store (a recheck, a failover) puts it back.
            if not grant.is_admin and await self._run(self._forgotten, ns, name):
                raise ApiError(410, "forgotten", f"ref {name} was pruned here")
            tmp = await self._run(objfile.write_bytes, store.tmp_dir, data)
            if replace:
                await self._run(store.replace_ref, ns, name, tmp)
                doc = {"ref": name, "created": False, "replaced": True}
                await self._send_json(req, send, 200, doc)
                return
            outcome = await self._run(store.create_ref, ns, name, tmp, actual)
            if outcome == "conflict":
                raise ApiError(409, "conflict", f"ref {name} exists with different content")
            created = outcome == "created"
            doc2 = {"ref": name, "created": created}
            await self._send_json(req, send, 201 if created else 200, doc2)
        else:
            if not grant.is_admin:
                raise ApiError(403, "forbidden", "only an admin token may delete")
            if not await self._run(store.delete_ref, ns, name):
                raise ApiError(404, "not_found", f"no ref {name}")
            await self._send_json(req, send, 200, {"ref": name, "deleted": True})

    def _forgotten(self, ns: str, name: str) -> bool:
        return self.store.has_namespace(ns) and self.store.index(ns).is_forgotten(name)

    async def _forgotten_refs(self, req: Request, send: Send, ns: str) -> None:
        """Which of these refs a prune forgot here: a tool asks before it sends a
        snapshot's objects again, so a pruned snapshot costs no upload."""
        wanted = await self._string_list(req, "names", MAX_MISSING, names.is_ref_name,
                                         "bad_ref_name", "ref names")  # fmt: skip

        def lookup() -> list[str]:
            if not self.store.has_namespace(ns):
                return []
            return self.store.index(ns).forgotten_among(wanted)

        await self._send_json(req, send, 200, {"forgotten": await self._run(lookup)})

    # -- online prune (logic in remote/prune.py, request in remote/prune_api.py) -----------

    async def _prune(self, req: Request, send: Send, grant: auth.Grant, ns: str) -> None:
        if not grant.is_admin:
            raise ApiError(403, "forbidden", "only an admin token may prune")
        try:
            request = prune_api.parse(await self._json_body(req), self.prune_min_grace_s)
        except prune_api.PruneRequestError as exc:
            raise ApiError(400, "bad_prune", str(exc)) from None
        if not self.store.has_namespace(ns):
            raise ApiError(404, "not_found", f"no namespace {ns}")
        if not self._prune_lock.acquire(blocking=False):
            raise ApiError(409, "prune_running", "another prune is running on this server")
        try:
            loop = asyncio.get_running_loop()
            doc = await loop.run_in_executor(
                self._pruner,
                functools.partial(
                    prune.run,
                    self.store,
                    ns,
                    request.policy,
                    now_s=int(time.time()),
                    grace_s=request.grace_s,
                    dry_run=request.dry_run,
                ),
            )
        except prune.PruneError as exc:
            raise ApiError(422, "prune_unsafe", str(exc)) from None
        finally:
            self._prune_lock.release()
        log.info("prune of %s: %s", ns, prune.summary_lines(doc)[-1])
        await self._send_json(req, send, 200, doc)

    # -- tool reports and the fleet page (logic in remote/fleet.py) ---------------------------

    async def _report(self, req: Request, send: Send, grant: auth.Grant, ns: str) -> None:
        _only(req, "GET", "PUT")
        if req.method == "GET":
            doc = await self._run(self.fleet.get_report, ns)
            if doc is None:
                raise ApiError(404, "not_found", f"no report for {ns}")
            await self._send_json(req, send, 200, doc)
            return
        if grant.may_replicate:
            raise ApiError(403, "forbidden", "a replicate token may not report for a tool")
        self._length(req, fleet.MAX_REPORT_SIZE)
        try:
            report = fleet.parse_report(await req.body.read_all())
        except fleet.ReportError as exc:
            raise ApiError(400, "bad_report", str(exc)) from exc
        await self._run(self.fleet.put_report, ns, report, time.time_ns())
        await self._send_json(req, send, 200, {"namespace": ns, "stored": True})

    def _fleet_grant(self, req: Request) -> auth.Grant | None:
        """Admin access to the page: a session cookie or a bearer header; None if neither."""
        sid = fleet.cookie_value(req.header("cookie"))
        if sid is not None and self.sessions.valid(sid, time.time()):
            return auth.Grant(role="admin", namespaces=None)
        if req.header("authorization") is None:
            return None
        return self._grant(req)

    async def _fleet_page(self, req: Request, send: Send, rest: list[str]) -> None:
        html_type = "text/html; charset=utf-8"
        nocache = {"Cache-Control": "no-store", "X-Frame-Options": "DENY"}
        if rest == ["login"]:
            _only(req, "POST")
            self._length(req, 4096)
            form = parse_qs((await req.body.read_all()).decode("latin-1"))
            grant = self.tokens.lookup(form.get("token", [""])[-1].strip())
            if grant is None or not grant.is_admin:
                status = 401 if grant is None else 403
                page = fleet.render_login(
                    "unknown token" if grant is None else "not an admin token"
                )
                await self._send_bytes(req, send, status, page.encode(), html_type, nocache)
                return
            sid = self.sessions.open(time.time())
            secure = "; Secure" if req.scheme == "https" else ""
            cookie = (
                f"{fleet.SESSION_COOKIE}={sid}; Path=/fleet; HttpOnly; SameSite=Lax"
                f"; Max-Age={fleet.SESSION_SECONDS}{secure}"
            )
            headers = {"Location": "/fleet", "Set-Cookie": cookie, **nocache}
            await self._send_bytes(req, send, 303, b"", html_type, headers)
            return
        if rest == ["logout"]:
            _only(req, "POST")
            old = fleet.cookie_value(req.header("cookie"))
            if old is not None:
                self.sessions.close(old)
            cookie = f"{fleet.SESSION_COOKIE}=; Path=/fleet; HttpOnly; SameSite=Lax; Max-Age=0"
            headers = {"Location": "/fleet", "Set-Cookie": cookie, **nocache}
            await self._send_bytes(req, send, 303, b"", html_type, headers)
            return
        if rest not in ([], [""]):
            raise ApiError(404, "not_found", "unknown path")
        _only(req, "GET", "HEAD")
        grant = self._fleet_grant(req)
        if grant is None:
            page = fleet.render_login()
            await self._send_bytes(req, send, 401, page.encode(), html_type, nocache)
            return
        if not grant.is_admin:
            page = fleet.render_login("the fleet page needs an admin token")
            await self._send_bytes(req, send, 403, page.encode(), html_type, nocache)
            return
        now = time.time()
        rows = await self._run(self.fleet.rows, now)
        page = fleet.render_fleet(rows, now)
        await self._send_bytes(req, send, 200, page.encode(), html_type, nocache)


_NAMESPACE_ROUTES = {
    ("objects:missing",): "objects:missing",
    ("objects:upload",): "objects:upload",
    ("objects:download",): "objects:download",
    ("objects:suspect",): "objects:suspect",
    ("objects:damaged",): "objects:damaged",
    ("objects",): "objects",
    ("refs",): "refs",
    ("refs:forgotten",): "refs:forgotten",
    ("stats",): "stats",
    ("report",): "report",
    ("prune",): "prune",
}


def endpoint_template(path: str) -> str:
    """The route template of a raw request path, the `endpoint` label of the request
    metrics: never a namespace, id or ref name, so the label has a handful of values
    whatever clients send (unknown paths all count as "other")."""
    parts = path.split("/")
    if path in ("/fleet", "/fleet/login", "/fleet/logout"):
        return path[1:]
    if len(parts) < 3 or parts[0] != "" or parts[1] != API_VERSION:
        return "other"
    rest = parts[2:]
    if rest in (["health"], ["namespaces"], ["replication"]):
        return rest[0]
    tail = tuple(rest[1:])
    if tail in _NAMESPACE_ROUTES:
        return "<ns>/" + _NAMESPACE_ROUTES[tail]
    if len(tail) == 2 and tail[0] == "objects":
        return "<ns>/objects/<id>"
    if len(tail) == 2 and tail[0] == "refs":
        return "<ns>/refs/<name>"
    return "other"


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and len(server) > 1 and server[1] is not None else None


def _only(req: Request, *allowed: str) -> None:
    if req.method not in allowed:
        raise ApiError(
            405, "method_not_allowed", f"{req.method} not allowed", {"Allow": ", ".join(allowed)}
        )


def _flag(params: dict[str, list[str]], name: str) -> bool:
    return params.get(name, ["0"])[-1].lower() in ("1", "true", "yes")


def _declared_length(headers: dict[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return 0 if "transfer-encoding" not in headers else None
    raw = raw.strip()
    return int(raw) if raw.isdigit() else None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
