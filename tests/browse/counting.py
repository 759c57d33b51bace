"""The real in-memory /v2 backend (remote.memory_backend), counting what it sends: tests
prove with it that a resumed restore fetched nothing twice."""

from __future__ import annotations

import threading
from typing import Any

from remote.errors import TemporaryRemoteError
from remote.memory_backend import MemoryBackend


class CountingBackend(MemoryBackend):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.downloads: list[str] = []  # every id whose frame was sent, in order
        self.fail_after: int | None = None  # downloads allowed before "the server dies"
        self._count_lock = threading.Lock()

    def load(self, id: str) -> bytes:
        with self._count_lock:
            if self.fail_after is not None and len(self.downloads) >= self.fail_after:
                raise TemporaryRemoteError("the server stopped answering")
        frame = super().load(id)
        with self._count_lock:
            self.downloads.append(id)
        return frame

    @property
    def mapping(self) -> dict[str, str]:
        """This namespace's id -> pool digest map (tests may edit it)."""
        return self.server.namespace(self.namespace).objects

    def corrupt(self, id: str) -> None:
        """Damage the blob behind `id` on the server, as a failing disk would."""
        self.server.corrupt(self.mapping[id])
