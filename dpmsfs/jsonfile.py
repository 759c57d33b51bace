"""Small JSON records kept beside the store (last verify, last drill, alert state).

Written whole and durably, so that a crash leaves either the old record or the new one,
never a torn file; read leniently, so that an unreadable record counts as none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: object) -> None:
    """Write `doc` to `path`: a temporary file beside it, fsync, rename. Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None if it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
