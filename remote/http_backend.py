"""`HttpBackend`: the client of dpmsfs-server, with failover across the HA pair.

One `requests.Session` (pooled keep-alive connections) serves every URL. A call goes first to
the URL that last worked; on a connection failure, timeout or temporary status (5xx, 429,
507, 408) it tries the next URL, and the one that answers becomes the new first choice. If
every URL fails, the call raises `TemporaryRemoteError`, which the `Retrier` retries with
backoff until its deadline. Downloads are checked against the server's `X-Content-Hash`.

`missing` asks the server to re-hash objects it claims to hold (`?verify=1`) unless
`verify_missing=False`: dedup must never skip an upload on the word of a corrupt copy, and
the cost is proportional to the dedup hits of one sync, not to the size of the store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from remote import hashing, names
from remote.backend import Keys
from remote.errors import (
    IntegrityError,
    NotFoundError,
    PermanentRemoteError,
    RemoteError,
    TemporaryRemoteError,
    error_for_status,
    is_temporary_status,
)
from remote.retry import Retrier

log = logging.getLogger(__name__)

T = TypeVar("T")
# Keys per `objects:missing` request. With `verify=1` the server re-reads every key it holds,
# so batches stay small enough (~1000 chunks) to answer well within the read timeout.
MISSING_BATCH = 10_000
MISSING_BATCH_VERIFIED = 1_000


class HttpBackend:
    def __init__(
        self,
        urls: Sequence[str],
        namespace: str,
        token: str,
        timeout: float | tuple[float, float] = (5.0, 60.0),
        *,
        retrier: Retrier | None = None,
        verify_missing: bool = True,
        tls_verify: bool | str = True,
        pool_size: int = 8,
    ) -> None:
        """`urls` are server base URLs (e.g. `https://srv1:8765`); `tls_verify` may name a
        CA bundle for a private certificate authority."""
        if not urls:
            raise ValueError("need at least one server URL")
        if not names.is_namespace(namespace):
            raise ValueError(f"invalid namespace {namespace!r}")
        self.urls = [u.rstrip("/") for u in urls]
        self.namespace = namespace
        self.timeout = timeout
        self.verify_missing = verify_missing
        self._retrier = retrier or Retrier()
        self._active = 0
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "dpmsfs-remote/0.1"
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
                    method, url, timeout=self.timeout, verify=self.tls_verify, **kwargs
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
        return f"/v1/{self.namespace}/{suffix}"

    # -- objects -------------------------------------------------------------------------

    def save(self, key: str, data: bytes) -> None:
        _check_key(key)
        headers = {hashing.HEADER: hashing.header_value(hashing.hexdigest(data))}
        path = self._ns(f"objects/{key}")
        self._retry(
            f"save {key}",
            lambda: self._call(f"save {key}", "PUT", path, (200, 201), data=data, headers=headers),
        )

    def load(self, key: str) -> bytes:
        _check_key(key)
        path = self._ns(f"objects/{key}")
        return self._retry(f"load {key}", lambda: self._download(f"load {key}", path))

    def exists(self, key: str) -> bool:
        _check_key(key)
        path = self._ns(f"objects/{key}")
        try:
            self._retry(f"exists {key}", lambda: self._call("exists", "HEAD", path, (200,)))
        except NotFoundError:
            return False
        return True

    def missing(self, keys: Sequence[str]) -> Keys:
        for key in keys:
            _check_key(key)
        params = {"verify": "1"} if self.verify_missing else {}
        path = self._ns("objects:missing")
        result: Keys = []
        step = MISSING_BATCH_VERIFIED if self.verify_missing else MISSING_BATCH
        for start in range(0, len(keys), step):
            batch = list(keys[start : start + step])
            ask = functools.partial(
                self._call, "missing", "POST", path, (200,), json=batch, params=params
            )
            resp = self._retry("missing", ask)
            result.extend(_json(resp)["missing"])
        return result

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        params: dict[str, str | int] = {"after": after, "limit": limit}
        resp = self._retry(
            "list", lambda: self._call("list", "GET", self._ns("objects"), (200,), params=params)
        )
        keys: Keys = _json(resp)["keys"]
        return keys

    def delete(self, key: str) -> None:
        _check_key(key)
        path = self._ns(f"objects/{key}")
        self._retry(f"delete {key}", lambda: self._call("delete", "DELETE", path, (200,)))

    # -- refs ----------------------------------------------------------------------------

    def put_ref(self, name: str, data: bytes) -> None:
        _check_ref(name)
        headers = {hashing.HEADER: hashing.header_value(hashing.hexdigest(data))}
        path = self._ns(f"refs/{name}")
        self._retry(
            f"put_ref {name}",
            lambda: self._call("put_ref", "PUT", path, (200, 201), data=data, headers=headers),
        )

    def get_ref(self, name: str) -> bytes:
        _check_ref(name)
        path = self._ns(f"refs/{name}")
        return self._retry(f"get_ref {name}", lambda: self._download(f"get_ref {name}", path))

    def list_refs(self) -> Keys:
        resp = self._retry(
            "list_refs", lambda: self._call("list_refs", "GET", self._ns("refs"), (200,))
        )
        refs: Keys = _json(resp)["refs"]
        return refs

    def delete_ref(self, name: str) -> None:
        _check_ref(name)
        path = self._ns(f"refs/{name}")
        self._retry(f"delete_ref {name}", lambda: self._call("delete_ref", "DELETE", path, (200,)))

    # -- monitoring ----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        resp = self._retry("stats", lambda: self._call("stats", "GET", self._ns("stats"), (200,)))
        stats: dict[str, int] = _json(resp)
        return stats

    def health(self) -> bool:
        """Whether any server answers its health check (no retry, for status displays)."""
        try:
            self._call("health", "GET", "/v1/health", (200,))
        except RemoteError:
            return False
        return True

    def _download(self, what: str, path: str) -> bytes:
        resp = self._call(what, "GET", path, (200,))
        body = resp.content
        announced = hashing.parse_header(resp.headers.get(hashing.HEADER))
        if announced is None:
            raise IntegrityError(f"{what}: server sent no valid {hashing.HEADER}")
        actual = hashing.hexdigest(body)
        if actual != announced:
            raise IntegrityError(f"{what}: body hashes to {actual}, server announced {announced}")
        return body


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


def _check_key(key: str) -> None:
    if not names.is_key(key):
        raise ValueError(f"invalid key {key!r}: need 32 lower-case hex digits")


def _check_ref(name: str) -> None:
    if not names.is_ref_name(name):
        raise ValueError(f"invalid ref name {name!r}")
