"""What the status report needs beyond the capture engine: the store disk's space and the
last `dpmsfs verify` result.

The verify result is a small JSON file in the store directory (`last-verify.json`), not
LMDB: `dpmsfs verify` opens the store read-only (the daemon may hold the writer lock),
and the result belongs to the store, whichever work directory or `--store` named it.
Written atomically (temporary file, fsync, rename), so a crash leaves the old result or
the new one. Format (a contract, docs/operations.md)::

    {"finished_ns": 1764700000000000000, "ok": true, "read_data": false,
     "summary": "OK: 12 packs, ...", "damaged_objects": 0, "problems": 0}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dpmsfs.jsonfile import read_json_object, write_json

log = logging.getLogger(__name__)

VERIFY_FILE = "last-verify.json"


def store_space(store: Path) -> dict[str, int]:
    """Free and total bytes of the store's file system (free as an unprivileged user
    sees it: root's reserve is not space the store can count on). Empty if unknown."""
    try:
        st = os.statvfs(store)
    except OSError as exc:
        log.debug("statvfs %s: %s", store, exc)
        return {}
    return {"store_free_bytes": st.f_bavail * st.f_frsize,
            "store_total_bytes": st.f_blocks * st.f_frsize}  # fmt: skip


def record_verify(
    store: Path, *, ok: bool, read_data: bool, summary: str, damaged: int, problems: int,
    finished_ns: int,
) -> None:  # fmt: skip
    """Remember a verify result for status and alerts; failure to write is logged only
    (the verify itself already printed its answer)."""
    record = {"finished_ns": finished_ns, "ok": ok, "read_data": read_data,
              "summary": summary, "damaged_objects": damaged, "problems": problems}  # fmt: skip
    path = store / VERIFY_FILE
    try:
        write_json(path, record)
    except OSError as exc:
        log.warning("cannot record the verify result in %s: %s", path, exc)


def last_verify(store: Path) -> dict[str, Any] | None:
    """The last recorded verify result, None if never verified (or unreadable)."""
    return read_json_object(store / VERIFY_FILE)


def add_extras(report: dict[str, Any], store: Path) -> dict[str, Any]:
    """Add the store space and the last verify to a status report (in place, returned)."""
    report.update(store_space(store))
    report["last_verify"] = last_verify(store)
    return report


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """Dedup and compression ratios from the store's totals.

    compression = raw (unique, uncompressed) bytes / stored bytes;
    dedup = logical captured bytes (the live files' sizes) / raw bytes;
    overall = logical captured bytes / stored bytes. None while nothing is stored.
    """
    stored = report.get("store_bytes") or 0
    raw = report.get("store_raw_bytes") or 0
    logical = report.get("captured_bytes") or 0
    return {
        "compression_ratio": raw / stored if stored and raw else None,
        "dedup_ratio": logical / raw if raw and logical else None,
        "overall_ratio": logical / stored if stored and logical else None,
    }
