"""`FaultyBackend`: wraps a backend and fails chosen calls, for tests of retry and sync.

`fail_on(method, n)` is asked before every call (`n` counts all calls from 1). It returns
False/None to let the call through, True to raise a `TemporaryRemoteError`, or an exception
instance to raise that. With `after_call=True` the wrapped call runs first and the fault is
raised afterwards: the "upload arrived but the answer was lost" case.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from remote.backend import Backend, Keys
from remote.errors import TemporaryRemoteError

T = TypeVar("T")
FailOn = Callable[[str, int], "bool | BaseException | None"]


class FaultyBackend:
    def __init__(self, wrapped: Backend, fail_on: FailOn, after_call: bool = False) -> None:
        self.wrapped = wrapped
        self.fail_on = fail_on
        self.after_call = after_call
        self.calls: builtins.list[tuple[str, int]] = []
        self.faults = 0

    def _run(self, method: str, fn: Callable[[], T]) -> T:
        n = len(self.calls) + 1
        self.calls.append((method, n))
        verdict = self.fail_on(method, n)
        if not verdict:
            return fn()
        if self.after_call:
            fn()
        self.faults += 1
        if isinstance(verdict, BaseException):
            raise verdict
        raise TemporaryRemoteError(f"injected fault in {method} (call {n})")

    def server_id(self) -> str:
        return self._run("server_id", self.wrapped.server_id)

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> Keys:
        return self._run("missing", lambda: self.wrapped.missing(objects))

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        return self._run("upload", lambda: self.wrapped.upload(records))

    def load(self, id: str) -> bytes:
        return self._run("load", lambda: self.wrapped.load(id))

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """Faults apply to the whole call (before the first item, or after the last)."""
        return iter(self._run("load_many", lambda: builtins.list(self.wrapped.load_many(ids))))

    def load_many_plain(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """Faults apply to the whole call, as `load_many`."""
        return iter(
            self._run("load_many_plain", lambda: builtins.list(self.wrapped.load_many_plain(ids)))
        )

    def damaged(self, after: int = 0) -> tuple[Keys, int]:
        return self._run("damaged", lambda: self.wrapped.damaged(after))

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        return self._run("list", lambda: self.wrapped.list(after, limit))

    def put_ref(self, name: str, data: bytes) -> None:
        self._run("put_ref", lambda: self.wrapped.put_ref(name, data))

    def get_ref(self, name: str) -> bytes:
        return self._run("get_ref", lambda: self.wrapped.get_ref(name))

    def list_refs(self) -> Keys:
        return self._run("list_refs", self.wrapped.list_refs)

    def forgotten_refs(self, names: Sequence[str]) -> Keys:
        return self._run("forgotten_refs", lambda: self.wrapped.forgotten_refs(names))

    def delete(self, id: str) -> None:
        self._run("delete", lambda: self.wrapped.delete(id))

    def delete_ref(self, name: str) -> None:
        self._run("delete_ref", lambda: self.wrapped.delete_ref(name))

    def put_report(self, report: dict[str, Any]) -> None:
        self._run("put_report", lambda: self.wrapped.put_report(report))

    def close(self) -> None:
        self.wrapped.close()
