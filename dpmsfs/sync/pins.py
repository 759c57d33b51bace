"""Upload the tool's pins to the server, so the server's prune keeps what the tool pinned.

Refs are append-only for tools, so a pin set that can shrink (`dpmsfs unpin`) is sent as
a new immutable record each time it changes: ref `pins.<time_utc_ns>` (20 digits, so names
sort by time), body JSON `{"v": 1, "time_utc_ns": ..., "pins": {"<snapshot>": "<reason>"}}`.
The server reads only the newest `pins.*` ref of a namespace (remote/prune.py); an older
one is history that an admin prune may delete. Why not `pin.<name>` / `unpin.<name>`
pairs: a pin, unpin and pin again of one snapshot would need a third name, and the server
would have to order pairs by time; one whole-set record has no such cases.
(`pin.<name>` refs are still honoured: docs/remote-api.md.)

`PinsPusher.push` runs once per sync pass (dpmsfs/sync/service.py): it costs nothing while
the set is unchanged (compared with what it last sent or, after a restart, with the newest
record on the server, read once).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from dpmsfs.store import gc

if TYPE_CHECKING:
    from collections.abc import Callable

    from dpmsfs.store.store import Store
    from remote.backend import Backend

log = logging.getLogger(__name__)

PINS_PREFIX = "pins."
RECORD_VERSION = 1


def pins_ref_name(time_utc_ns: int) -> str:
    return f"{PINS_PREFIX}{time_utc_ns:020d}"


def encode(pins: dict[str, str], time_utc_ns: int) -> bytes:
    doc = {"v": RECORD_VERSION, "time_utc_ns": time_utc_ns, "pins": dict(sorted(pins.items()))}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_pins(body: bytes) -> dict[str, str] | None:
    """The pin set of a `pins.*` record; None if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    pins = doc.get("pins") if isinstance(doc, dict) else None
    if not isinstance(pins, dict):
        return None
    return {str(k): str(v) for k, v in pins.items()}


class PinsPusher:
    def __init__(self, store: Store, backend: Backend, now_ns: Callable[[], int]) -> None:
        self.store = store
        self.backend = backend
        self.now_ns = now_ns
        self._sent: dict[str, str] | None = None  # what the server's newest record holds

    def push(self) -> bool:
        """Send the pin set if it differs from the server's newest record; True if sent.
        Remote errors propagate (the sync pass handles them like any upload error)."""
        current = gc.pins(self.store)
        if self._sent is None:
            self._sent = self._newest_on_server()
        if current == self._sent:
            return False
        name = pins_ref_name(self.now_ns())
        self.backend.put_ref(name, encode(current, self.now_ns()))
        log.info("sync: sent %d pins as %s", len(current), name)
        self._sent = current
        return True

    def _newest_on_server(self) -> dict[str, str]:
        names = sorted(r for r in self.backend.list_refs() if r.startswith(PINS_PREFIX))
        if not names:
            return {}
        return decode_pins(self.backend.get_ref(names[-1])) or {}
