"""The HTTP front of the server: routing, auth, limits and status codes over `DiskStore`.

Pure standard library (`http.server`, threads), so the same file runs on the Windows pair
and on Linux. Every error is a JSON body `{"error": <code>, "message": <text>}`; the full
contract is docs/remote-api.md. Names from the URL are never percent-decoded: a valid name
needs no escapes, so an escaped one fails validation before it can reach a path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import socketserver
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from remote import auth, hashing, names, objfile
from remote.store import DiskStore

log = logging.getLogger(__name__)

API_VERSION = "v1"
SERVER_VERSION = "dpmsfs-server/0.1"
DEFAULT_MAX_OBJECT_SIZE = 64 << 20
MAX_REF_SIZE = 1 << 20
MAX_JSON_SIZE = 16 << 20
MAX_MISSING_KEYS = 100_000
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1_000
DRAIN_LIMIT = 256 << 20  # refused bodies up to this size are read and dropped, not reset
_DISK_FULL_WINERRORS = (39, 112)  # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL


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


@dataclass(frozen=True)
class ServerConfig:
    store: DiskStore
    tokens: auth.TokenTable
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        getattr(exc, "winerror", None) in _DISK_FULL_WINERRORS
    )


class ApiServer(ThreadingHTTPServer):
    """Thread per connection; TLS handshakes happen in the connection's thread."""

    daemon_threads = True
    request_queue_size = 64
    # On Windows SO_REUSEADDR lets a second process bind the same port; never want that.
    allow_reuse_address = os.name != "nt"

    def __init__(
        self,
        address: tuple[str, int],
        config: ServerConfig,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.config = config
        self.ssl_context = ssl_context
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall for
        # seconds on an isolated Windows host; the name is only used in CGI variables.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr by default; a dropped client is not news.
        log.info("connection from %s ended with an error", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host!s}:{port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_VERSION
    timeout = 120  # seconds a connection may sit idle or stall mid-body
    server: ApiServer

    # -- plumbing ------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def log_error(self, format: str, *args: Any) -> None:
        log.info("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Used by http.server itself (bad request line, unknown method): answer in JSON."""
        self.close_connection = True
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error"
        self._send_json(
            code, {"error": phrase.lower().replace(" ", "_"), "message": message or phrase}
        )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            self._route(method)
        except ApiError as exc:
            self._send_json(exc.status, {"error": exc.code, "message": exc.message}, exc.headers)
        except (objfile.ShortBody, TimeoutError, ConnectionError) as exc:
            log.info("%s: upload aborted: %s", self.address_string(), exc)
            self._body_read = True
            self.close_connection = True
        except OSError as exc:
            if is_disk_full(exc):
                log.error("disk full while storing %s: %s", self.path, exc)
                self._send_json(507, {"error": "insufficient_storage", "message": "disk full"})
            else:
                log.exception("I/O error on %s %s", method, self.path)
                self._send_json(500, {"error": "io_error", "message": str(exc.strerror or exc)})
        except Exception:
            log.exception("internal error on %s %s", method, self.path)
            self._send_json(500, {"error": "internal", "message": "internal server error"})
        finally:
            if self._has_unread_body():
                self._drain_or_close()

    def _has_unread_body(self) -> bool:
        if getattr(self, "_body_read", True) or self.headers is None:
            return False
        return (
            self.headers.get("Content-Length", "0").strip() not in ("", "0")
            or "Transfer-Encoding" in self.headers
        )

    def _drainable(self) -> bool:
        raw = self.headers.get("Content-Length", "")
        return "Transfer-Encoding" not in self.headers and raw.isdigit() and int(raw) <= DRAIN_LIMIT

    def _drain_or_close(self) -> None:
        """Read and drop a body we refused, so the client sees our answer, not a reset.

        Closing a socket with unread data makes the kernel send RST, which can destroy the
        error response (413, 401, ...) before the client reads it; a client that then sees a
        connection error would retry a request that can never succeed.
        """
        self._body_read = True
        if not self._drainable():
            self.close_connection = True
            return
        remaining = int(self.headers["Content-Length"])
        try:
            while remaining > 0:
                piece = self.rfile.read(min(remaining, 1 << 20))
                if not piece:
                    break
                remaining -= len(piece)
        except OSError:
            remaining = 1
        if remaining:
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode("utf-8")
        self._send_bytes(status, body, "application/json", headers)

    def _send_bytes(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self._has_unread_body() and not self._drainable():
            self.close_connection = True  # an unread body would be parsed as a request
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- request parts -------------------------------------------------------------------

    def _grant(self) -> auth.Grant:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"}
            )
        grant = self.server.config.tokens.lookup(token.strip())
        if grant is None:
            raise ApiError(401, "unauthorized", "unknown token", {"WWW-Authenticate": "Bearer"})
        return grant

    def _length(self, limit: int) -> int:
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "length_required", "chunked bodies are not accepted")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(411, "length_required", "Content-Length is required")
        if not raw.isdigit():
            raise ApiError(400, "bad_length", "Content-Length is not a number")
        length = int(raw)
        if length > limit:
            raise ApiError(413, "too_large", f"body of {length} bytes exceeds limit {limit}")
        return length

    def _receive(self, limit: int) -> tuple[Path, str]:
        claimed = hashing.parse_header(self.headers.get(hashing.HEADER))
        if claimed is None:
            raise ApiError(400, "bad_hash_header", f"{hashing.HEADER}: xxh3-128:<32 hex> needed")
        length = self._length(limit)
        store = self.server.config.store
        try:
            result = objfile.receive(store.tmp_dir, self.rfile.read, length, claimed)
        except objfile.BodyMismatch as exc:
            self._body_read = True  # mismatch is only known once the whole body is in
            raise ApiError(422, "hash_mismatch", str(exc)) from exc
        except BaseException:
            # Stopped somewhere inside the body (e.g. ENOSPC): the stream position is
            # unknown, so this connection cannot carry another request.
            self._body_read = True
            self.close_connection = True
            raise
        self._body_read = True
        return result

    def _json_body(self) -> Any:
        length = self._length(MAX_JSON_SIZE)
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) != length:
            raise objfile.ShortBody("JSON body ended early")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc

    # -- routing -------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] != API_VERSION:
            raise ApiError(404, "not_found", "unknown path")
        rest = parts[2:]
        if rest == ["health"]:
            self._only(method, "GET", "HEAD")
            self._send_json(200, {"status": "ok", "server": SERVER_VERSION})
            return
        grant = self._grant()
        ns = rest[0]
        if not names.is_namespace(ns):
            raise ApiError(400, "bad_namespace", "namespace must match [A-Za-z0-9._-]{1,64}")
        if not grant.reaches(ns):
            raise ApiError(403, "forbidden", f"token may not use namespace {ns}")
        params = parse_qs(query, keep_blank_values=True)
        tail = rest[1:]
        if tail == ["objects:missing"]:
            self._only(method, "POST")
            self._missing(ns, _flag(params, "verify"))
        elif tail == ["objects"]:
            self._only(method, "GET")
            self._list_objects(ns, params)
        elif len(tail) == 2 and tail[0] == "objects":
            if not names.is_key(tail[1]):
                raise ApiError(400, "bad_key", "key must be 32 lower-case hex digits")
            self._object(method, grant, ns, tail[1])
        elif tail == ["refs"]:
            self._only(method, "GET")
            self._send_json(200, {"refs": self.server.config.store.list_refs(ns)})
        elif len(tail) == 2 and tail[0] == "refs":
            if not names.is_ref_name(tail[1]):
                raise ApiError(400, "bad_ref_name", "ref name must match [A-Za-z0-9._-]{1,100}")
            self._ref(method, grant, ns, tail[1], _flag(params, "replace"))
        elif tail == ["stats"]:
            self._only(method, "GET")
            st = self.server.config.store.stats(ns)
            self._send_json(200, {"objects": st.objects, "bytes": st.bytes, "refs": st.refs})
        else:
            raise ApiError(404, "not_found", "unknown path")

    def _only(self, method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(
                405, "method_not_allowed", f"{method} not allowed", {"Allow": ", ".join(allowed)}
            )

    # -- objects -------------------------------------------------------------------------

    def _object(self, method: str, grant: auth.Grant, ns: str, key: str) -> None:
        store = self.server.config.store
        self._only(method, "GET", "HEAD", "PUT", "DELETE")
        if method == "PUT":
            tmp, digest = self._receive(self.server.config.max_object_size)
            created = store.commit_object(ns, key, tmp)
            status = 201 if created else 200
            self._send_json(status, {"key": key, "created": created, "hash": digest})
        elif method == "GET":
            found = store.read_object(ns, key)
            if found is None:
                raise ApiError(404, "not_found", f"no object {key}")
            body, digest = found
            headers = {hashing.HEADER: hashing.header_value(digest)}
            self._send_bytes(200, body, "application/octet-stream", headers)
        elif method == "HEAD":
            info = store.object_info(ns, key)
            if info is None:
                raise ApiError(404, "not_found", f"no object {key}")
            digest, length = info
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header(hashing.HEADER, hashing.header_value(digest))
            self.end_headers()
        else:
            if not grant.is_admin:
                raise ApiError(403, "forbidden", "only an admin token may delete")
            if not store.delete_object(ns, key):
                raise ApiError(404, "not_found", f"no object {key}")
            self._send_json(200, {"key": key, "deleted": True})

    def _missing(self, ns: str, verify: bool) -> None:
        keys = self._json_body()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError(400, "bad_json", "body must be a JSON list of key strings")
        if len(keys) > MAX_MISSING_KEYS:
            raise ApiError(413, "too_large", f"at most {MAX_MISSING_KEYS} keys per request")
        bad = [k for k in keys if not names.is_key(k)]
        if bad:
            raise ApiError(400, "bad_key", f"invalid keys: {bad[:5]!r}")
        store = self.server.config.store
        missing = [k for k in keys if not store.has_object(ns, k, verify)]
        self._send_json(200, {"missing": missing})

    def _list_objects(self, ns: str, params: dict[str, list[str]]) -> None:
        after = params.get("after", [""])[-1]
        if after and not names.is_key(after):
            raise ApiError(400, "bad_key", "after must be a key")
        raw_limit = params.get("limit", [str(DEFAULT_LIST_LIMIT)])[-1]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise ApiError(400, "bad_limit", f"limit must be 1..{MAX_LIST_LIMIT}")
        keys, more = self.server.config.store.list_objects(ns, after, int(raw_limit))
        self._send_json(200, {"keys": keys, "more": more})

    # -- refs ----------------------------------------------------------------------------

    def _ref(self, method: str, grant: auth.Grant, ns: str, name: str, replace: bool) -> None:
        store = self.server.config.store
        self._only(method, "GET", "PUT", "DELETE")
        if method == "GET":
            found = store.read_ref(ns, name)
            if found is None:
                raise ApiError(404, "not_found", f"no ref {name}")
            body, digest = found
            headers = {hashing.HEADER: hashing.header_value(digest)}
            self._send_bytes(200, body, "application/octet-stream", headers)
        elif method == "PUT":
            if replace and not grant.is_admin:
                raise ApiError(403, "forbidden", "only an admin token may replace a ref")
            tmp, digest = self._receive(MAX_REF_SIZE)
            if replace:
                store.replace_ref(ns, name, tmp)
                self._send_json(200, {"ref": name, "created": False, "replaced": True})
                return
            outcome = store.create_ref(ns, name, tmp, digest)
            if outcome == "conflict":
                raise ApiError(409, "conflict", f"ref {name} exists with different content")
            created = outcome == "created"
            self._send_json(201 if created else 200, {"ref": name, "created": created})
        else:
            if not grant.is_admin:
                raise ApiError(403, "forbidden", "only an admin token may delete")
            if not store.delete_ref(ns, name):
                raise ApiError(404, "not_found", f"no ref {name}")
            self._send_json(200, {"ref": name, "deleted": True})


def _flag(params: dict[str, list[str]], name: str) -> bool:
    return params.get(name, ["0"])[-1].lower() in ("1", "true", "yes")


def make_server(
    address: tuple[str, int],
    store: DiskStore,
    tokens: auth.TokenTable,
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> ApiServer:
    """Bind a server over a prepared store; raises OSError if the address is unusable."""
    config = ServerConfig(store=store, tokens=tokens, max_object_size=max_object_size)
    return ApiServer(address, config, ssl_context)
