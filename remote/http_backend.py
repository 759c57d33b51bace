"""`HttpBackend`: the v2 client of dpmsfs-server, with failover across the HA pair.

One `requests.Session` (pooled keep-alive connections) serves every URL. A call goes first to
the URL that last worked; on a connection failure, timeout or temporary status (5xx, 429,
507, 408) it tries the next URL, and the one that answers becomes the new first choice. If
every URL fails, the call raises `TemporaryRemoteError`, which the `Retrier` retries with
backoff until its deadline. `server_id()` names the server answering now (from its health
document), so the sync layer can notice a failover and re-check what that server holds.

Every downloaded frame is verified here (it decodes and its plain content hashes to the id
asked for; `IntegrityError` otherwise), whatever the server said. Uploads are batched (at
most UPLOAD_BATCH_BYTES of frames per request) and may be throttled by a token bucket
(`bandwidth` bytes/s) shared by every request of this backend.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from remote import hashing, names
from remote.backend import Keys
from remote.errors import (
    IntegrityError,
    PermanentRemoteError,
    RemoteError,
    TemporaryRemoteError,
    error_for_status,
    is_temporary_status,
)
from remote.frames import BadFrameError, inspect_frame, is_digest, plain_of_verified
from remote.retry import Retrier

log = logging.getLogger(__name__)

T = TypeVar("T")
# The server re-hashes every blob it reports present, so `missing` batches stay small enough
# (~1000 chunks) to answer well within the read timeout.
MISSING_BATCH = 1_000
DOWNLOAD_BATCH = 256
UPLOAD_BATCH_BYTES = 32 << 20
UPLOAD_BATCH_RECORDS = 2_000
SERVER_ID_TTL = 10.0
RECORD = struct.Struct(">16s32sI")
ABSENT = 0xFFFFFFFF


class TokenBucket:
    """A bandwidth limit in bytes/s, shared by threads; bursts up to one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("bandwidth must be positive")
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until `n` bytes may be sent (n may exceed the burst: it then waits longer)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            sleep(wait)


class HttpBackend:
    def __init__(
        self,
        urls: Sequence[str],
        namespace: str,
        token: str,
        timeout: float | tuple[float, float] = (5.0, 60.0),
        *,
        retrier: Retrier | None = None,
        tls_verify: bool | str = True,
        pool_size: int = 8,
        bandwidth: float | None = None,
    ) -> None:
        """`urls` are server base URLs (e.g. `https://srv1:8765`); `tls_verify` may name a
        CA bundle for a private certificate authority; `bandwidth` limits upload and
        download bytes per second (None: unlimited)."""
        if not urls:
            raise ValueError("need at least one server URL")
        if not names.is_namespace(namespace):
            raise ValueError(f"invalid namespace {namespace!r}")
        self.urls = [u.rstrip("/") for u in urls]
        self.namespace = namespace
        self.timeout = timeout
        self._bucket = TokenBucket(bandwidth) if bandwidth else None
        self._server_ids: dict[int, tuple[str, float]] = {}  # url index -> (id, asked at)
        self._retrier = retrier or Retrier()
        self._active = 0
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "dpmsfs-remote/0.2"
        # The environment (proxies, NO_PROXY, REQUESTS_CA_BUNDLE) is read once, here, and
        # passed per request: with `trust_env` requests scanned os.environ twice per
        # request (about 40 % of the client's cost of a small request; 344 requests in a
        # 548 MB restore), and would let a ~/.netrc entry replace our bearer token.
        self._session.trust_env = False
        self._proxies = [requests.utils.get_environ_proxies(u) for u in self.urls]
        if tls_verify is True:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            tls_verify = bundle or True
        # Passed per request: a session-level `verify` loses to REQUESTS_CA_BUNDLE in requests.
        self.tls_verify = tls_verify
        adapter = HTTPAdapter(pool_connections=len(self.urls), pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def active_url(self) -> str:
        """The URL tried first: the one that answered last."""
        return self.urls[self._active]

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One attempt across every URL, current first. 4xx answers are returned as is."""
        failures: list[str] = []
        order = [self._active] + [i for i in range(len(self.urls)) if i != self._active]
        for i in order:
            url = self.urls[i] + path
            try:
                resp = self._session.request(
                    method,
                    url,
                    timeout=self.timeout,
                    verify=self.tls_verify,
                    proxies=self._proxies[i],
                    **kwargs,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures.append(f"{self.urls[i]}: {type(exc).__name__}")
                log.debug("%s %s failed: %s", method, url, exc)
                continue
            except requests.RequestException as exc:
                raise PermanentRemoteError(f"{method} {url}: {exc}") from exc
            if is_temporary_status(resp.status_code):
                failures.append(f"{self.urls[i]}: HTTP {resp.status_code} {_message(resp)}")
                resp.close()
                continue
            if i != self._active:
                log.warning("server %s unavailable; now using %s", self.active_url, self.urls[i])
                self._active = i
            return resp
        raise TemporaryRemoteError(f"{method} {path}: no server answered: " + "; ".join(failures))

    def _call(
        self, what: str, method: str, path: str, ok: tuple[int, ...], **kwargs: Any
    ) -> requests.Response:
        resp = self._request(method, path, **kwargs)
        if resp.status_code not in ok:
            err = error_for_status(resp.status_code, f"{what}: {_message(resp)}")
            resp.close()
            raise err
        return resp

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return self._retrier.call(fn, what)

    def _ns(self, suffix: str) -> str:
        return f"/v2/{self.namespace}/{suffix}"

    def _throttle(self, n: int) -> None:
        if self._bucket is not None and n:
            self._bucket.take(n)

    # -- server identity -----------------------------------------------------------------

    def server_id(self) -> str:
        """The id of the server that answers now.

        Remembered per URL for SERVER_ID_TTL seconds, so a sync loop may ask before every
        batch; after a failover the other URL's id is asked at once, and a server whose data
        directory was replaced behind the same URL is noticed within the TTL.
        """

        def ask() -> str:
            resp = self._call("health", "GET", "/v2/health", (200,))
            doc = _json(resp)
            sid = doc.get("server_id") if isinstance(doc, dict) else None
            if not isinstance(sid, str) or not sid:
                raise PermanentRemoteError("server health has no server_id")
            self._server_ids[self._active] = (sid, time.monotonic())
            return sid

        known = self._server_ids.get(self._active)
        if known is not None and time.monotonic() - known[1] < SERVER_ID_TTL:
            return known[0]
        return self._retry("server_id", ask)

    def health(self) -> bool:
        """Whether any server answers its health check (no retry, for status displays)."""
        try:
            self._call("health", "GET", "/v2/health", (200,))
        except RemoteError:
            return False
        return True

    def answers(self) -> bool:
        """Whether any server answers at all, whatever the status (no retry).

        What "reachable" means to the sync service: a server that is busy (503, 429), full
        (507) or failing (500) still answers, and is not the network or the server being
        gone. `health()` is False for those, so a busy server taking a tool's first upload
        raised a `server_unreachable` alert."""
        for i, base in enumerate(self.urls):
            try:
                resp = self._session.request(
                    "GET",
                    base + "/v2/health",
                    timeout=self.timeout,
                    verify=self.tls_verify,
                    proxies=self._proxies[i],
                )
            except requests.RequestException as exc:
                log.debug("%s does not answer: %s", base, exc)
                continue
            resp.close()
            return True
        return False

    # -- objects -------------------------------------------------------------------------

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> Keys:
        for id, digest in objects:
            _check_id(id)
            if digest is not None:
                _check_digest(digest)
        path = self._ns("objects:missing")
        result: Keys = []
        for start in range(0, len(objects), MISSING_BATCH):
            body = {
                "objects": [
                    {"id": id, "sha256": digest}
                    for id, digest in objects[start : start + MISSING_BATCH]
                ]
            }
            ask = functools.partial(self._call, "missing", "POST", path, (200,), json=body)
            result.extend(_json(self._retry("missing", ask))["missing"])
        return result

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        for id, digest, _frame in records:
            _check_id(id)
            _check_digest(digest)
        results: dict[str, str] = {}
        batch: list[tuple[str, str, bytes]] = []
        size = 0
        for record in records:
            if batch and (
                size + len(record[2]) > UPLOAD_BATCH_BYTES or len(batch) >= UPLOAD_BATCH_RECORDS
            ):
                results.update(self._upload_batch(batch))
                batch, size = [], 0
            batch.append(record)
            size += len(record[2])
        if batch:
            results.update(self._upload_batch(batch))
        return results

    def _upload_batch(self, batch: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        parts: list[bytes] = []
        for id, digest, frame in batch:
            parts.append(RECORD.pack(bytes.fromhex(id), bytes.fromhex(digest), len(frame)))
            parts.append(bytes(frame))
        body = b"".join(parts)
        path = self._ns("objects:upload")
        headers = {"Content-Type": "application/octet-stream"}

        def send() -> requests.Response:
            self._throttle(len(body))
            return self._call("upload", "POST", path, (200,), data=body, headers=headers)

        doc = _json(self._retry(f"upload of {len(batch)} objects", send))
        try:
            return {str(r["id"]): str(r["status"]) for r in doc["results"]}
        except (KeyError, TypeError) as exc:
            raise PermanentRemoteError(f"upload answer malformed: {exc}") from exc

    def load(self, id: str) -> bytes:
        """One object's frame, verified. A frame that fails the check is reported to the
        server like a damaged download record (`objects:suspect`) and asked for once
        more: a blob that rotted on the server's disk then reads as absent
        (NotFoundError, the tool re-uploads it) instead of failing every retry."""
        _check_id(id)
        path = self._ns(f"objects/{id}")

        def fetch_once() -> bytes:
            resp = self._call(f"load {id}", "GET", path, (200,))
            frame = resp.content
            self._throttle(len(frame))
            try:
                _verify_frame(id, frame)
            except IntegrityError as exc:
                raise _DamagedFrame(id, str(exc)) from None
            return frame

        def fetch() -> bytes:
            try:
                return fetch_once()
            except _DamagedFrame as exc:
                self._report_damage(exc)
            try:
                return fetch_once()
            except _DamagedFrame as again:
                raise IntegrityError(f"object {again.id}: {again.reason}") from None

        return self._retry(f"load {id}", fetch)

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        return self._load_many(ids, plain=False)

    def load_many_plain(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        return self._load_many(ids, plain=True)

    def _load_many(self, ids: Sequence[str], plain: bool) -> Iterator[tuple[str, bytes | None]]:
        for id in ids:
            _check_id(id)
        for start in range(0, len(ids), DOWNLOAD_BATCH):
            batch = list(ids[start : start + DOWNLOAD_BATCH])
            fetch = functools.partial(self._download_checked, batch, plain)
            yield from self._retry(f"download of {len(batch)} objects", fetch)

    def _download_checked(self, ids: list[str], plain: bool) -> list[tuple[str, bytes | None]]:
        """A download batch; a frame that fails the check is reported to the server
        (`objects:suspect`: it re-checks that blob in full and quarantines it if damaged)
        and the batch asked once more, so a blob that rotted on the server's disk reads as
        absent (the tool re-uploads it) instead of failing every retry the same way."""
        try:
            return self._download_batch(ids, plain)
        except _DamagedFrame as exc:
            self._report_damage(exc)
        try:
            return self._download_batch(ids, plain)
        except _DamagedFrame as again:
            raise IntegrityError(f"object {again.id}: {again.reason}") from None

    def _report_damage(self, exc: _DamagedFrame) -> None:
        """Tell the server a frame it sent failed the check (it re-checks that blob in
        full and quarantines it if damaged); IntegrityError if it cannot be told."""
        try:
            damaged = self._suspect([exc.id])
        except RemoteError as report_failed:  # an older server, or none answering now
            log.warning("object %s downloaded damaged (%s); reporting it failed: %s",
                        exc.id, exc.reason, report_failed)  # fmt: skip
            raise IntegrityError(f"object {exc.id}: {exc.reason}") from None
        log.warning(
            "object %s downloaded damaged (%s); server found its copy %s",
            exc.id,
            exc.reason,
            "damaged and quarantined it" if damaged else "sound",
        )

    def _suspect(self, ids: list[str]) -> list[str]:
        path = self._ns("objects:suspect")
        resp = self._call("suspect", "POST", path, (200,), json={"ids": ids})
        damaged = _json(resp).get("damaged", [])
        return [str(i) for i in damaged] if isinstance(damaged, list) else []

    def _download_batch(self, ids: list[str], plain: bool) -> list[tuple[str, bytes | None]]:
        """One objects:download request, read as a stream and verified record by record
        (`plain`: decoded once, and the plain content returned instead of the frame).

        Returned whole (not yielded) so a retry after a broken stream starts the batch
        again instead of handing the caller some records twice.
        """
        path = self._ns("objects:download")
        resp = self._call("download", "POST", path, (200,), json={"ids": ids}, stream=True)
        out: list[tuple[str, bytes | None]] = []
        try:
            raw = resp.raw
            for want in ids:
                head = _read_exactly(raw, RECORD.size)
                got_id, _sha, size = RECORD.unpack(head)
                if got_id.hex() != want:
                    raise IntegrityError(f"download: expected {want}, server sent {got_id.hex()}")
                if size == ABSENT:
                    out.append((want, None))
                    continue
                frame = _read_exactly(raw, size)
                self._throttle(size)
                try:
                    if plain:
                        out.append((want, plain_of_verified(want, frame)))
                    else:
                        _verify_frame(want, frame)
                        out.append((want, frame))
                except (BadFrameError, IntegrityError) as exc:
                    raise _DamagedFrame(want, str(exc)) from None
            _drain(raw)
        except (requests.RequestException, OSError) as exc:
            raise TemporaryRemoteError(f"download stream broke: {exc}") from exc
        finally:
            resp.close()
        return out

    def damaged(self, after: int = 0) -> tuple[Keys, int]:
        params = {"after": str(after)}
        path = self._ns("objects:damaged")
        resp = self._retry(
            "damaged", lambda: self._call("damaged", "GET", path, (200,), params=params)
        )
        doc = _json(resp)
        try:
            ids = [str(i) for i in doc["ids"]]
            cursor = int(doc["cursor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentRemoteError(f"damaged answer malformed: {exc}") from exc
        for id in ids:
            _check_id(id)
        return ids, cursor

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        params: dict[str, str | int] = {"after": after, "limit": limit}
        resp = self._retry(
            "list", lambda: self._call("list", "GET", self._ns("objects"), (200,), params=params)
        )
        keys: Keys = _json(resp)["keys"]
        return keys

    def delete(self, id: str) -> None:
        _check_id(id)
        path = self._ns(f"objects/{id}")
        self._retry(f"delete {id}", lambda: self._call("delete", "DELETE", path, (200,)))

    # -- refs ----------------------------------------------------------------------------

    def put_ref(self, name: str, data: bytes) -> None:
        _check_ref(name)
        headers = {hashing.HEADER: hashing.header_value(hashing.hexdigest(data))}
        path = self._ns(f"refs/{name}")
        self._retry(
            f"put_ref {name}",
            lambda: self._call("put_ref", "PUT", path, (200, 201), data=data, headers=headers),
        )

    def put_report(self, report: dict[str, Any]) -> None:
        body = json.dumps(report).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        self._retry(
            "put_report",
            lambda: self._call(
                "put_report", "PUT", self._ns("report"), (200,), data=body, headers=headers
            ),
        )

    def get_ref(self, name: str) -> bytes:
        _check_ref(name)
        path = self._ns(f"refs/{name}")
        return self._retry(f"get_ref {name}", lambda: self._download_ref(f"get_ref {name}", path))

    def list_refs(self) -> Keys:
        resp = self._retry(
            "list_refs", lambda: self._call("list_refs", "GET", self._ns("refs"), (200,))
        )
        refs: Keys = _json(resp)["refs"]
        return refs

    def forgotten_refs(self, names: Sequence[str]) -> Keys:
        for name in names:
            _check_ref(name)
        path = self._ns("refs:forgotten")
        result: Keys = []
        for start in range(0, len(names), MISSING_BATCH):
            body = {"names": list(names[start : start + MISSING_BATCH])}
            ask = functools.partial(self._call, "forgotten_refs", "POST", path, (200,), json=body)
            found = _json(self._retry("forgotten_refs", ask)).get("forgotten")
            if not isinstance(found, list) or not all(isinstance(n, str) for n in found):
                raise PermanentRemoteError("forgotten_refs answer malformed")
            result.extend(found)
        return result

    def delete_ref(self, name: str) -> None:
        _check_ref(name)
        path = self._ns(f"refs/{name}")
        self._retry(f"delete_ref {name}", lambda: self._call("delete_ref", "DELETE", path, (200,)))

    # -- monitoring and admin ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        resp = self._retry("stats", lambda: self._call("stats", "GET", self._ns("stats"), (200,)))
        stats: dict[str, int] = _json(resp)
        return stats

    def namespaces(self) -> Keys:
        """Every namespace on the server (admin or replicate token)."""
        resp = self._retry(
            "namespaces", lambda: self._call("namespaces", "GET", "/v2/namespaces", (200,))
        )
        spaces: Keys = _json(resp)["namespaces"]
        return spaces

    def _download_ref(self, what: str, path: str) -> bytes:
        resp = self._call(what, "GET", path, (200,))
        body = resp.content
        announced = hashing.parse_header(resp.headers.get(hashing.HEADER))
        if announced is None:
            raise IntegrityError(f"{what}: server sent no valid {hashing.HEADER}")
        actual = hashing.hexdigest(body)
        if actual != announced:
            raise IntegrityError(f"{what}: body hashes to {actual}, server announced {announced}")
        return body


def _read_exactly(raw: Any, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left > 0:
        piece = raw.read(min(left, 1 << 20))
        if not piece:
            raise TemporaryRemoteError(f"download stream ended {left} bytes early")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _drain(raw: Any) -> None:
    """Read a download answer to its end (the chunked body's last, empty chunk), so the
    connection goes back to the pool when the response is closed.

    Reading exactly the records asked for leaves that last chunk unread; urllib3 then
    closes the socket instead of keeping it alive, and every batch paid a new TCP
    connection on both sides (344 connects for 344 downloads in a 548 MB restore).
    More than a few bytes left means the server sent records nobody asked for.
    """
    extra = raw.read(1 << 16)
    if extra:
        raise IntegrityError(f"download: {len(extra)}+ bytes after the last record")


class _DamagedFrame(Exception):
    """A downloaded frame failed its check (internal: reported, then asked again)."""

    def __init__(self, id: str, reason: str) -> None:
        super().__init__(f"{id}: {reason}")
        self.id = id
        self.reason = reason


def _verify_frame(id: str, frame: bytes) -> None:
    try:
        found = inspect_frame(frame)
    except BadFrameError as exc:
        raise IntegrityError(f"object {id}: frame does not decode: {exc}") from exc
    if found.id != id:
        raise IntegrityError(f"object {id}: plain content hashes to {found.id}")


def _message(resp: requests.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.reason or ""
    if isinstance(doc, dict) and "message" in doc:
        return str(doc["message"])
    return resp.reason or ""


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise PermanentRemoteError(f"server sent invalid JSON: {exc}") from exc


def _check_id(id: str) -> None:
    if not names.is_key(id):
        raise ValueError(f"invalid object id {id!r}: need 32 lower-case hex digits")


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"invalid sha256 {digest!r}: need 64 lower-case hex digits")


def _check_ref(name: str) -> None:
    if not names.is_ref_name(name):
        raise ValueError(f"invalid ref name {name!r}")
